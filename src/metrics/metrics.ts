// Metric definitions (SPEC §7). The Registry is passed in (STYLE habit 9), never the global one,
// so two apps in one test never collide.
//
// Hot-path counting: the data plane keeps plain numbers (bytes per chunk, datagrams) on objects
// it already holds, and publishes them through `beforeScrape` hooks, which run once per scrape.
import { AggregatorRegistry, Counter, Gauge, Histogram, collectDefaultMetrics, type MetricObjectWithValues, type MetricValue, type Registry } from 'prom-client'

/** One registry's metrics as `getMetricsAsJSON()` gives them (a data-plane worker's, SPEC §11). */
export type MetricsJson = Array<MetricObjectWithValues<MetricValue<string>>>

export interface Metrics {
  readonly registry: Registry
  readonly connectionsTotal: Counter<'endpoint_id' | 'service_id' | 'protocol' | 'terminal_port'>
  readonly activeConnections: Gauge<'endpoint_id' | 'service_id' | 'protocol'>
  readonly connectionsRefusedTotal: Counter<'endpoint_id' | 'reason'>
  readonly bytesTotal: Counter<'endpoint_id' | 'service_id' | 'protocol' | 'direction'>
  readonly backendUp: Gauge<'service_id' | 'backend_id' | 'address' | 'zone'>
  readonly backendConnectionsTotal: Counter<'service_id' | 'backend_id' | 'zone'>
  readonly backendConnectDuration: Histogram<'service_id'>
  readonly dnsQueriesTotal: Counter<'qtype' | 'rcode'>
  readonly apiRequestsTotal: Counter<'method' | 'route' | 'status'>
  /** Open control-API connections and those it closed to stay within limits.apiMaxConnections (SPEC §10). */
  readonly apiConnections: Gauge
  readonly apiConnectionsClosedTotal: Counter<'reason'>
  /** SPEC §10: 1 while every backend with weight > 0 of the service is unhealthy (fail open). */
  readonly serviceFailOpen: Gauge<'service_id'>
  /** SPEC §10: endpoints per status, set at scrape time. */
  readonly endpoints: Gauge<'status'>
  /** SPEC §10: access-log lines dropped (write error, or more than 16 MiB waiting). */
  readonly accessLogDroppedTotal: Counter
  /** SPEC §11: data-plane workers that died and were started again. */
  readonly workerRestartsTotal: Counter
  /** Register a function run at the start of every scrape, to publish plain-number counters. */
  beforeScrape (hook: () => void): () => void
  /**
   * SPEC §11: where the data-plane workers' metrics come from at scrape time; `exposition()` sums
   * them with this registry's (a series known only here is left as it is).
   */
  setWorkerSource (source: (() => Promise<MetricsJson[]>) | undefined): void
  /** The text of /metrics: this registry, plus the workers' sums when there are workers. */
  exposition (): Promise<string>
}

export type RefusalReason = 'limit' | 'source' | 'no_backend' | 'connect_failed' | 'overload'

