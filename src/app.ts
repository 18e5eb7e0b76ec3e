// The composition root (STYLE "The shape of the code"): builds every room and wires them.
// Dependencies run one way: api -> control <- dataplane, dns. The data plane reports bind
// failures through a callback wired here, so it never writes to the control plane itself.
import type { AddressInfo } from 'node:net'
import { availableParallelism, hostname } from 'node:os'
import type { Logger } from 'pino'
import { Registry } from 'prom-client'
import { StoreReadiness } from './api/readiness.ts'
import { buildApiServer } from './api/server.ts'
import { ClusterNode, registerClusterMetrics, singleNodeItems } from './cluster/cluster-node.ts'
import { prepareStateDir, stateDirFailure } from './config/state-dir.ts'
import { ControlPlane } from './control/control-plane.ts'
import type { Config } from './control/schemas.ts'
import { lockStateDir, type StateLock } from './control/state-lock.ts'
import type { Store } from './control/store.ts'
import { SqliteStore } from './control/store-sqlite.ts'
import { parseHostPort } from './control/validation.ts'
import { createAccessLog } from './dataplane/access-log.ts'
import { ConnectionBudget, resolveMaxConnections, softOpenFileLimit } from './dataplane/connection-budget.ts'
import { DataPlane } from './dataplane/data-plane.ts'
import { createUdpListener } from './dataplane/udp-proxy.ts'
import { HealthChecker } from './dataplane/upstream/health-checker.ts'
import { UpstreamState } from './dataplane/upstream/upstream-state.ts'
import { resolveWorkerCount, WorkerPool } from './dataplane/workers/worker-pool.ts'
import { DemoBackends, demoResources } from './demo/demo-backends.ts'
import { DnsServer } from './dns/server.ts'
import { ConfigError, isLinkgateError } from './errors.ts'
import { createLogger } from './logger.ts'
import { createMetrics, type Metrics } from './metrics/metrics.ts'

export interface AppOptions {
  /** A Registry of the caller's; default a fresh one (never prom-client's global). */
  readonly registry?: Registry
  readonly logger?: Logger
  /** Where the config came from, for error messages. */
  readonly configFile?: string
  /**
   * SPEC §11: run the TCP/UDP listeners and DNS in `config.workers` worker threads (what
   * `linkgate start` does). Default false: everything on this thread (tests, embedding).
   */
  readonly workers?: boolean
}

export interface AppAddresses {
  readonly api: AddressInfo
  readonly dns: { readonly udp: AddressInfo, readonly tcp: AddressInfo }
}

export interface App {
  readonly config: Config
  readonly metrics: Metrics
  readonly logger: Logger
  /** Valid after start(). */
  readonly control: ControlPlane
  readonly store: Store
  readonly upstream: UpstreamState
  readonly demo: DemoBackends | undefined
  /** The data-plane workers, when AppOptions.workers. */
  readonly workers: WorkerPool | undefined
  start (): Promise<AppAddresses>
  /** Stop accepting everywhere; live connections get up to `limits.shutdownGraceSeconds`, then end. Safe twice. */
  close (): Promise<void>
  /** End everything now. */
  destroy (): void
}

