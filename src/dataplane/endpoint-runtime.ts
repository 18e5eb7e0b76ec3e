// Everything the proxies of one accepted endpoint share: its current endpoint and service
// records, the service's balancer, the live-connection count that `maxConnectionsPerEndpoint`
// bounds (TCP connections and UDP flows together) and its share of the process-wide budget
// (`limits.maxConnections`), the parsed `allowedSources`, and the cached metric children and
// plain-number byte counters (STYLE habits 9 and 10).
//
// Every labelled series this endpoint creates goes through here and is remembered, so that
// dispose() removes exactly those label sets (prom-client has no public listing of children).
import { isIPv4 } from 'node:net'
import ipaddr from 'ipaddr.js'
import type { Endpoint, EndpointService, Protocol } from '../control/model.ts'
import type { Metrics, RefusalReason } from '../metrics/metrics.ts'
import { unlimitedBudget, type ConnectionBudget } from './connection-budget.ts'
import type { ServiceBalancer } from './upstream/balancer.ts'

/** A labelled child of a metric, as `.labels()` returns it; cached so the hot path never hashes labels. */
type Child<M extends { labels: (...args: never[]) => unknown }> = ReturnType<M['labels']>
type Range = [ipaddr.IPv4 | ipaddr.IPv6, number]

/** Byte and connection counters of one protocol, as plain numbers, published at scrape time. */
export class ProtocolStats {
  bytesToBackend = 0
  bytesToClient = 0
  #publishedToBackend = 0
  #publishedToClient = 0
  active = 0
  readonly #toBackend: Child<Metrics['bytesTotal']>
  readonly #toClient: Child<Metrics['bytesTotal']>
  readonly #active: Child<Metrics['activeConnections']>

  constructor (metrics: Metrics, endpointId: string, serviceId: string, protocol: Protocol) {
    this.labels = { endpoint_id: endpointId, service_id: serviceId, protocol }
    this.#toBackend = metrics.bytesTotal.labels({ ...this.labels, direction: 'client_to_backend' })
    this.#toClient = metrics.bytesTotal.labels({ ...this.labels, direction: 'backend_to_client' })
    this.#active = metrics.activeConnections.labels(this.labels)
    this.#active.set(0)
  }

  /** The label set of this protocol's bytes (plus direction) and active series. */
  readonly labels: { endpoint_id: string, service_id: string, protocol: Protocol }

  publish (): void {
    if (this.bytesToBackend !== this.#publishedToBackend) {
      this.#toBackend.inc(this.bytesToBackend - this.#publishedToBackend)
      this.#publishedToBackend = this.bytesToBackend
    }
    if (this.bytesToClient !== this.#publishedToClient) {
      this.#toClient.inc(this.bytesToClient - this.#publishedToClient)
      this.#publishedToClient = this.bytesToClient
    }
    this.#active.set(this.active)
  }
}

/** A per-endpoint count shared with other data-plane workers (SPEC §11); see workers/shared-counters.ts. */
export interface AdmissionCounter {
  tryAcquire (limit: number): boolean
  release (): void
}

export class EndpointRuntime {
  endpoint: Endpoint
  service: EndpointService
  readonly balancer: ServiceBalancer
  /** Live TCP connections + UDP flows of this endpoint. */
  active = 0
  /** The process-wide budget every endpoint shares (SPEC §10 `limits.maxConnections`). */
  readonly budget: ConnectionBudget
  readonly tcp: ProtocolStats
  readonly udp: ProtocolStats
  readonly #metrics: Metrics
  readonly #refused = new Map<RefusalReason, Child<Metrics['connectionsRefusedTotal']>>()
  /** linkgate_connections_total children by `${protocol} ${terminalPort}`, with their labels. */
  readonly #connections = new Map<string, { labels: Record<string, string>, child: Child<Metrics['connectionsTotal']> }>()
  #sources: Range[] = []
  #allowAll4 = false
  #allowAll6 = false
  readonly #unhook: () => void
  /** With workers: `maxConnectionsPerEndpoint` counted over all of them; `active` stays this worker's. */
  readonly #shared: AdmissionCounter | undefined

