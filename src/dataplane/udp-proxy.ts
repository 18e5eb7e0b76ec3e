// The UDP listener of one (accepted endpoint, UDP port mapping), SPEC §5 "UDP".
//
// One dgram socket is bound on `endpoint.ip:terminalPort`. A flow is one client address:port;
// its first datagram passes the source check and the endpoint's connection limit, picks a
// backend, and opens the flow's own socket *connected* to `backend:servicePort`. Connecting it
// (as nginx's ngx_stream_proxy_module does) gives two things: replies are matched to their flow
// by the socket they arrive on, and the kernel reports the backend's ICMP port-unreachable as
// ECONNREFUSED on that socket (Linux ip(7), IP_RECVERR: without it only connected sockets get them).
// Replies go back to the client from the listener socket, so the client sees them come from
// the address it sent to. Datagrams are forwarded one to one: boundaries, empty datagrams and
// large ones are kept as they are.
//
// Hot path (STYLE habit 10): per datagram, one flow lookup without string keys
// (udp-flow-table.ts), a few number updates and one send; no closures, no timers, no JSON.
// Node's dgram resolves the destination of every unconnected `send` through `lookup`, which is
// `dns.lookup` by default: for an IP literal that is one process.nextTick per datagram. Both
// sides here only ever send to IP literals, so a synchronous identity lookup is given instead.
import { createSocket, type RemoteInfo, type Socket, type SocketOptions } from 'node:dgram'
import { isIPv6 } from 'node:net'
import type { Logger } from 'pino'
import type { Backend } from '../control/model.ts'
import type { Metrics } from '../metrics/metrics.ts'
import type { AccessLog } from './access-log.ts'
import type { EndpointRuntime, ProtocolStats } from './endpoint-runtime.ts'
import type { CloseReason, ListenerContext, ListenerFactory, ProxyListener } from './listener.ts'
import { LogLimiter, classifySocketError } from './socket-errors.ts'
import type { Peer } from './upstream/balancer.ts'
import type { UpstreamState } from './upstream/upstream-state.ts'
import { UdpFlowTable, type FlowEntry } from './udp-flow-table.ts'
import { socketSharing } from './socket-sharing.ts'

/** Datagrams held per flow while its backend socket connects (a few microseconds); more are dropped. */
const MAX_PENDING = 64
/**
 * Socket buffers of the listener, which carries every flow of the mapping in both directions:
 * room for bursts (the kernel default, ~208 KiB, holds only ~150 small datagrams). Linux caps it
 * at net.core.rmem_max / wmem_max, as nginx's `listen ... rcvbuf=` is.
 */
const LISTENER_BUFFER_BYTES = 4 * 1024 * 1024
/**
 * After a backend answered a flow with ICMP unreachable, new flows avoid it for this long
 * (unless it is the only candidate): the client's retry goes elsewhere at once, before passive
 * health (3 consecutive failures) marks it unhealthy.
 */
const SUSPECT_MS = 2000

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string, family: number) => void
/** dgram's `lookup` for IP literals: answers synchronously (see the header comment). */
function literalLookup (address: string, family: unknown, callback: LookupCallback): void {
  callback(null, address, typeof family === 'number' ? family : isIPv6(address) ? 6 : 4)
}
const literal = literalLookup as unknown as NonNullable<SocketOptions['lookup']>

type Child<M extends { labels: (...args: never[]) => unknown }> = ReturnType<M['labels']>

class UdpFlow implements FlowEntry {
  readonly address: string
  readonly port: number
  key = -1
  seen = 0
  readonly peer: Peer
  readonly socket: Socket
  /** Datagrams received before the backend socket is connected; null once connected. */
  pending: Buffer[] | null = []
  bytesToBackend = 0
  bytesToClient = 0
  /** A reply has come back (passive health success recorded once per flow). */
  answered = false
  ended = false
  /** Ended for lack of descriptors or memory here (socket-errors.ts `local`), not the backend's fault. */
  local = false
  readonly startedAt = Date.now()

  constructor (address: string, port: number, peer: Peer, socket: Socket) {
    this.address = address
    this.port = port
    this.peer = peer
    this.socket = socket
  }
}

export class UdpListener implements ProxyListener {
  readonly #runtime: EndpointRuntime
  readonly #stats: ProtocolStats
  readonly #servicePort: number
  readonly #terminalPort: number
  readonly #limit: number
  readonly #logger: Logger
  readonly #upstream: UpstreamState
  readonly #accessLog: AccessLog
  readonly #metrics: Metrics
  readonly #flowsTotal: Child<Metrics['connectionsTotal']>
  /**
   * Keyed by the frozen Backend record (a zone change gives a new record, hence a new child), so
   * entries of removed backends go with their records instead of piling up.
   */
  readonly #backendFlows = new WeakMap<Backend, Child<Metrics['backendConnectionsTotal']>>()
  readonly #table: UdpFlowTable<UdpFlow>
  readonly #suspects = new Set<Peer>()
  #suspectsUntil = 0
  /** Descriptor shortages are logged at most once a second per listener. */
  readonly #troubleLog = new LogLimiter(1000)
  #socket: Socket | null = null
  #state: 'new' | 'binding' | 'listening' | 'closed' = 'new'
  #closed: Promise<void> | null = null

