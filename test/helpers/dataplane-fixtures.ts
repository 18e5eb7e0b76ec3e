// Fixtures for data-plane tests: resources written straight into a real Store, a DataPlane on
// it, and real backends (echo, id-and-close, HTTP) on loopback addresses.
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer as createHttpServer } from 'node:http'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { Registry } from 'prom-client'
import { buildConfig } from '../../src/config/load-config.ts'
import type { Backend, ChangeEvent, Endpoint, EndpointService, EndpointStatus, PortMapping } from '../../src/control/model.ts'
import type { Config } from '../../src/control/schemas.ts'
import type { Store } from '../../src/control/store.ts'
import { SqliteStore } from '../../src/control/store-sqlite.ts'
import type { AccessLog, AccessLogEntry } from '../../src/dataplane/access-log.ts'
import { disabledAccessLog } from '../../src/dataplane/access-log.ts'
import { DataPlane, type DataPlaneOptions } from '../../src/dataplane/data-plane.ts'
import type { ListenerFactory } from '../../src/dataplane/listener.ts'
import { UpstreamState } from '../../src/dataplane/upstream/upstream-state.ts'
import { createMetrics, type Metrics } from '../../src/metrics/metrics.ts'

/** The part of a tap Test these helpers use. */
export interface Teardown {
  teardown (fn: () => unknown): void
}

export const PROVIDER = '100000000001'
export const CONSUMER = '100000000002'

const hex = (bytes: number): string => randomBytes(bytes).toString('hex')

export function makeBackend (address: string, zone = 'zone-a', weight = 100, id = `be-${hex(4)}`): Backend {
  return { id, address, zone, weight }
}

export interface ServiceSpec {
  portMappings: PortMapping[]
  backends?: Backend[]
  sameZonePreferred?: boolean
  id?: string
  proxyProtocol?: EndpointService['proxyProtocol']
}

export function makeService (spec: ServiceSpec): EndpointService {
  const id = spec.id ?? `vpcesvc-${hex(6)}`
  return {
    id,
    serviceName: `local-1.${id}`,
    ownerAccountId: PROVIDER,
    status: 'available',
    acceptanceRequired: false,
    sameZonePreferred: spec.sameZonePreferred ?? true,
    portMappings: spec.portMappings,
    backends: spec.backends ?? [],
    healthCheck: {
      enabled: false, protocol: 'TCP', path: '/', intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 3
    },
    proxyProtocol: spec.proxyProtocol ?? 'off',
    allowedAccounts: [],
    createdAt: new Date().toISOString()
  }
}

export interface EndpointSpec {
  ip: string
  zone?: string
  status?: EndpointStatus
  allowedSources?: string[]
}

export function makeEndpoint (service: EndpointService, spec: EndpointSpec): Endpoint {
  const zone = spec.zone ?? 'zone-a'
  return {
    id: `vpce-${hex(6)}`,
    serviceId: service.id,
    serviceName: service.serviceName,
    ownerAccountId: CONSUMER,
    subnetId: zone === 'zone-a' ? 'subnet-a' : 'subnet-b',
    zone,
    ip: spec.ip,
    privateDns: false,
    allowedSources: spec.allowedSources ?? ['0.0.0.0/0', '::/0'],
    status: spec.status ?? 'accepted',
    dnsNames: [],
    createdAt: new Date().toISOString()
  }
}

