// In-process demo backends (SPEC §9): on each of three loopback addresses an HTTP server that
// answers with its backend id and zone, a TCP echo and a UDP echo. Two backends sit in the
// first zone (weights 100 and 50), one in the second, so repeated curls through the demo
// endpoint show the 2:1 weighted choice and the same-zone preference.
import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http'
import { createServer as createTcpServer, type Server, type Socket } from 'node:net'
import type { Logger } from 'pino'
import type { Config, ConfigEndpoint, ConfigService } from '../control/schemas.ts'

export const DEMO_SERVICE_ID = 'vpcesvc-00000000de01'
export const DEMO_ENDPOINT_ID = 'vpce-00000000de01'
export const DEMO_HTTP_PORT = 18080
export const DEMO_ECHO_PORT = 17007

export interface DemoBackend {
  readonly id: string
  readonly address: string
  readonly zoneIndex: 0 | 1
  readonly weight: number
}

export const DEMO_BACKENDS: readonly DemoBackend[] = [
  { id: 'be-00000a01', address: '127.20.0.1', zoneIndex: 0, weight: 100 },
  { id: 'be-00000a02', address: '127.20.0.2', zoneIndex: 0, weight: 50 },
  { id: 'be-00000b01', address: '127.20.0.3', zoneIndex: 1, weight: 100 }
]

const zoneOf = (config: Config, b: DemoBackend): string => config.zones[b.zoneIndex] ?? config.zones[0] as string

/** The demo service and its accepted endpoint, as declarative resources with fixed ids. */
export function demoResources (config: Config): { services: ConfigService[], endpoints: ConfigEndpoint[] } {
  const provider = config.accounts[0]?.id
  const consumer = config.accounts[1]?.id ?? provider
  if (provider === undefined || consumer === undefined) throw new Error('demo: the config needs at least one account')
  const subnet = config.subnets.find((s) => s.zone === config.zones[0]) ?? config.subnets[0]
  if (subnet === undefined) throw new Error('demo: the config needs at least one subnet')
  return {
    services: [{
      id: DEMO_SERVICE_ID,
      ownerAccountId: provider,
      name: 'demo',
      acceptanceRequired: false,
      sameZonePreferred: true,
      portMappings: [
        { protocol: 'TCP', servicePort: DEMO_HTTP_PORT, terminalPort: 8080 },
        { protocol: 'TCP', servicePort: DEMO_ECHO_PORT, terminalPort: 7007 },
        { protocol: 'UDP', servicePort: DEMO_ECHO_PORT, terminalPort: 7007 }
      ],
      backends: DEMO_BACKENDS.map((b) => ({ id: b.id, address: b.address, zone: zoneOf(config, b), weight: b.weight })),
      healthCheck: {
        enabled: true, protocol: 'HTTP', port: DEMO_HTTP_PORT, path: '/', intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 3
      },
      proxyProtocol: 'off',
      allowedAccounts: [consumer]
    }],
    endpoints: [{
      id: DEMO_ENDPOINT_ID,
      ownerAccountId: consumer,
      serviceId: DEMO_SERVICE_ID,
      subnetId: subnet.id,
      privateDns: true,
      allowedSources: ['0.0.0.0/0', '::/0']
    }]
  }
}

export class DemoBackends {
  readonly #config: Config
  readonly #logger: Logger
  readonly #http: HttpServer[] = []
  readonly #tcp: Server[] = []
  readonly #udp: UdpSocket[] = []
  readonly #sockets = new Set<Socket>()

  constructor (config: Config, logger: Logger) {
    this.#config = config
    this.#logger = logger
  }

  async start (): Promise<void> {
    for (const b of DEMO_BACKENDS) {
      const zone = zoneOf(this.#config, b)
      const http = createHttpServer((req, res) => {
        res.setHeader('content-type', 'text/plain')
        res.end(`backend ${b.id} zone ${zone} address ${b.address} weight ${b.weight} path ${req.url ?? '/'}\n`)
      })
      http.keepAliveTimeout = 5000
      this.#http.push(http)
      await listen(http, b.address, DEMO_HTTP_PORT)

      const echo = createTcpServer({ allowHalfOpen: true }, (socket) => {
        this.#sockets.add(socket)
        socket.on('close', () => this.#sockets.delete(socket))
        socket.on('error', () => {})
        socket.pipe(socket)
      })
      this.#tcp.push(echo)
      await listen(echo, b.address, DEMO_ECHO_PORT)

      const udp = createSocket('udp4')
      udp.on('message', (msg, rinfo) => { udp.send(msg, rinfo.port, rinfo.address) })
      udp.on('error', (err) => this.#logger.warn({ err }, 'demo UDP echo error'))
      this.#udp.push(udp)
      await new Promise<void>((resolve, reject) => {
        udp.once('error', reject)
        udp.bind(DEMO_ECHO_PORT, b.address, () => { udp.off('error', reject); resolve() })
      })
    }
    this.#logger.info({ backends: DEMO_BACKENDS.map((b) => b.address) }, 'demo backends listening')
  }

  async close (): Promise<void> {
    this.destroy()
  }

  destroy (): void {
    for (const s of this.#sockets) s.destroy()
    for (const h of this.#http) { h.closeAllConnections(); h.close() }
    for (const t of this.#tcp) t.close()
    for (const u of this.#udp) { try { u.close() } catch {} }
  }
}

function listen (server: Server | HttpServer, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => { reject(new Error(`demo backend ${host}:${port}: ${err.message}`)) }
    server.once('error', onError)
    server.listen(port, host, () => { server.off('error', onError); resolve() })
  })
}