  constructor (ctx: ListenerContext) {
    this.#runtime = ctx.runtime
    this.#stats = ctx.runtime.udp
    this.#servicePort = ctx.mapping.servicePort
    this.#terminalPort = ctx.mapping.terminalPort
    this.#limit = ctx.limits.maxConnectionsPerEndpoint
    this.#logger = ctx.logger
    this.#upstream = ctx.upstream
    this.#accessLog = ctx.accessLog
    this.#metrics = ctx.metrics
    this.#flowsTotal = ctx.runtime.connectionsCounter('UDP', ctx.mapping.terminalPort)
    this.#table = new UdpFlowTable<UdpFlow>({
      idleTimeoutMs: ctx.limits.udpIdleTimeoutSeconds * 1000,
      onExpire: (flow) => { this.#end(flow, 'idle') }
    })
  }

  /** Live flows of this listener. */
  get flows (): number {
    return this.#table.size
  }

  /** The bound address (tests, logs); null before `listen` resolves and after close. */
  address (): { address: string, port: number } | null {
    if (this.#state !== 'listening' || this.#socket === null) return null
    const a = this.#socket.address()
    return { address: a.address, port: a.port }
  }

  listen (): Promise<void> {
    if (this.#state !== 'new') return Promise.reject(new Error(`UDP listener cannot listen: it is ${this.#state}`))
    this.#state = 'binding'
    const ip = this.#runtime.endpoint.ip
    const socket = createSocket({ type: isIPv6(ip) ? 'udp6' : 'udp4', lookup: literal, reusePort: socketSharing.reusePort })
    return new Promise<void>((resolve, reject) => {
      const onBindError = (err: Error): void => {
        if (this.#state === 'binding') this.#state = 'closed'
        try { socket.close() } catch {}
        reject(err)
      }
      socket.once('error', onBindError)
      socket.bind({ address: ip, port: this.#terminalPort, exclusive: true }, () => {
        socket.off('error', onBindError)
        socket.on('error', this.#onListenerError)
        if (this.#state !== 'binding') { // destroyed while binding
          try { socket.close() } catch {}
          resolve()
          return
        }
        this.#state = 'listening'
        this.#socket = socket
        try {
          socket.setRecvBufferSize(LISTENER_BUFFER_BYTES)
          socket.setSendBufferSize(LISTENER_BUFFER_BYTES)
        } catch {} // best effort: the kernel caps it at net.core.rmem_max / wmem_max anyway
        socket.on('message', this.#onClientDatagram)
        resolve()
      })
    })
  }

  destroy (reason: CloseReason): void {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    const socket = this.#socket
    this.#socket = null
    if (socket !== null) {
      socket.off('message', this.#onClientDatagram)
      this.#closed = new Promise((resolve) => {
        try {
          socket.close(resolve)
        } catch {
          resolve()
        }
      })
    }
    for (const flow of this.#table.drain()) this.#end(flow, reason)
  }

  /** UDP has nothing to drain: stop receiving, end the flows, resolve once the port is released. */
  close (): Promise<void> {
    this.destroy('shutdown')
    return this.#closed ?? Promise.resolve()
  }

  // ---- client side (hot path) ----

  readonly #onClientDatagram = (msg: Buffer, rinfo: RemoteInfo): void => {
    let flow = this.#table.get(rinfo.address, rinfo.port)
    if (flow === undefined) {
      flow = this.#open(rinfo.address, rinfo.port)
      if (flow === undefined) return
    } else {
      this.#table.touch(flow)
    }
    const n = msg.length
    flow.bytesToBackend += n
    this.#stats.bytesToBackend += n
    const pending = flow.pending
    if (pending === null) {
      flow.socket.send(msg)
    } else if (pending.length < MAX_PENDING) {
      pending.push(msg)
    }
  }

  /** A client's first datagram: admit it (SPEC §5 order: source, limit, budget, backend) and open its flow. */
  #open (address: string, port: number): UdpFlow | undefined {
    const runtime = this.#runtime
    if (!runtime.sourceAllowed(address)) {
      runtime.refused('source')
      return undefined
    }
    const refusal = runtime.admit(this.#limit)
    if (refusal !== null) {
      runtime.refused(refusal)
      return undefined
    }
    const peer = this.#pick()
    if (peer === undefined) {
      runtime.release()
      runtime.refused('no_backend')
      return undefined
    }
    const backend = peer.backend
    // The socket's descriptor is made at its implicit bind inside connect(): see below.
    const socket = createSocket({ type: isIPv6(backend.address) ? 'udp6' : 'udp4', lookup: literal })
    const flow = new UdpFlow(address, port, peer, socket)
    this.#table.add(flow)
    this.#stats.active++
    // One set of closures per flow, none per datagram.
    socket.on('error', (err: NodeJS.ErrnoException) => { this.#onBackendError(flow, err) })
    socket.on('message', (msg: Buffer) => { this.#onBackendDatagram(flow, msg) })
    socket.connect(this.#servicePort, backend.address, (err?: Error) => {
      if (err !== undefined && err !== null) {
        this.#onBackendError(flow, err as NodeJS.ErrnoException)
        return
      }
      const queued = flow.pending
      flow.pending = null
      if (flow.ended || queued === null) return
      for (const msg of queued) socket.send(msg)
    })
    if (flow.ended) {
      // No descriptor for the flow's socket (EMFILE at its implicit bind, reported synchronously):
      // refused, not a flow; the client's next datagram tries again.
      runtime.refused(flow.local ? 'overload' : 'connect_failed')
      return undefined
    }
    this.#flowsTotal.inc()
    this.#backendCounter(peer).inc()
    return flow
  }

  #pick (): Peer | undefined {
    const balancer = this.#runtime.balancer
    const zone = this.#runtime.zone
    if (this.#suspects.size > 0) {
      if (Date.now() >= this.#suspectsUntil) {
        this.#suspects.clear()
      } else {
        const peer = balancer.pick(zone, this.#suspects)
        if (peer !== undefined) return peer
      }
    }
    return balancer.pick(zone)
  }

  #backendCounter (peer: Peer): Child<Metrics['backendConnectionsTotal']> {
    const backend = peer.backend
    let child = this.#backendFlows.get(backend)
    if (child === undefined) {
      child = this.#metrics.backendConnectionsTotal.labels({ service_id: this.#runtime.service.id, backend_id: backend.id, zone: backend.zone })
      this.#backendFlows.set(backend, child)
    }
    return child
  }

  // ---- backend side ----

  #onBackendDatagram (flow: UdpFlow, msg: Buffer): void {
    const socket = this.#socket
    if (socket === null || flow.ended) return
    this.#table.touch(flow)
    const n = msg.length
    flow.bytesToClient += n
    this.#stats.bytesToClient += n
    if (!flow.answered) {
      flow.answered = true
      this.#upstream.connectSucceeded(flow.peer.health)
    }
    socket.send(msg, flow.port, flow.address)
  }

  #onBackendError (flow: UdpFlow, err: NodeJS.ErrnoException): void {
    if (flow.ended) return
    const code = err.code ?? ''
    const kind = classifySocketError(err)
    if (kind === 'backend') {
      // ICMP port/host unreachable (SPEC §5 passive health): a failed "connect" of this backend.
      this.#upstream.connectFailed(flow.peer.health, code === 'ECONNREFUSED' ? 'ICMP unreachable' : code)
      this.#suspects.add(flow.peer)
      this.#suspectsUntil = Date.now() + SUSPECT_MS
      this.#logger.debug({ endpointId: this.#runtime.id, backendId: flow.peer.backend.id, code }, 'UDP flow: backend unreachable')
      this.#end(flow, 'connect_failed')
    } else if (kind === 'local') {
      // Our shortage, not the backend's fault (SPEC §10): no passive failure; logged at most once a second.
      flow.local = true
      this.#troubleLog.run((suppressed) => {
        this.#logger.warn({ err, endpointId: this.#runtime.id, suppressed }, 'UDP flow: no socket for a new flow')
      })
      this.#end(flow, 'overload')
    } else {
      this.#logger.warn({ err, endpointId: this.#runtime.id, backendId: flow.peer.backend.id }, 'UDP flow: backend socket error')
      this.#end(flow, 'backend')
    }
  }

  readonly #onListenerError = (err: Error): void => {
    // Never fatal: a recv error on the listener affects one datagram, not the listener.
    this.#logger.warn({ err, endpointId: this.#runtime.id, terminalPort: this.#terminalPort }, 'UDP listener socket error')
  }

  #end (flow: UdpFlow, reason: CloseReason): void {
    if (flow.ended) return
    flow.ended = true
    flow.pending = null
    this.#table.delete(flow)
    try {
      flow.socket.close()
    } catch {} // already closed
    this.#runtime.release()
    this.#stats.active--
    if (this.#accessLog.enabled) {
      const backend = flow.peer.backend
      this.#accessLog.write({
        endpointId: this.#runtime.id,
        serviceId: this.#runtime.service.id,
        protocol: 'UDP',
        terminalPort: this.#terminalPort,
        client: isIPv6(flow.address) ? `[${flow.address}]:${flow.port}` : `${flow.address}:${flow.port}`,
        backendId: backend.id,
        backendAddress: backend.address,
        zone: backend.zone,
        bytesToBackend: flow.bytesToBackend,
        bytesToClient: flow.bytesToClient,
        durationMs: Date.now() - flow.startedAt,
        closeReason: reason
      })
    }
  }
}

export const createUdpListener: ListenerFactory = (ctx) => new UdpListener(ctx)
