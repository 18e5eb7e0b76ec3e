// The composition root (STYLE "The shape of the code"): builds every room and wires them.
// Dependencies run one way: api -> control <- dataplane, dns. The data plane reports bind
// failures through a callback wired here, so it never writes to the control plane itself.
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import { Registry } from 'prom-client'
import { buildApiServer } from './api/server.ts'
import { ControlPlane } from './control/control-plane.ts'
import type { Config } from './control/schemas.ts'
import { Store } from './control/store.ts'
import { parseHostPort } from './control/validation.ts'
import { createAccessLog } from './dataplane/access-log.ts'
import { DataPlane } from './dataplane/data-plane.ts'
import { createUdpListener } from './dataplane/udp-proxy.ts'
import { HealthChecker } from './dataplane/upstream/health-checker.ts'
import { UpstreamState } from './dataplane/upstream/upstream-state.ts'
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
  const accessLog = createAccessLog(config.log.access)
  let store: Store | undefined
  let control: ControlPlane | undefined
  let dataPlane: DataPlane | undefined
  let health: HealthChecker | undefined
  let dns: DnsServer | undefined
  let api: ReturnType<typeof buildApiServer> | undefined
  let demo: DemoBackends | undefined
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

    async start () {
      store = await Store.open(config.stateDir)
      control = new ControlPlane(config, store)
      control.setHealthSource(upstream)
      const file = options.configFile ?? '<config>'
      try {
        await control.applyDeclared(config.services, config.endpoints)
      } catch (err) {
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
      dataPlane = new DataPlane({
        config,
        store,
        metrics,
        logger,
        upstream,
        accessLog,
        udpFactory: createUdpListener,
        onEndpointFailed: (id, reason) => {
          ctl.markEndpointFailed(id, reason).catch((err: unknown) => {
            logger.error({ err, endpointId: id }, 'could not record endpoint failure')
          })
        }
      })
      health = new HealthChecker({ store, upstream, metrics, logger })
      health.start()
      await dataPlane.start()
      dns = new DnsServer({ config, store, metrics, logger })
      const dnsAddresses = await dns.start()
      api = buildApiServer({ control, metrics, logger })
      const listen = parseHostPort(config.listen.api) as { host: string, port: number }
      await api.listen({ host: listen.host, port: listen.port })
      const apiAddress = api.server.address() as AddressInfo
      logger.info({ api: apiAddress, dns: dnsAddresses, stateDir: config.stateDir }, 'linkgate started')
      return { api: apiAddress, dns: dnsAddresses }
    },

    close () {
      closing ??= (async () => {
        const graceMs = config.limits.shutdownGraceSeconds * 1000
        await Promise.allSettled([
          api?.close(),
          dataPlane?.close(graceMs),
          dns?.close(),
          health?.close(),
          demo?.close()
        ])
        accessLog.flush()
      })()
      return closing
    },

    destroy () {
      dataPlane?.destroy()
      dns?.destroy()
      health?.destroy()
      demo?.destroy()
      void api?.close()
      accessLog.flush()
    }
  }
  return app
}
