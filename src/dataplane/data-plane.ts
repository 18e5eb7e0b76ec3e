// The listener reconciler (SPEC §3 "Only an accepted endpoint listens", §4 "Every change takes
// effect in the running data plane within one second ... without touching connections it does
// not concern").
//
// Wanted: one ProxyListener per (accepted endpoint, port mapping), bound on
// endpoint.ip:terminalPort. Bound: what this class holds. The store's change events name the
// services and endpoints that changed; they are collected and reconciled on the next turn of
// the event loop (bursts coalesce into one pass), and a pass diffs wanted against bound for
// those resources only, from `store.state`, so a change costs the same with ten endpoints or
// ten thousand. Endpoint and service records are frozen and replaced on change, so "changed"
// is a reference comparison.
import type { Logger } from 'pino'
import type { Backend, ChangeEvent, Endpoint, EndpointService, PortMapping, State } from '../control/model.ts'
import type { Config } from '../control/schemas.ts'
import type { Store } from '../control/store.ts'
import type { Metrics } from '../metrics/metrics.ts'
import type { AccessLog } from './access-log.ts'
import { EndpointRuntime } from './endpoint-runtime.ts'
import type { CloseReason, ListenerFactory, ProxyListener } from './listener.ts'
import { createTcpListener, describeSocketError } from './tcp-proxy.ts'
import { ServiceBalancer } from './upstream/balancer.ts'
import type { UpstreamState } from './upstream/upstream-state.ts'

export interface DataPlaneOptions {
  readonly config: Config
  readonly store: Store
  readonly metrics: Metrics
  readonly logger: Logger
  readonly upstream: UpstreamState
  readonly accessLog: AccessLog
  /** Told when an endpoint's listener cannot be bound; the control plane marks it `failed`. */
  readonly onEndpointFailed: (endpointId: string, reason: string) => void
  /** UDP mappings are skipped without it. */
  readonly udpFactory?: ListenerFactory
  /** Defaults to the TCP proxy; replaceable for embedding. */
  readonly tcpFactory?: ListenerFactory
}

interface BoundListener {
  readonly mapping: PortMapping
  readonly listener: ProxyListener
}

interface EndpointEntry {
  readonly runtime: EndpointRuntime
  endpoint: Endpoint
  service: EndpointService
  /** Keyed by `listenerKey`. */
  readonly listeners: Map<string, BoundListener>
  /** A bind failed: hold nothing and do not retry until the endpoint leaves `accepted`. */
  failed: boolean
}

interface BalancerEntry {
  readonly balancer: ServiceBalancer
  service: EndpointService
}

export class DataPlane {
  readonly #opts: DataPlaneOptions
  readonly #logger: Logger
  readonly #tcpFactory: ListenerFactory
  readonly #balancers = new Map<string, BalancerEntry>()
  readonly #entries = new Map<string, EndpointEntry>()
  #scheduled: NodeJS.Immediate | null = null
  /** Changed since the last pass. */
  readonly #dirtyServices = new Set<string>()
  readonly #dirtyEndpoints = new Set<string>()
  #unsubscribe: (() => void) | undefined
  #started = false
  #closed = false
  #closing: Promise<void> | null = null

  constructor (opts: DataPlaneOptions) {
    this.#opts = opts
    this.#logger = opts.logger
    this.#tcpFactory = opts.tcpFactory ?? createTcpListener
  }

  /** Initial reconcile; resolves once every wanted listener is bound or its endpoint reported failed. */
  start (): Promise<void> {
    if (this.#started || this.#closed) return Promise.resolve()
    this.#started = true
    this.#unsubscribe = this.#opts.store.subscribe(this.#onChange)
    const { services, endpoints } = this.#opts.store.state
    for (const id in services) this.#dirtyServices.add(id)
    for (const id in endpoints) this.#dirtyEndpoints.add(id)
    return this.#reconcile()
  }

  /** Stop accepting everywhere, let live connections finish for up to `graceMs`, then end them. */
  close (graceMs: number): Promise<void> {
    if (this.#closing !== null) return this.#closing
    this.#stop()
    const listeners = this.#allListeners()
    this.#closing = (async () => {
      let timer: NodeJS.Timeout | undefined
      const deadline = new Promise<void>((resolve) => { timer = setTimeout(resolve, Math.max(0, graceMs)) })
      await Promise.race([Promise.all(listeners.map((l) => l.close().catch(() => {}))), deadline])
      clearTimeout(timer)
      this.#teardown('shutdown')
    })()
    return this.#closing
  }

