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
//
// Bind failures heal (SPEC §10): an endpoint whose listener cannot be bound releases what it
// holds, is reported `failed` (statusReason `bind ...`), and keeps its entry here with a retry
// timer: 5 s, doubling up to 60 s. When every listener binds, the control plane is told and the
// endpoint is `accepted` again. An endpoint stored as failed by a bind is retried after a
// restart too; only leaving that state (a delete) ends the retries.
import type { Logger } from 'pino'
import { isBindFailure, type Backend, type ChangeEvent, type Endpoint, type EndpointService, type PortMapping, type State } from '../control/model.ts'
import type { Config } from '../control/schemas.ts'
import type { Store } from '../control/store.ts'
import type { Metrics } from '../metrics/metrics.ts'
import type { AccessLog } from './access-log.ts'
import { unlimitedBudget, type ConnectionBudget } from './connection-budget.ts'
import { EndpointRuntime, type AdmissionCounter } from './endpoint-runtime.ts'
import type { CloseReason, ListenerFactory, ProxyListener } from './listener.ts'
import { describeSocketError } from './socket-errors.ts'
import { createTcpListener } from './tcp-proxy.ts'
import { ServiceBalancer } from './upstream/balancer.ts'
import type { HealthTransition, UpstreamState } from './upstream/upstream-state.ts'

/** First retry of a failed bind, and the ceiling of its doubling (SPEC §10). */
export const BIND_RETRY_FIRST_MS = 5000
export const BIND_RETRY_MAX_MS = 60_000

export interface DataPlaneOptions {
  readonly config: Config
  readonly store: Store
  readonly metrics: Metrics
  readonly logger: Logger
  readonly upstream: UpstreamState
  readonly accessLog: AccessLog
  /** Told when an endpoint's listener cannot be bound; the control plane marks it `failed`. */
  readonly onEndpointFailed: (endpointId: string, reason: string) => void
  /** Told when every listener of an endpoint that failed to bind is bound; the control plane makes it `accepted`. */
  readonly onEndpointRecovered?: (endpointId: string) => void
  /** The process-wide connection budget (`limits.maxConnections`); default: unlimited. */
  readonly budget?: ConnectionBudget
  /** Bind retry delays, for tests; default BIND_RETRY_FIRST_MS and BIND_RETRY_MAX_MS. */
  readonly bindRetryMs?: { readonly first: number, readonly max: number }
  /** With data-plane workers: the endpoint's count shared by every worker (SPEC §11); default: this process's own. */
  readonly endpointCounter?: (endpoint: Endpoint) => AdmissionCounter | undefined
  /** UDP mappings are skipped without it. */
  readonly udpFactory?: ListenerFactory
  /** Defaults to the TCP proxy; replaceable for embedding. */
  readonly tcpFactory?: ListenerFactory
  /** Cluster mode (SPEC §12): listen only on the endpoint IPs this node owns; default every IP. Call `servedChanged` when its answer changes. */
  readonly serves?: (ip: string) => boolean
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
  /** A bind failed: hold nothing until `retry` fires and binds everything again. */
  failed: boolean
  retry: NodeJS.Timeout | null
  retryDelayMs: number
  /** Binds in flight. */
  binding: number
}

interface BalancerEntry {
  readonly balancer: ServiceBalancer
  service: EndpointService
  /** Last value published to linkgate_service_fail_open (null: none yet). */
  failOpen: boolean | null
}

