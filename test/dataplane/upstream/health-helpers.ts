// Shared pieces of the health-check tests: real backend servers on loopback (several addresses
// on one port, since a service probes every backend on the same healthCheck port), a store with
// services inserted directly, and waiting for a backend's health transition.
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createTcpServer, type Server, type Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import pino, { type Logger } from 'pino'
import { Registry } from 'prom-client'
import type { Backend, BackendHealth, EndpointService, HealthCheck, PortMapping } from '../../../src/control/model.ts'
import type { Store } from '../../../src/control/store.ts'
import { SqliteStore } from '../../../src/control/store-sqlite.ts'
import { createMetrics, type Metrics } from '../../../src/metrics/metrics.ts'
import { HealthChecker } from '../../../src/dataplane/upstream/health-checker.ts'
import { UpstreamState, type HealthTransition } from '../../../src/dataplane/upstream/upstream-state.ts'

/** The subset of a tap Test these helpers use. */
export interface TestLike {
  teardown (fn: () => unknown): void
  testdir (): string
}

export type BackendKind =
  | { kind: 'tcp' }
  | { kind: 'hang' }
  /** Writes `text` to each connection and closes it: tells a client which backend it reached. */
  | { kind: 'reply', text: string }
  | { kind: 'http', handler: (req: IncomingMessage, res: ServerResponse) => void }

/** One backend server on `host:port` that can be stopped and started again on the same port. */
export class TestBackend {
  readonly host: string
  port = 0
  /** performance.now() of every accepted connection since the last start(). */
  readonly accepted: number[] = []
  readonly #kind: BackendKind
  #server: Server | undefined
  readonly #sockets = new Set<Socket>()

  constructor (host: string, kind: BackendKind) {
    this.host = host
    this.#kind = kind
  }

  /** Accepted connections still open on the server side. */
  get openConnections (): number {
    return this.#sockets.size
  }

  get listening (): boolean {
    return this.#server?.listening === true
  }