  constructor (endpoint: Endpoint, service: EndpointService, balancer: ServiceBalancer, metrics: Metrics,
    budget: ConnectionBudget = unlimitedBudget(), shared?: AdmissionCounter) {
    this.#shared = shared
    this.endpoint = endpoint
    this.service = service
    this.balancer = balancer
    this.budget = budget
    this.#metrics = metrics
    this.tcp = new ProtocolStats(metrics, endpoint.id, service.id, 'TCP')
    this.udp = new ProtocolStats(metrics, endpoint.id, service.id, 'UDP')
    this.#parseSources()
    this.#unhook = metrics.beforeScrape(() => {
      this.tcp.publish()
      this.udp.publish()
    })
  }

  get id (): string {
    return this.endpoint.id
  }

  get zone (): string {
    return this.endpoint.zone
  }

  update (endpoint: Endpoint, service: EndpointService): void {
    const sourcesChanged = endpoint.allowedSources !== this.endpoint.allowedSources
    this.endpoint = endpoint
    this.service = service
    if (sourcesChanged) this.#parseSources()
  }

  stats (protocol: Protocol): ProtocolStats {
    return protocol === 'TCP' ? this.tcp : this.udp
  }

  /** allowedSources holds both 0.0.0.0/0 and ::/0: no address needs checking. */
  get allowsEverySource (): boolean {
    return this.#allowAll4 && this.#allowAll6
  }

  /** Is a client at `address` (as node reports it, IPv4-mapped IPv6 included) inside `allowedSources`? */
  sourceAllowed (address: string): boolean {
    if (isIPv4(address)) {
      if (this.#allowAll4) return true
    } else if (this.#allowAll6 && !address.startsWith('::ffff:')) {
      return true
    }
    let addr: ipaddr.IPv4 | ipaddr.IPv6
    try {
      addr = ipaddr.process(address)
    } catch {
      return false
    }
    if (addr.kind() === 'ipv4' && this.#allowAll4) return true
    for (const range of this.#sources) {
      if (range[0].kind() === addr.kind() && addr.match(range)) return true
    }
    return false
  }

  /**
   * Take a slot of this endpoint (`limit` = maxConnectionsPerEndpoint) and one of the
   * process-wide budget; null when admitted, else the refusal reason (nothing is held then).
   */
  admit (limit: number): 'limit' | 'overload' | null {
    const shared = this.#shared
    if (shared === undefined) {
      if (this.active >= limit) return 'limit'
    } else if (!shared.tryAcquire(limit)) {
      return 'limit'
    }
    if (!this.budget.tryAcquire()) {
      shared?.release()
      return 'overload'
    }
    this.active++
    return null
  }

  /** Give back what admit() took. */
  release (): void {
    this.active--
    this.#shared?.release()
    this.budget.release()
  }

  /** The linkgate_connections_total child of one listener, remembered for dispose(). */
  connectionsCounter (protocol: Protocol, terminalPort: number): Child<Metrics['connectionsTotal']> {
    const key = `${protocol} ${terminalPort}`
    let entry = this.#connections.get(key)
    if (entry === undefined) {
      const labels = { endpoint_id: this.endpoint.id, service_id: this.service.id, protocol, terminal_port: String(terminalPort) }
      entry = { labels, child: this.#metrics.connectionsTotal.labels(labels) }
      this.#connections.set(key, entry)
    }
    return entry.child
  }

  refused (reason: RefusalReason): void {
    let child = this.#refused.get(reason)
    if (child === undefined) {
      child = this.#metrics.connectionsRefusedTotal.labels({ endpoint_id: this.endpoint.id, reason })
      this.#refused.set(reason, child)
    }
    child.inc()
  }

  /**
   * Stop publishing and drop this endpoint's series (a deleted endpoint leaves no stale series).
   * The label sets are known (this runtime's protocols, refusal reasons and port mappings), so
   * this costs the same with one endpoint or ten thousand: no scan of every series.
   */
  dispose (): void {
    this.tcp.publish()
    this.udp.publish()
    this.#unhook()
    const m = this.#metrics
    for (const stats of [this.tcp, this.udp]) {
      m.bytesTotal.remove({ ...stats.labels, direction: 'client_to_backend' })
      m.bytesTotal.remove({ ...stats.labels, direction: 'backend_to_client' })
      m.activeConnections.remove(stats.labels)
    }
    for (const { labels } of this.#connections.values()) m.connectionsTotal.remove(labels)
    this.#connections.clear()
    for (const reason of this.#refused.keys()) m.connectionsRefusedTotal.remove({ endpoint_id: this.endpoint.id, reason })
    this.#refused.clear()
  }

  #parseSources (): void {
    this.#sources = []
    this.#allowAll4 = false
    this.#allowAll6 = false
    for (const cidr of this.endpoint.allowedSources) {
      const range = ipaddr.parseCIDR(cidr)
      if (range[1] === 0) {
        if (range[0].kind() === 'ipv4') this.#allowAll4 = true
        else this.#allowAll6 = true
      }
      this.#sources.push(range)
    }
  }
}