export async function tempDir (t: Teardown, prefix = 'linkgate-dp-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

export async function openStore (t: Teardown): Promise<SqliteStore> {
  return SqliteStore.open(await tempDir(t))
}

// ---- changes, driven through store.transact as the control plane drives them ----

export function putService (store: Store, service: EndpointService): Promise<void> {
  return store.transact((draft) => {
    draft.services[service.id] = service
    return undefined
  })
}

export function putEndpoint (store: Store, endpoint: Endpoint): Promise<void> {
  return store.transact((draft) => {
    draft.endpoints[endpoint.id] = endpoint
    return undefined
  })
}

export function updateService (store: Store, id: string, change: (s: EndpointService) => Partial<EndpointService>): Promise<EndpointService> {
  return store.transact((draft) => {
    const current = draft.services[id]
    if (current === undefined) throw new Error(`no service ${id}`)
    const next = { ...current, ...change(current) }
    draft.services[id] = next
    return next
  })
}

export function updateEndpoint (store: Store, id: string, change: Partial<Endpoint>): Promise<Endpoint> {
  return store.transact((draft) => {
    const current = draft.endpoints[id]
    if (current === undefined) throw new Error(`no endpoint ${id}`)
    const next = { ...current, ...change }
    draft.endpoints[id] = next
    return next
  })
}

export function deleteEndpoint (store: Store, id: string): Promise<void> {
  return store.transact((draft) => {
    delete draft.endpoints[id]
    return undefined
  })
}

// ---- the data plane ----

export class RecordingAccessLog implements AccessLog {
  readonly enabled = true
  readonly entries: AccessLogEntry[] = []
  write (entry: AccessLogEntry): void { this.entries.push(entry) }
  flush (): void {}
  close (): Promise<void> { return Promise.resolve() }
}

export interface DataPlaneFixture {
  dataPlane: DataPlane
  store: Store
  config: Config
  metrics: Metrics
  upstream: UpstreamState
  failures: Array<{ endpointId: string, reason: string }>
}

export interface DataPlaneFixtureOptions {
  store: Store
  config?: Record<string, unknown>
  accessLog?: AccessLog
  udpFactory?: ListenerFactory
  /** Default true: start() is awaited. */
  start?: boolean
  /** More DataPlane options (budget, bind retry delays, callbacks...). */
  options?: Partial<DataPlaneOptions>
}

export async function startDataPlane (t: Teardown, opts: DataPlaneFixtureOptions): Promise<DataPlaneFixture> {
  const config = buildConfig(opts.config ?? {})
  const metrics = createMetrics(new Registry(), { defaultMetrics: false })
  const upstream = new UpstreamState()
  const failures: DataPlaneFixture['failures'] = []
  const dataPlane = new DataPlane({
    config,
    store: opts.store,
    metrics,
    logger: pino({ level: 'silent' }),
    upstream,
    accessLog: opts.accessLog ?? disabledAccessLog,
    udpFactory: opts.udpFactory,
    onEndpointFailed: (endpointId, reason) => { failures.push({ endpointId, reason }) },
    ...opts.options
  })
  t.teardown(() => dataPlane.destroy())
  if (opts.start !== false) await dataPlane.start()
  return { dataPlane, store: opts.store, config, metrics, upstream, failures }
}

/** The value of one series of a counter or gauge (0 when the series does not exist). */
export async function metricValue (metrics: Metrics, name: string, labels: Record<string, string>): Promise<number> {
  const metric = metrics.registry.getSingleMetric(name)
  if (metric === undefined) throw new Error(`no metric ${name}`)
  await metrics.registry.metrics() // runs the beforeScrape hooks that publish plain-number counters
  const data = await metric.get()
  let sum = 0
  for (const v of data.values) {
    const l = v.labels as Record<string, string | number>
    if (Object.entries(labels).every(([k, want]) => String(l[k]) === want)) sum += v.value
  }
  return sum
}

// ---- sockets and backends ----

export interface TestServer {
  server: Server
  host: string
  port: number
  /** Connections accepted so far. */
  accepted: number
  /** Live accepted sockets. */
  sockets: Set<Socket>
}

async function listenOn (t: Teardown, server: Server, host: string, port = 0): Promise<TestServer> {
  const out: TestServer = { server, host, port: 0, accepted: 0, sockets: new Set() }
  server.on('connection', (s: Socket) => {
    out.accepted++
    out.sockets.add(s)
    s.on('error', () => {})
    s.on('close', () => out.sockets.delete(s))
  })
  t.teardown(() => new Promise<void>((resolve) => {
    for (const s of out.sockets) s.destroy()
    server.close(() => resolve())
  }))
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host, port }, () => { server.off('error', reject); resolve() })
  })
  out.port = (server.address() as AddressInfo).port
  return out
}

/** Echoes every byte; on the client's FIN, finishes echoing and sends its own FIN. */
export function startEchoServer (t: Teardown, host: string, port = 0): Promise<TestServer> {
  const server = createServer({ allowHalfOpen: true }, (s) => { s.pipe(s) })
  return listenOn(t, server, host, port)
}

/** Writes `id` and closes: which backend a connection reached. */
export function startIdServer (t: Teardown, host: string, id: string, port = 0): Promise<TestServer> {
  const server = createServer((s) => { s.end(id) })
  return listenOn(t, server, host, port)
}

/** Calls `handler` for each accepted socket (half-open allowed). */
export function startTcpServer (t: Teardown, host: string, handler: (s: Socket) => void, port = 0): Promise<TestServer> {
  const server = createServer({ allowHalfOpen: true }, handler)
  return listenOn(t, server, host, port)
}

/** A tiny keep-alive HTTP server answering `body` (for throughput checks). */
export async function startHttpServer (t: Teardown, host: string, body = 'ok\n', port = 0): Promise<{ port: number }> {
  const server = createHttpServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  await new Promise<void>((resolve) => server.listen({ host, port }, resolve))
  return { port: (server.address() as AddressInfo).port }
}