export function createMetrics (registry: Registry, options: { defaultMetrics?: boolean } = {}): Metrics {
  const hooks = new Set<() => void>()
  let workerSource: (() => Promise<MetricsJson[]>) | undefined
  const runHooks = (): void => {
    for (const hook of hooks) hook()
  }
  if (options.defaultMetrics !== false) {
    collectDefaultMetrics({ register: registry })
    // prom-client names three gauges `*_total`, which `promtool check metrics` rejects (a
    // `_total` suffix is for counters). Their per-type twins (nodejs_active_handles, ...) stay.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      registry.removeSingleMetric(name)
    }
  }

  // prom-client collects metrics in registration order; the first one runs the hooks so every
  // metric of this scrape sees the published numbers.
  const connectionsTotal = new Counter({
    name: 'linkgate_connections_total',
    help: 'TCP connections admitted and UDP flows created, per endpoint listener.',
    labelNames: ['endpoint_id', 'service_id', 'protocol', 'terminal_port'] as const,
    registers: [registry],
    collect: runHooks
  })
  return {
    registry,
    connectionsTotal,
    activeConnections: new Gauge({
      name: 'linkgate_active_connections',
      help: 'Live TCP connections and UDP flows per endpoint.',
      labelNames: ['endpoint_id', 'service_id', 'protocol'] as const,
      registers: [registry]
    }),
    connectionsRefusedTotal: new Counter({
      name: 'linkgate_connections_refused_total',
      help: 'Connections and flows refused, by reason: limit, source, no_backend, connect_failed, overload.',
      labelNames: ['endpoint_id', 'reason'] as const,
      registers: [registry]
    }),
    bytesTotal: new Counter({
      name: 'linkgate_bytes_total',
      help: 'Payload bytes forwarded, by direction: client_to_backend, backend_to_client.',
      labelNames: ['endpoint_id', 'service_id', 'protocol', 'direction'] as const,
      registers: [registry]
    }),
    backendUp: new Gauge({
      name: 'linkgate_backend_up',
      help: 'Backend health: 1 healthy or unknown, 0 unhealthy.',
      labelNames: ['service_id', 'backend_id', 'address', 'zone'] as const,
      registers: [registry]
    }),
    backendConnectionsTotal: new Counter({
      name: 'linkgate_backend_connections_total',
      help: 'Connections and flows sent to each backend.',
      labelNames: ['service_id', 'backend_id', 'zone'] as const,
      registers: [registry]
    }),
    backendConnectDuration: new Histogram({
      name: 'linkgate_backend_connect_duration_seconds',
      help: 'Time to establish a TCP connection to a backend.',
      labelNames: ['service_id'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry]
    }),
    dnsQueriesTotal: new Counter({
      name: 'linkgate_dns_queries_total',
      help: 'DNS queries answered by the embedded server, by query type and response code.',
      labelNames: ['qtype', 'rcode'] as const,
      registers: [registry]
    }),
    apiRequestsTotal: new Counter({
      name: 'linkgate_api_requests_total',
      help: 'Control API requests, by method, route template and status.',
      labelNames: ['method', 'route', 'status'] as const,
      registers: [registry]
    }),
    apiConnections: new Gauge({
      name: 'linkgate_api_connections',
      help: 'Open control API connections (bounded by limits.apiMaxConnections).',
      registers: [registry]
    }),
    apiConnectionsClosedTotal: new Counter({
      name: 'linkgate_api_connections_closed_total',
      help: 'Control API connections closed by linkgate at the connection limit: reason "idle" (an idle one made room for a new one), "slow_body" (one still receiving its body did) or "limit" (every one had a whole request in hand; the new one was closed).',
      labelNames: ['reason'] as const,
      registers: [registry]
    }),
    serviceFailOpen: new Gauge({
      name: 'linkgate_service_fail_open',
      help: 'Services whose every backend with weight > 0 is unhealthy: 1 while new connections are spread over all of them (fail open).',
      labelNames: ['service_id'] as const,
      // Every data-plane worker publishes the same verdict: one of them counts, not their sum.
      aggregator: 'max',
      registers: [registry]
    }),
    endpoints: new Gauge({
      name: 'linkgate_endpoints',
      help: 'Endpoints by status.',
      labelNames: ['status'] as const,
      registers: [registry]
    }),
    accessLogDroppedTotal: new Counter({
      name: 'linkgate_access_log_dropped_total',
      help: 'Access-log lines dropped because the log could not be written or too much was waiting.',
      registers: [registry]
    }),
    workerRestartsTotal: new Counter({
      name: 'linkgate_worker_restarts_total',
      help: 'Data-plane worker threads that died and were started again.',
      registers: [registry]
    }),
    beforeScrape (hook) {
      hooks.add(hook)
      return () => { hooks.delete(hook) }
    },
    setWorkerSource (source) {
      workerSource = source
    },
    async exposition () {
      if (workerSource === undefined) return await registry.metrics()
      const workers = await workerSource()
      const mine = await registry.getMetricsAsJSON()
      const fromWorkers = new Set<string>()
      for (const list of workers) for (const m of list) fromWorkers.add(m.name)
      // A metric only this thread has (process and Node.js metrics, API, health) keeps its value
      // as is: 'first' of one source, whatever its own aggregator says (prom-client omits some).
      for (const m of mine) if (!fromWorkers.has(m.name)) (m as { aggregator: string }).aggregator = 'first'
      return await AggregatorRegistry.aggregate([mine, ...workers]).metrics()
    }
  }
}
