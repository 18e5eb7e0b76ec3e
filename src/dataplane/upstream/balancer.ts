// Smooth weighted round robin (nginx's ngx_http_upstream_get_peer, 2012): on every pick each
// eligible peer's currentWeight grows by its weight; the largest wins and gives back the total.
// For weights 5,1,1 it yields a,a,b,a,c,a,a — no bursts to the heavy peer.
//
// Candidates (SPEC §5): backends that are not unhealthy and have weight > 0. With
// sameZonePreferred and at least one candidate in the caller's zone, only that zone's are used.
// Each zone scope keeps its own currentWeights, so an endpoint's sequence stays smooth.
//
// Fail open (SPEC §10, AWS NLB's behaviour): when every backend with weight > 0 is unhealthy,
// in every zone, health is ignored and the pick goes on as if all were healthy (zone preference
// included): a health checker that is wrong about everyone must not take the service down.
import type { Backend, EndpointService } from '../../control/model.ts'
import type { HealthRecord, UpstreamState } from './upstream-state.ts'

export interface Peer {
  readonly backend: Backend
  readonly health: HealthRecord
}

interface Scope {
  /** currentWeight per peer, index-aligned with `#peers`. */
  current: number[]
}

export class ServiceBalancer {
  readonly serviceId: string
  #peers: Peer[] = []
  #sameZonePreferred = true
  readonly #scopes = new Map<string, Scope>()
  readonly #upstream: UpstreamState

  constructor (service: EndpointService, upstream: UpstreamState) {
    this.serviceId = service.id
    this.#upstream = upstream
    this.update(service)
  }

  get peers (): readonly Peer[] {
    return this.#peers
  }

  /** Take a new backend set or weights; keeps the smoothing state of backends that stay. */
  update (service: EndpointService): void {
    const oldIndex = new Map(this.#peers.map((p, i) => [p.backend.id, i]))
    const peers = service.backends.map((backend) => ({ backend, health: this.#upstream.record(service.id, backend.id) }))
    for (const scope of this.#scopes.values()) {
      scope.current = peers.map((p) => {
        const i = oldIndex.get(p.backend.id)
        return i === undefined ? 0 : scope.current[i] ?? 0
      })
    }
    this.#peers = peers
    this.#sameZonePreferred = service.sameZonePreferred
  }

  /** Every backend with weight > 0 is unhealthy (and there is at least one): picks ignore health. */
  get failOpen (): boolean {
    let weighted = false
    for (const p of this.#peers) {
      if (p.backend.weight <= 0) continue
      if (p.health.health !== 'unhealthy') return false
      weighted = true
    }
    return weighted
  }

  /**
   * Choose a backend for a new connection from an endpoint in `zone`.
   * `exclude` holds peers already tried for this connection (failover attempts).
   */
  pick (zone: string, exclude?: ReadonlySet<Peer>): Peer | undefined {
    const peers = this.#peers
    const anyHealth = this.failOpen
    let zoneOnly = false
    if (this.#sameZonePreferred) {
      for (const p of peers) {
        if (p.backend.zone === zone && eligible(p, exclude, anyHealth)) { zoneOnly = true; break }
      }
    }
    const scope = this.#scope(zoneOnly ? zone : '')
    const current = scope.current
    let total = 0
    let best = -1
    for (let i = 0; i < peers.length; i++) {
      const p = peers[i] as Peer
      if (!eligible(p, exclude, anyHealth) || (zoneOnly && p.backend.zone !== zone)) continue
      const w = p.backend.weight
      current[i] = (current[i] ?? 0) + w
      total += w
      if (best < 0 || (current[i] as number) > (current[best] as number)) best = i
    }
    if (best < 0) return undefined
    current[best] = (current[best] as number) - total
    return peers[best]
  }

  #scope (key: string): Scope {
    let scope = this.#scopes.get(key)
    if (scope === undefined) {
      scope = { current: this.#peers.map(() => 0) }
      this.#scopes.set(key, scope)
    }
    return scope
  }
}

function eligible (p: Peer, exclude: ReadonlySet<Peer> | undefined, anyHealth: boolean): boolean {
  return p.backend.weight > 0 && (anyHealth || p.health.health !== 'unhealthy') && (exclude === undefined || !exclude.has(p))
}