/** A port on `host` that was free a moment ago (bound on port 0, then released). Connecting to it is refused. */
export async function freePort (host: string): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host, port: 0 }, resolve)
  })
  const port = (server.address() as AddressInfo).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

export interface ConnectOptions {
  localAddress?: string
  allowHalfOpen?: boolean
}

/** Connect and resolve once connected; the socket is destroyed at teardown. */
export function connectTo (t: Teardown, host: string, port: number, opts: ConnectOptions = {}): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, localAddress: opts.localAddress, allowHalfOpen: opts.allowHalfOpen ?? false })
    t.teardown(() => socket.destroy())
    socket.once('error', reject)
    socket.once('connect', () => { socket.off('error', reject); resolve(socket) })
  })
}

export interface Received {
  data: Buffer
  /** The error that ended the socket, if any (e.g. ECONNRESET). */
  error: NodeJS.ErrnoException | null
}

/** Everything the socket receives until it closes. */
export function readAll (socket: Socket): Promise<Received> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let error: NodeJS.ErrnoException | null = null
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', (err) => { error = err })
    socket.on('close', () => resolve({ data: Buffer.concat(chunks), error }))
  })
}

/** Connect, read until close: the id an id-server wrote, or the error. */
export async function fetchId (host: string, port: number): Promise<string> {
  const socket = connect({ host, port })
  const got = await readAll(socket)
  if (got.error !== null) throw got.error
  return got.data.toString()
}

/** Write `message` and resolve with the first `message.length` bytes echoed back. */
export function roundTrip (socket: Socket, message: Buffer | string, timeoutMs = 2000): Promise<Buffer> {
  const want = Buffer.from(message)
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let got = 0
    const timer = setTimeout(() => finish(new Error(`no echo of ${want.length} bytes within ${timeoutMs} ms (got ${got})`)), timeoutMs)
    const onData = (c: Buffer): void => {
      chunks.push(c)
      got += c.length
      if (got >= want.length) finish(null)
    }
    const onClose = (): void => finish(new Error(`socket closed after ${got} of ${want.length} bytes`))
    const finish = (err: Error | null): void => {
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('close', onClose)
      if (err !== null) reject(err)
      else resolve(Buffer.concat(chunks))
    }
    socket.on('data', onData)
    socket.on('close', onClose)
    socket.write(want)
  })
}

/** Resolve when `socket` closes, or reject after `timeoutMs`. */
export function closed (socket: Socket, timeoutMs = 2000): Promise<void> {
  if (socket.closed) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket still open after ${timeoutMs} ms`)), timeoutMs)
    socket.once('close', () => { clearTimeout(timer); resolve() })
  })
}

/**
 * Does a TCP connect to host:port succeed (true) or get refused (false)? With `timeoutMs`, a
 * connect still pending by then (a stalled listener) is given up and counts as false.
 */
export function canConnect (host: string, port: number, timeoutMs?: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port })
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => done(false), timeoutMs)
    const done = (ok: boolean): void => { clearTimeout(timer); socket.destroy(); resolve(ok) }
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

/** Poll `check` every 10 ms until it returns true; resolve with the time it took, or reject at `timeoutMs`. */
export async function waitFor (check: () => boolean | Promise<boolean>, timeoutMs: number, what = 'condition'): Promise<number> {
  const start = Date.now()
  for (;;) {
    if (await check()) return Date.now() - start
    if (Date.now() - start > timeoutMs) throw new Error(`${what} not met within ${timeoutMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

export interface ProxyFixtureOptions {
  /** The endpoint's IP. */
  ip: string
  backends: Backend[]
  servicePort: number
  zone?: string
  sameZonePreferred?: boolean
  allowedSources?: string[]
  config?: Record<string, unknown>
  accessLog?: AccessLog
}

export interface ProxyFixture extends DataPlaneFixture {
  service: EndpointService
  endpoint: Endpoint
  /** The endpoint's terminal port. */
  port: number
}

/** One service with one TCP mapping, one accepted endpoint on `ip`, and a started DataPlane. */
export async function startProxy (t: Teardown, opts: ProxyFixtureOptions): Promise<ProxyFixture> {
  const store = await openStore(t)
  const port = await freePort(opts.ip)
  const service = makeService({
    portMappings: [{ protocol: 'TCP', servicePort: opts.servicePort, terminalPort: port }],
    backends: opts.backends,
    sameZonePreferred: opts.sameZonePreferred
  })
  const endpoint = makeEndpoint(service, { ip: opts.ip, zone: opts.zone, allowedSources: opts.allowedSources })
  await putService(store, service)
  await putEndpoint(store, endpoint)
  const fx = await startDataPlane(t, { store, config: opts.config, accessLog: opts.accessLog })
  return { ...fx, service, endpoint, port }
}
