// Building blocks for the UDP proxy tests: a UDP listener built directly from a ListenerContext
// (no reconciler), real backends and clients on loopback. Every socket is torn down with the test.
import { once } from 'node:events'
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram'
import { isIPv6 } from 'node:net'
import pino from 'pino'
import { Registry } from 'prom-client'
import { buildConfig } from '../../src/config/load-config.ts'
import type { Backend, Endpoint, EndpointService } from '../../src/control/model.ts'
import { disabledAccessLog, type AccessLog } from '../../src/dataplane/access-log.ts'
import { EndpointRuntime } from '../../src/dataplane/endpoint-runtime.ts'
import { createUdpListener, type UdpListener } from '../../src/dataplane/udp-proxy.ts'
import { ServiceBalancer } from '../../src/dataplane/upstream/balancer.ts'
import { UpstreamState } from '../../src/dataplane/upstream/upstream-state.ts'
import { createMetrics, type Metrics } from '../../src/metrics/metrics.ts'

export interface Teardown { teardown: (fn: () => unknown) => void }

export const ENDPOINT_ID = 'vpce-0000000000a1'
export const SERVICE_ID = 'vpcesvc-0000000000b1'

/** A free UDP port on `ip` (each test uses its own 127.22.x.y address, so nothing else takes it). */
export async function freePort (ip: string): Promise<number> {
  const s = createSocket(isIPv6(ip) ? 'udp6' : 'udp4')
  s.bind(0, ip)
  await once(s, 'listening')
  const port = s.address().port
  await new Promise<void>((resolve) => s.close(() => { resolve() }))
  return port
}

export interface UdpBackend {
  readonly id: string
  readonly socket: Socket
  readonly address: string
  readonly port: number
  /** Datagrams received. */
  received: number
  /** Source ports seen (one per proxy flow). */
  readonly sources: Set<number>
}

/**
 * A UDP echo backend. With `tag`, a reply is `tag|payload`; otherwise the payload as it came.
 * `onDatagram`, when given, sees every datagram before the echo.
 */
export async function udpBackend (t: Teardown, address: string, port: number, options: {
  id?: string
  tag?: boolean
  onDatagram?: (msg: Buffer, rinfo: RemoteInfo) => void
} = {}): Promise<UdpBackend> {
  const socket = createSocket(isIPv6(address) ? 'udp6' : 'udp4')
  socket.on('error', () => {})
  t.teardown(() => new Promise<void>((resolve) => { try { socket.close(() => { resolve() }) } catch { resolve() } }))
  socket.bind(port, address)
  await once(socket, 'listening')
  roomyBuffers(socket)
  const backend: UdpBackend = {
    id: options.id ?? 'be-00000000',
    socket,
    address,
    port: socket.address().port,
    received: 0,
    sources: new Set()
  }
  const prefix = Buffer.from(`${backend.id}|`)
  socket.on('message', (msg, rinfo) => {
    backend.received++
    backend.sources.add(rinfo.port)
    options.onDatagram?.(msg, rinfo)
    socket.send(options.tag === true ? Buffer.concat([prefix, msg]) : msg, rinfo.port, rinfo.address)
  })
  return backend
}

export interface Harness {
  readonly listener: UdpListener
  readonly runtime: EndpointRuntime
  readonly upstream: UpstreamState
  readonly metrics: Metrics
  readonly ip: string
  readonly port: number
  readonly service: EndpointService
}

export interface HarnessOptions {
  /** The endpoint's IP (the listener binds here). */
  ip: string
  servicePort: number
  backends: Array<Partial<Backend> & { address: string }>
  limits?: Record<string, number>
  allowedSources?: string[]
  accessLog?: AccessLog
  zone?: string
}