export class DataPlane {
  readonly #opts: DataPlaneOptions
  readonly #logger: Logger
  readonly #tcpFactory: ListenerFactory
  readonly #balancers = new Map<string, BalancerEntry>()
  readonly #entries = new Map<string, EndpointEntry>()
  readonly #budget: ConnectionBudget
  readonly #retryFirstMs: number
  readonly #retryMaxMs: number
  readonly #serves: (ip: string) => boolean
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
    this.#budget = opts.budget ?? unlimitedBudget()
    this.#retryFirstMs = opts.bindRetryMs?.first ?? BIND_RETRY_FIRST_MS
    this.#retryMaxMs = opts.bindRetryMs?.max ?? BIND_RETRY_MAX_MS
    this.#serves = opts.serves ?? (() => true)
  }

  /** Initial reconcile; resolves once every wanted listener is bound or its endpoint reported failed. */
  start (): Promise<void> {
    if (this.#started || this.#closed) return Promise.resolve()
    this.#started = true
    this.#unsubscribe = this.#opts.store.subscribe(this.#onChange)
    this.#opts.upstream.on('transition', this.#onHealthTransition)
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
    this.#scheduleReconcile()
  }

  #scheduleReconcile (): void {
    if (this.#scheduled !== null) return
    this.#scheduled = setImmediate(() => {
      this.#scheduled = null
      if (!this.#closed) void this.#reconcile()
    })
  }

  /** The answer of `serves` changed for the IPs given (cluster ownership moved): reconcile their endpoints. */
  servedChanged (ips: Iterable<string>): void {
    if (this.#closed) return
    for (const ip of ips) {
      for (const id of this.#opts.store.page('endpointIp', ip, undefined, 1000)) this.#dirtyEndpoints.add(id)
    }
    this.#scheduleReconcile()
  }

  #stop (): void {
    this.#closed = true
    this.#unsubscribe?.()
    this.#opts.upstream.off('transition', this.#onHealthTransition)
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

  /** A backend's health changed: its service may have started or stopped failing open. */
  readonly #onHealthTransition = (t: HealthTransition): void => {
    const entry = this.#balancers.get(t.serviceId)
    if (entry !== undefined) this.#publishFailOpen(entry)
  }

  #publishFailOpen (entry: BalancerEntry): void {
    const failOpen = entry.balancer.failOpen
    const before = entry.failOpen
    if (failOpen === before) return
    entry.failOpen = failOpen
    this.#opts.metrics.serviceFailOpen.labels({ service_id: entry.service.id }).set(failOpen ? 1 : 0)
    if (before === null && !failOpen) return
    if (failOpen) {
      this.#logger.warn({ serviceId: entry.service.id }, 'every backend with weight > 0 is unhealthy: failing open (new connections go to all of them)')
    } else {
      this.#logger.info({ serviceId: entry.service.id }, 'service no longer failing open')
    }
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
      this.#opts.metrics.serviceFailOpen.remove({ service_id: id })
    } else if (entry === undefined) {
      const created = { balancer: new ServiceBalancer(service, this.#opts.upstream), service, failOpen: null }
      this.#balancers.set(service.id, created)
      this.#publishFailOpen(created)
    } else if (entry.service !== service) {
      // New weights or backends: new connections follow them; live ones keep their backend.
      entry.balancer.update(service)
      this.#dropSeries(entry.service, service.backends)
      entry.service = service
      this.#publishFailOpen(entry)
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
      if (endpoint === undefined || !wantsListeners(endpoint) || !this.#serves(endpoint.ip) || state.services[endpoint.serviceId] === undefined ||
        endpoint.serviceId !== entry.endpoint.serviceId) { // the runtime is tied to one service's balancer
        this.#removeEntry(entry, 'removed')
      }
    }
    const binds: Array<Promise<void>> = []
    for (const id of ids) {
      const endpoint = state.endpoints[id]
      if (endpoint === undefined || !wantsListeners(endpoint) || !this.#serves(endpoint.ip)) continue
      const service = state.services[endpoint.serviceId]
      const balancer = this.#balancers.get(endpoint.serviceId)
      if (service === undefined || balancer === undefined) continue
      let entry = this.#entries.get(endpoint.id)
      if (entry === undefined) {
        entry = {
          runtime: new EndpointRuntime(endpoint, service, balancer.balancer, this.#opts.metrics, this.#budget,
            this.#opts.endpointCounter?.(endpoint)),
          endpoint,
          service,
          listeners: new Map(),
          failed: false,
          retry: null,
          retryDelayMs: this.#retryFirstMs,
          binding: 0
        }
        this.#entries.set(endpoint.id, entry)
      } else if (entry.endpoint !== endpoint || entry.service !== service) {
        entry.runtime.update(endpoint, service)
        entry.endpoint = endpoint
        entry.service = service
        // Bound again (a retry) before the control plane had recorded the failure: say so now.
        if (!entry.failed && entry.binding === 0 && endpoint.status === 'failed') this.#recovered(entry)
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
    entry.binding++
    const results = await Promise.allSettled(fresh.map((b) => b.listener.listen()))
    entry.binding--
    // Superseded while binding (endpoint removed, or another bind already failed it): the
    // reconcile that superseded it has destroyed these listeners.
    if (this.#entries.get(entry.endpoint.id) !== entry || entry.failed) return
    const index = results.findIndex((r) => r.status === 'rejected')
    if (index < 0) {
      this.#logger.info({ endpointId: entry.endpoint.id, ip: entry.endpoint.ip, ports: fresh.map((b) => `${b.mapping.protocol}/${b.mapping.terminalPort}`) },
        'endpoint listening')
      entry.retryDelayMs = this.#retryFirstMs
      if (entry.binding === 0 && entry.endpoint.status === 'failed') this.#recovered(entry)
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
    const delayMs = entry.retryDelayMs
    entry.retryDelayMs = Math.min(this.#retryMaxMs, delayMs * 2)
    this.#scheduleRetry(entry, delayMs)
    if (entry.endpoint.status === 'failed') { // already recorded: a retry that failed again
      this.#logger.info({ endpointId: entry.endpoint.id, retryInMs: delayMs }, `endpoint still cannot bind: ${reason}`)
      return
    }
    this.#logger.error({ endpointId: entry.endpoint.id, err, retryInMs: delayMs }, `endpoint failed: ${reason}`)
    try {
      this.#opts.onEndpointFailed(entry.endpoint.id, reason)
    } catch (cbErr) {
      this.#logger.error({ err: cbErr, endpointId: entry.endpoint.id }, 'onEndpointFailed threw')
    }
  }

  #scheduleRetry (entry: EndpointEntry, delayMs: number): void {
    if (entry.retry !== null) clearTimeout(entry.retry)
    entry.retry = setTimeout(() => {
      entry.retry = null
      if (this.#closed || this.#entries.get(entry.endpoint.id) !== entry || !entry.failed) return
      entry.failed = false
      const bind = this.#syncListeners(entry)
      if (bind === null) { // nothing to bind any more (no mapping this process serves)
        if (entry.endpoint.status === 'failed') this.#recovered(entry)
      }
    }, delayMs)
    entry.retry.unref()
  }

  /** Every listener of an endpoint recorded as failed is bound: the control plane makes it accepted. */
  #recovered (entry: EndpointEntry): void {
    this.#logger.info({ endpointId: entry.endpoint.id }, 'endpoint bound after a bind failure: accepted again')
    try {
      this.#opts.onEndpointRecovered?.(entry.endpoint.id)
    } catch (err) {
      this.#logger.error({ err, endpointId: entry.endpoint.id }, 'onEndpointRecovered threw')
    }
  }

  #removeEntry (entry: EndpointEntry, reason: CloseReason): void {
    if (this.#entries.get(entry.endpoint.id) !== entry) return
    this.#entries.delete(entry.endpoint.id)
    if (entry.retry !== null) clearTimeout(entry.retry)
    entry.retry = null
    for (const bound of entry.listeners.values()) bound.listener.destroy(reason)
    entry.listeners.clear()
    entry.runtime.dispose()
    if (reason === 'removed') this.#logger.info({ endpointId: entry.endpoint.id }, 'endpoint stopped listening')
  }
}

/** Accepted endpoints listen; one failed by a bind keeps trying to (SPEC §10). */
function wantsListeners (endpoint: Endpoint): boolean {
  return endpoint.status === 'accepted' || (endpoint.status === 'failed' && isBindFailure(endpoint))
}

function listenerKey (ip: string, m: PortMapping): string {
  return `${m.protocol} ${ip} ${m.terminalPort} ${m.servicePort}`
}