  /** Listen on `port` (0: any). Rejects with the bind error. */
  async start (port = this.port): Promise<void> {
    const server: Server = this.#kind.kind === 'http' ? createHttpServer(this.#kind.handler) : createTcpServer()
    server.on('connection', (socket: Socket) => {
      this.accepted.push(performance.now())
      this.#sockets.add(socket)
      socket.on('error', () => {})
      socket.on('close', () => { this.#sockets.delete(socket) })
      // Read and drop what arrives (a `hang` server never answers), so the peer's FIN is seen.
      if (this.#kind.kind !== 'http') socket.resume()
      if (this.#kind.kind === 'reply') socket.end(this.#kind.text)
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen({ host: this.host, port }, () => {
        server.off('error', reject)
        resolve()
      })
    })
    server.on('error', () => {})
    this.#server = server
    this.port = (server.address() as { port: number }).port
    this.accepted.length = 0
  }

  /** Stop listening and end every accepted connection now. */
  async stop (): Promise<void> {
    const server = this.#server
    if (server === undefined) return
    this.#server = undefined
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => { server.close(() => { resolve() }) })
  }
}

/**
 * Start one server per host, all on the same port (a service's backends share the healthCheck
 * port). The first takes port 0; should another host's bind collide, everything is retried.
 */
export async function startBackends (t: TestLike, hosts: readonly string[], kind: BackendKind | ((i: number) => BackendKind)): Promise<TestBackend[]> {
  for (let attempt = 0; ; attempt++) {
    const backends = hosts.map((h, i) => new TestBackend(h, typeof kind === 'function' ? kind(i) : kind))
    try {
      const [first, ...rest] = backends as [TestBackend, ...TestBackend[]]
      await first.start(0)
      for (const b of rest) await b.start(first.port)
      t.teardown(async () => { await Promise.all(backends.map((b) => b.stop())) })
      return backends
    } catch (err) {
      await Promise.all(backends.map((b) => b.stop()))
      if (attempt >= 5 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
    }
  }
}

/** A port on `host` that nothing listens on (bound, then released). */
export async function closedPort (host: string): Promise<number> {
  const b = new TestBackend(host, { kind: 'tcp' })
  await b.start(0)
  await b.stop()
  return b.port
}

let serial = 0
/** `vpcesvc-` + 12 hex, unique within the test process. */
export function serviceId (): string {
  return `vpcesvc-${(0xa00000000000 + ++serial).toString(16)}`
}

export function backendOf (id: string, address: string, zone = 'zone-a', weight = 100): Backend {
  return { id, address, zone, weight }
}

/** Fast settings: a verdict within a second or two. */
export const FAST_CHECK: HealthCheck = {
  enabled: true,
  protocol: 'TCP',
  path: '/',
  intervalSeconds: 0.3,
  timeoutSeconds: 0.15,
  healthyThreshold: 2,
  unhealthyThreshold: 3
}

export function serviceOf (id: string, opts: {
  backends: Backend[]
  port?: number
  portMappings?: PortMapping[]
  healthCheck?: Partial<HealthCheck>
  sameZonePreferred?: boolean
}): EndpointService {
  return {
    id,
    serviceName: `local-1.${id}`,
    ownerAccountId: '100000000001',
    status: 'available',
    acceptanceRequired: false,
    sameZonePreferred: opts.sameZonePreferred ?? true,
    portMappings: opts.portMappings ?? [{ protocol: 'TCP', servicePort: opts.port ?? 1, terminalPort: 8080 }],
    backends: opts.backends,
    healthCheck: { ...FAST_CHECK, ...opts.healthCheck },
    allowedAccounts: [],
    createdAt: new Date().toISOString()
  }
}

export async function putService (store: Store, service: EndpointService, action: 'created' | 'updated' = 'created'): Promise<void> {
  await store.transact((draft) => {
    draft.services[service.id] = service
    return undefined
  })
}

export async function updateService (store: Store, id: string, change: (s: EndpointService) => EndpointService): Promise<void> {
  await store.transact((draft) => {
    draft.services[id] = change(draft.services[id] as EndpointService)
    return undefined
  })
}

export async function deleteService (store: Store, id: string): Promise<void> {
  await store.transact((draft) => {
    delete draft.services[id]
    return undefined
  })
}

export interface Harness {
  store: Store
  upstream: UpstreamState
  metrics: Metrics
  checker: HealthChecker
}

/** Store + UpstreamState + metrics + a started checker, all torn down with the test. */
export async function harness (t: TestLike, opts: { passiveEjectionSeconds?: number, logger?: Logger } = {}): Promise<Harness> {
  const store = await SqliteStore.open(t.testdir())
  const upstream = new UpstreamState()
  const metrics = createMetrics(new Registry(), { defaultMetrics: false })
  const checker = new HealthChecker({ store, upstream, metrics, logger: opts.logger ?? pino({ level: 'silent' }), passiveEjectionSeconds: opts.passiveEjectionSeconds })
  t.teardown(() => checker.close())
  return { store, upstream, metrics, checker }
}

/**
 * Resolve with the transition that brings a backend to `to` (undefined when it is already
 * there), and the ms it took; reject after `timeoutMs` naming what was awaited.
 */
export function waitForHealth (upstream: UpstreamState, svcId: string, backendId: string, to: BackendHealth, timeoutMs: number):
Promise<{ transition: HealthTransition | undefined, elapsedMs: number }> {
  const started = performance.now()
  if (upstream.backendHealth(svcId, backendId) === to) return Promise.resolve({ transition: undefined, elapsedMs: 0 })
  return new Promise((resolve, reject) => {
    const onTransition = (tr: HealthTransition): void => {
      if (tr.serviceId !== svcId || tr.backendId !== backendId || tr.to !== to) return
      clearTimeout(timer)
      upstream.off('transition', onTransition)
      resolve({ transition: tr, elapsedMs: performance.now() - started })
    }
    const timer = setTimeout(() => {
      upstream.off('transition', onTransition)
      reject(new Error(`${backendId} did not become ${to} within ${timeoutMs} ms (still ${upstream.backendHealth(svcId, backendId)})`))
    }, timeoutMs)
    upstream.on('transition', onTransition)
  })
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => { setTimeout(resolve, ms) })

/** Poll `predicate` every 10 ms; false if it still fails after `timeoutMs`. */
export async function eventually (predicate: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  while (!predicate()) {
    if (performance.now() > deadline) return false
    await sleep(10)
  }
  return true
}

/** Current linkgate_backend_up series, keyed `serviceId/backendId`. */
export async function backendUpSeries (metrics: Metrics): Promise<Map<string, { value: number, labels: Record<string, string | number> }>> {
  const out = new Map<string, { value: number, labels: Record<string, string | number> }>()
  for (const v of (await metrics.backendUp.get()).values) {
    out.set(`${String(v.labels.service_id)}/${String(v.labels.backend_id)}`, { value: v.value, labels: v.labels })
  }
  return out
}