  /** End every listener and connection now. */
  destroy (): void {
    this.#stop()
    this.#teardown('shutdown')
    if (this.#closing === null) this.#closing = Promise.resolve()
  }

  /** Endpoint ids that currently have all their listeners bound (for diagnostics and tests). */
  listeningEndpoints (): string[] {
    return [...this.#entries.values()].filter((e) => !e.failed).map((e) => e.endpoint.id)
  }

  readonly #onChange = (events: readonly ChangeEvent[]): void => {
    if (this.#closed) return
    for (const e of events) (e.kind === 'service' ? this.#dirtyServices : this.#dirtyEndpoints).add(e.id)
    if (this.#scheduled !== null) return
    this.#scheduled = setImmediate(() => {
      this.#scheduled = null
      if (!this.#closed) void this.#reconcile()
    })
  }

  #stop (): void {
    this.#closed = true
    this.#unsubscribe?.()
    if (this.#scheduled !== null) clearImmediate(this.#scheduled)
    this.#scheduled = null
  }

  #allListeners (): ProxyListener[] {
    const out: ProxyListener[] = []
    for (const entry of this.#entries.values()) for (const b of entry.listeners.values()) out.push(b.listener)
    return out
  }

  #teardown (reason: CloseReason): void {
    for (const entry of this.#entries.values()) this.#removeEntry(entry, reason)
    this.#balancers.clear()
  }

  /** One pass over what changed: services first (balancers), then endpoints. Synchronous except for the binds it returns. */
  #reconcile (): Promise<void> {
    const { store } = this.#opts
    const state = store.state
    const services = [...this.#dirtyServices]
    const endpoints = this.#dirtyEndpoints
    this.#dirtyServices.clear()
    try {
      for (const id of services) {
        this.#reconcileService(state, id)
        // Its endpoints follow the service's new record (or go with it).
        for (const eid of store.page('endpointService', id, undefined, Number.MAX_SAFE_INTEGER)) endpoints.add(eid)
      }
      const ids = [...endpoints]
      endpoints.clear()
      return this.#reconcileEndpoints(state, ids)
    } catch (err) {
      // A bug here must not take the process down; the next change of these resources retries.
      this.#logger.error({ err }, 'data plane reconcile failed')
      return Promise.resolve()
    }
  }

  #reconcileService (state: State, id: string): void {
    const service = state.services[id]
    const entry = this.#balancers.get(id)
    if (service === undefined) {
      if (entry === undefined) return
      this.#balancers.delete(id)
      this.#dropSeries(entry.service, [])
    } else if (entry === undefined) {
      this.#balancers.set(service.id, { balancer: new ServiceBalancer(service, this.#opts.upstream), service })
    } else if (entry.service !== service) {
      // New weights or backends: new connections follow them; live ones keep their backend.
      entry.balancer.update(service)
      this.#dropSeries(entry.service, service.backends)
      entry.service = service
    }
  }

  /**
   * Remove the per-backend series of backends that left `before` (kept: those still in `after`,
   * matched by id and zone), and the service's connect histogram when the service is gone, so
   * backend churn does not grow /metrics without bound.
   */
  #dropSeries (before: EndpointService, after: readonly Backend[]): void {
    const { metrics } = this.#opts
    for (const b of before.backends) {
      if (after.some((a) => a.id === b.id && a.zone === b.zone)) continue
      metrics.backendConnectionsTotal.remove({ service_id: before.id, backend_id: b.id, zone: b.zone })
    }
    if (after.length === 0 && this.#balancers.get(before.id) === undefined) {
      metrics.backendConnectDuration.remove({ service_id: before.id })
    }
  }

  #reconcileEndpoints (state: State, ids: readonly string[]): Promise<void> {
    // Removals first, so an address another endpoint gives up in the same pass is free to bind.
    for (const id of ids) {
      const entry = this.#entries.get(id)
      if (entry === undefined) continue
      const endpoint = state.endpoints[id]
      if (endpoint === undefined || endpoint.status !== 'accepted' || state.services[endpoint.serviceId] === undefined ||
        endpoint.serviceId !== entry.endpoint.serviceId) { // the runtime is tied to one service's balancer
        this.#removeEntry(entry, 'removed')
      }
    }
    const binds: Array<Promise<void>> = []
    for (const id of ids) {
      const endpoint = state.endpoints[id]
      if (endpoint === undefined || endpoint.status !== 'accepted') continue
      const service = state.services[endpoint.serviceId]
      const balancer = this.#balancers.get(endpoint.serviceId)
      if (service === undefined || balancer === undefined) continue
      let entry = this.#entries.get(endpoint.id)
      if (entry === undefined) {
        entry = {
          runtime: new EndpointRuntime(endpoint, service, balancer.balancer, this.#opts.metrics),
          endpoint,
          service,
          listeners: new Map(),
          failed: false
        }
        this.#entries.set(endpoint.id, entry)
      } else if (entry.endpoint !== endpoint || entry.service !== service) {
        entry.runtime.update(endpoint, service)
        entry.endpoint = endpoint
        entry.service = service
      } else {
        continue
      }
      const bind = this.#syncListeners(entry)
      if (bind !== null) binds.push(bind)
    }
    return Promise.all(binds).then(() => {})
  }

  /** Make the entry's listeners match its mappings; returns the pending binds, if any. */
  #syncListeners (entry: EndpointEntry): Promise<void> | null {
    if (entry.failed) return null
    const wanted = new Map<string, PortMapping>()
    for (const mapping of entry.service.portMappings) {
      if (mapping.protocol === 'UDP' && this.#opts.udpFactory === undefined) continue
      wanted.set(listenerKey(entry.endpoint.ip, mapping), mapping)
    }
    for (const [key, bound] of entry.listeners) {
      if (!wanted.has(key)) {
        entry.listeners.delete(key)
        bound.listener.destroy('removed')
      }
    }
    const fresh: BoundListener[] = []
    for (const [key, mapping] of wanted) {
      if (entry.listeners.has(key)) continue
      const factory = mapping.protocol === 'TCP' ? this.#tcpFactory : this.#opts.udpFactory as ListenerFactory
      const { config, metrics, upstream, accessLog } = this.#opts
      const listener = factory({
        runtime: entry.runtime,
        mapping,
        limits: config.limits,
        metrics,
        logger: this.#logger.child({ endpointId: entry.endpoint.id, protocol: mapping.protocol, port: mapping.terminalPort }),
        upstream,
        accessLog
      })
      const bound = { mapping, listener }
      entry.listeners.set(key, bound)
      fresh.push(bound)
    }
    if (fresh.length === 0) return null
    return this.#bind(entry, fresh)
  }

  async #bind (entry: EndpointEntry, fresh: BoundListener[]): Promise<void> {
    const results = await Promise.allSettled(fresh.map((b) => b.listener.listen()))
    // Superseded while binding (endpoint removed, or another bind already failed it): the
    // reconcile that superseded it has destroyed these listeners.
    if (this.#entries.get(entry.endpoint.id) !== entry || entry.failed) return
    const index = results.findIndex((r) => r.status === 'rejected')
    if (index < 0) {
      this.#logger.info({ endpointId: entry.endpoint.id, ip: entry.endpoint.ip, ports: fresh.map((b) => `${b.mapping.protocol}/${b.mapping.terminalPort}`) },
        'endpoint listening')
      return
    }
    const failed = fresh[index] as BoundListener
    const err = (results[index] as PromiseRejectedResult).reason
    // One listener that cannot bind makes the whole endpoint fail (SPEC §3): release the rest.
    entry.failed = true
    for (const bound of entry.listeners.values()) bound.listener.destroy('removed')
    entry.listeners.clear()
    const ip = entry.endpoint.ip
    const host = ip.includes(':') ? `[${ip}]` : ip
    const reason = `bind ${host}:${failed.mapping.terminalPort}: ${describeSocketError(err)} (${failed.mapping.protocol})`
    this.#logger.error({ endpointId: entry.endpoint.id, err }, `endpoint failed: ${reason}`)
    try {
      this.#opts.onEndpointFailed(entry.endpoint.id, reason)
    } catch (cbErr) {
      this.#logger.error({ err: cbErr, endpointId: entry.endpoint.id }, 'onEndpointFailed threw')
    }
  }

  #removeEntry (entry: EndpointEntry, reason: CloseReason): void {
    if (this.#entries.get(entry.endpoint.id) !== entry) return
    this.#entries.delete(entry.endpoint.id)
    for (const bound of entry.listeners.values()) bound.listener.destroy(reason)
    entry.listeners.clear()
    entry.runtime.dispose()
    if (reason === 'removed') this.#logger.info({ endpointId: entry.endpoint.id }, 'endpoint stopped listening')
  }
}

function listenerKey (ip: string, m: PortMapping): string {
  return `${m.protocol} ${ip} ${m.terminalPort} ${m.servicePort}`
}
