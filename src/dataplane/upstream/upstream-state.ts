// Health of every backend, shared by the balancer (reads), the TCP/UDP proxies (passive
// failures) and the active health checker (verdicts). One record object per backend, so the
// hot path holds a reference instead of building string keys per connection.
import { EventEmitter } from 'node:events'
import type { BackendHealth, HealthSource } from '../../control/model.ts'

/** Consecutive failed connects that mark a backend unhealthy (SPEC §5 passive health). */
export const PASSIVE_FAILURE_THRESHOLD = 3

export interface HealthRecord {
  readonly serviceId: string
  readonly backendId: string
  health: BackendHealth
  /** Consecutive failed connects seen by the proxies since the last success. */
  passiveFailures: number
}

export interface HealthTransition {
  serviceId: string
  backendId: string
  from: BackendHealth
  to: BackendHealth
  reason: string
}

export interface UpstreamStateEvents {
  transition: [HealthTransition]
}

/**
 * Allowed transitions (STYLE habit 5): `unknown` until the first verdict, then healthy ⇄ unhealthy.
 * Nothing returns to `unknown` except a backend that is forgotten and added again.
 */
const allowed: Readonly<Record<BackendHealth, readonly BackendHealth[]>> = {
  unknown: ['healthy', 'unhealthy'],
  healthy: ['unhealthy'],
  unhealthy: ['healthy']
}

export class UpstreamState extends EventEmitter<UpstreamStateEvents> implements HealthSource {
  readonly #byService = new Map<string, Map<string, HealthRecord>>()

  /** The record of a backend, created as `unknown` on first use. */
  record (serviceId: string, backendId: string): HealthRecord {
    let backends = this.#byService.get(serviceId)
    if (backends === undefined) {
      backends = new Map()
      this.#byService.set(serviceId, backends)
    }
    let rec = backends.get(backendId)
    if (rec === undefined) {
      rec = { serviceId, backendId, health: 'unknown', passiveFailures: 0 }
      backends.set(backendId, rec)
    }
    return rec
  }

  backendHealth (serviceId: string, backendId: string): BackendHealth {
    return this.#byService.get(serviceId)?.get(backendId)?.health ?? 'unknown'
  }

  /** Set a verdict; emits `transition` when the state changes. */
  setHealth (rec: HealthRecord, to: BackendHealth, reason: string): void {
    const from = rec.health
    if (from === to || !allowed[from].includes(to)) return
    rec.health = to
    if (to === 'healthy') rec.passiveFailures = 0
    this.emit('transition', { serviceId: rec.serviceId, backendId: rec.backendId, from, to, reason })
  }

  /** A proxy failed to connect: after PASSIVE_FAILURE_THRESHOLD in a row the backend is unhealthy until an active check passes. */
  connectFailed (rec: HealthRecord, reason: string): void {
    rec.passiveFailures++
    if (rec.passiveFailures >= PASSIVE_FAILURE_THRESHOLD && rec.health !== 'unhealthy') {
      this.setHealth(rec, 'unhealthy', `passive: ${rec.passiveFailures} consecutive failed connects (${reason})`)
    }
  }

  connectSucceeded (rec: HealthRecord): void {
    rec.passiveFailures = 0
  }

  /**
   * Drop a backend's record (removed backend), or a whole service's. The HealthChecker owns the
   * records' lifetime, as it follows every service change; balancers only read them.
   */
  forget (serviceId: string, backendId?: string): void {
    if (backendId === undefined) this.#byService.delete(serviceId)
    else this.#byService.get(serviceId)?.delete(backendId)
  }

  /** Backend ids known for a service. */
  backendIds (serviceId: string): string[] {
    return [...(this.#byService.get(serviceId)?.keys() ?? [])]
  }
}