export function buildApp (config: Config, options: AppOptions = {}): App {
  const logger = options.logger ?? createLogger(config.log)
  const metrics = createMetrics(options.registry ?? new Registry())
  const upstream = new UpstreamState()
  const useWorkers = options.workers === true
  // With workers, each worker writes its own connections' lines.
  const accessLog = createAccessLog(useWorkers ? 'off' : config.log.access, { logger, onDrop: (lines) => { metrics.accessLogDroppedTotal.inc(lines) } })
  let store: Store | undefined
  let cluster: ClusterNode | undefined
  let lock: StateLock | undefined
  let control: ControlPlane | undefined
  let dataPlane: DataPlane | undefined
  let health: HealthChecker | undefined
  let dns: DnsServer | undefined
  let api: ReturnType<typeof buildApiServer> | undefined
  let demo: DemoBackends | undefined
  let workers: WorkerPool | undefined
  let closing: Promise<void> | undefined

  const required = <T>(value: T | undefined, what: string): T => {
    if (value === undefined) throw new Error(`app not started: ${what} is not available yet`)
    return value
  }

  const app: App = {
    config,
    metrics,
    logger,
    upstream,
    get control () { return required(control, 'control') },
    get store () { return required(store, 'store') },
    get demo () { return demo },
    get workers () { return workers },

    async start () {
      // stateDir must be a directory we may write into, else the start stops naming it (README
      // "Limits and failure behaviour"); in cluster mode it holds nothing shared but the lock.
      await prepareStateDir(config.stateDir)
      // Before anything opens or writes the state: a second instance stops here (SPEC §10).
      lock = await lockStateDir(config.stateDir)
      // SPEC §10: the budget follows the open-file limit; a value it cannot carry stops the start
      // before anything is opened or written.
      let maxConnections: number
      try {
        maxConnections = resolveMaxConnections(config.limits.maxConnections, softOpenFileLimit())
      } catch (err) {
        throw new ConfigError(options.configFile ?? '<config>', [(err as Error).message])
      }
      // SPEC §12: with a cluster section the state is etcd's, shared by every node.
      // /healthz reports a store that cannot write (src/api/readiness.ts); stateDir is probed
      // only where it holds the state.
      const readiness = new StoreReadiness(config.cluster === undefined ? { dir: config.stateDir } : {})
      if (config.cluster !== undefined) {
        cluster = await ClusterNode.start(config.cluster, logger, config.subnets.map((s) => s.cidr))
        store = readiness.watch(cluster.store)
      } else {
        store = readiness.watch(await SqliteStore.open(config.stateDir, {
          onListenerError: (err) => { logger.error({ err }, 'a consumer of store changes failed') },
          onWriterFailed: (err) => {
            readiness.writerFailed(err)
            logger.fatal({ err }, 'state store writer failed: changes are refused until linkgate restarts')
          }
        }).catch((err: unknown) => { throw stateDirFailure(config.stateDir, err) }))
      }
      const node = cluster
      const endpointStatuses = metrics.endpoints
      const stateOf = store
      metrics.beforeScrape(() => { publishEndpointStatuses(endpointStatuses, stateOf.state.endpoints) })
      const clusterItems = node === undefined ? () => singleNodeItems(stateOf.state) : () => node.items()
      registerClusterMetrics(metrics.registry, node?.nodeId ?? hostname(), clusterItems)
      // Backend health is the UpstreamState's, which exists before any of the rooms.
      control = new ControlPlane(config, store, upstream)
      const file = options.configFile ?? '<config>'
      try {
        await control.applyDeclared(config.services, config.endpoints)
      } catch (err) {
        if (err instanceof ConfigError) throw new ConfigError(file, err.errors)
        if (isLinkgateError(err)) throw new ConfigError(file, [err.message])
        throw err
      }
      if (config.demo) {
        demo = new DemoBackends(config, logger)
        await demo.start()
        const resources = demoResources(config)
        await control.applyDeclared(resources.services, resources.endpoints)
      }
      const ctl = control
      const onEndpointFailed = (id: string, reason: string): boolean => {
        // Cluster mode: an address missing from this node's interface (expired, removed by hand)
        // is this node's trouble, not the endpoint's: the data plane retries the bind, and the
        // endpoint is not marked failed for every node in etcd.
        if (node !== undefined && reason.includes('EADDRNOTAVAIL')) {
          logger.warn({ endpointId: id, reason }, 'cluster: endpoint address not on this node yet; retrying the bind')
          return false
        }
        ctl.markEndpointFailed(id, reason).catch((err: unknown) => {
          logger.error({ err, endpointId: id }, 'could not record endpoint failure')
        })
        return true
      }
      const onEndpointRecovered = (id: string): void => {
        ctl.markEndpointRecovered(id).catch((err: unknown) => {
          logger.error({ err, endpointId: id }, 'could not record endpoint recovery')
        })
      }
      let dnsAddresses: AppAddresses['dns']
      if (useWorkers) {
        health = new HealthChecker({ store, upstream, metrics, logger })
        health.start()
        workers = new WorkerPool({
          count: resolveWorkerCount(config.workers, availableParallelism()),
          config, store, upstream, metrics, logger, maxConnections, onEndpointFailed, onEndpointRecovered,
          // Cluster mode: the workers listen only on the IPs this node serves (SPEC §12).
          ...(node === undefined ? {} : { served: () => node.served })
        })
        const pool = workers
        node?.onOwnedChanged((ips) => { pool.servedChanged(ips) })
        dnsAddresses = await workers.start()
      } else {
        dataPlane = new DataPlane({
          config,
          store,
          metrics,
          logger,
          upstream,
          accessLog,
          udpFactory: createUdpListener,
          // In-process only: workers share theirs (shared-counters.ts).
          budget: new ConnectionBudget(maxConnections),
          ...(node === undefined ? {} : { serves: (ip: string) => node.owns(ip) }),
          onEndpointFailed,
          onEndpointRecovered
        })
        const plane = dataPlane
        node?.onOwnedChanged((ips) => { plane.servedChanged(ips) })
        health = new HealthChecker({ store, upstream, metrics, logger })
        health.start()
        await dataPlane.start()
        dns = new DnsServer({ config, store, metrics, logger })
        dnsAddresses = await dns.start()
      }
      api = buildApiServer({
        control, metrics, logger, maxConnections: config.limits.apiMaxConnections, cluster: clusterItems, readiness: () => readiness.problem()
      })
      const listen = parseHostPort(config.listen.api) as { host: string, port: number }
      await api.listen({ host: listen.host, port: listen.port })
      const apiAddress = api.server.address() as AddressInfo
      logger.info({ api: apiAddress, dns: dnsAddresses, stateDir: config.stateDir, maxConnections, workers: workers?.size ?? 0 }, 'linkgate started')
      return { api: apiAddress, dns: dnsAddresses }
    },

    close () {
      closing ??= (async () => {
        const graceMs = config.limits.shutdownGraceSeconds * 1000
        const draining = Promise.allSettled([
          api?.close(),
          dataPlane?.close(graceMs),
          workers?.close(graceMs),
          dns?.close(),
          health?.close(),
          demo?.close()
        ])
        // SPEC §12: the listeners stop accepting above; the endpoint IPs are released now, not
        // after the drain, so other nodes take them over at once. The price: once an IP's address
        // is gone, its live connections here receive nothing more and the new owner resets them
        // (README "Cluster", what a failover loses); the drain still serves connections on IPs
        // whose address stays (none, in cluster mode with an interface).
        await cluster?.release()
        await draining
        // Last: the rooms above may still record a change (a bind failure) while they close.
        await store?.close()
        await cluster?.close()
        await accessLog.close()
        await lock?.release()
      })()
      return closing
    },

    destroy () {
      dataPlane?.destroy()
      workers?.destroy()
      dns?.destroy()
      health?.destroy()
      demo?.destroy()
      void api?.close()
      accessLog.flush()
      void cluster?.close()
      void lock?.release()
    }
  }
  return app
}

const ENDPOINT_STATUSES = ['pendingAcceptance', 'creating', 'accepted', 'rejected', 'failed', 'deleting'] as const

/** linkgate_endpoints{status}: every status, zero included, counted at scrape time. */
function publishEndpointStatuses (gauge: Metrics['endpoints'], endpoints: Readonly<Record<string, { status: string }>>): void {
  const counts = new Map<string, number>(ENDPOINT_STATUSES.map((s) => [s, 0]))
  for (const ep of Object.values(endpoints)) counts.set(ep.status, (counts.get(ep.status) ?? 0) + 1)
  for (const [status, n] of counts) gauge.set({ status }, n)
}