/** An accepted endpoint with one UDP port mapping, its runtime, and a listening UDP listener. */
export async function udpEndpoint (t: Teardown, options: HarnessOptions): Promise<Harness> {
  const config = buildConfig({ limits: options.limits ?? {} })
  const terminalPort = await freePort(options.ip)
  const zone = options.zone ?? 'zone-a'
  const createdAt = new Date().toISOString()
  const service: EndpointService = {
    id: SERVICE_ID,
    serviceName: `local-1.${SERVICE_ID}`,
    ownerAccountId: '100000000001',
    status: 'available',
    acceptanceRequired: false,
    sameZonePreferred: true,
    portMappings: [{ protocol: 'UDP', servicePort: options.servicePort, terminalPort }],
    backends: options.backends.map((b, i) => ({
      id: b.id ?? `be-0000000${i}`,
      address: b.address,
      zone: b.zone ?? zone,
      weight: b.weight ?? 100
    })),
    healthCheck: {
      enabled: false,
      protocol: 'TCP',
      path: '/',
      intervalSeconds: 2,
      timeoutSeconds: 1,
      healthyThreshold: 2,
      unhealthyThreshold: 3
    },
    allowedAccounts: [],
    createdAt
  }
  const endpoint: Endpoint = {
    id: ENDPOINT_ID,
    serviceId: SERVICE_ID,
    serviceName: service.serviceName,
    ownerAccountId: '100000000002',
    subnetId: 'subnet-a',
    zone,
    ip: options.ip,
    privateDns: false,
    allowedSources: options.allowedSources ?? ['0.0.0.0/0', '::/0'],
    status: 'accepted',
    dnsNames: [],
    createdAt
  }
  const metrics = createMetrics(new Registry(), { defaultMetrics: false })
  const upstream = new UpstreamState()
  const runtime = new EndpointRuntime(endpoint, service, new ServiceBalancer(service, upstream), metrics)
  const mapping = service.portMappings[0]
  if (mapping === undefined) throw new Error('no mapping')
  const listener = createUdpListener({
    runtime,
    mapping,
    limits: config.limits,
    metrics,
    logger: pino({ level: 'silent' }),
    upstream,
    accessLog: options.accessLog ?? disabledAccessLog
  }) as UdpListener
  await listener.listen()
  t.teardown(() => listener.close())
  return { listener, runtime, upstream, metrics, ip: options.ip, port: terminalPort, service }
}

/** A client socket bound on `address` (port 0). */
export async function udpClient (t: Teardown, address: string): Promise<Socket> {
  const socket = createSocket(isIPv6(address) ? 'udp6' : 'udp4')
  socket.on('error', () => {})
  t.teardown(() => new Promise<void>((resolve) => { try { socket.close(() => { resolve() }) } catch { resolve() } }))
  socket.bind(0, address)
  await once(socket, 'listening')
  roomyBuffers(socket)
  return socket
}

/** Room for a few hundred datagrams in flight (Linux caps it at net.core.rmem_max, doubled). */
function roomyBuffers (socket: Socket): void {
  try {
    socket.setRecvBufferSize(1 << 20)
    socket.setSendBufferSize(1 << 20)
  } catch {}
}

/** Send one datagram and wait for the next one back (null after `timeoutMs`). */
export async function request (client: Socket, h: { ip: string, port: number }, payload: Buffer | string, timeoutMs = 1000): Promise<{ msg: Buffer, rinfo: RemoteInfo } | null> {
  const reply = once(client, 'message', { signal: AbortSignal.timeout(timeoutMs) })
  client.send(typeof payload === 'string' ? Buffer.from(payload) : payload, h.port, h.ip)
  try {
    const [msg, rinfo] = await reply as [Buffer, RemoteInfo]
    return { msg, rinfo }
  } catch (err) {
    if ((err as Error).name === 'AbortError') return null
    throw err
  }
}

/** The value of a counter or gauge series with exactly these labels (0 when absent). */
export async function metricValue (metric: { get: () => Promise<{ values: Array<{ value: number, labels: object }> }> | { values: Array<{ value: number, labels: object }> } }, labels: Record<string, string>): Promise<number> {
  const { values } = await metric.get()
  for (const v of values) {
    const l = v.labels as Record<string, string | number>
    if (Object.entries(labels).every(([k, want]) => String(l[k]) === want)) return v.value
  }
  return 0
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
