// TCP listener of one (endpoint, port mapping): accept, admit (allowedSources, then
// maxConnectionsPerEndpoint), pick a backend, connect with failover, then splice bytes both ways
// (SPEC §5).
//
// The data path is a bare read → `write()` splice, as HAProxy's tcp mode does it in userspace:
// `write()` returning false pauses the reader, `drain` resumes it, so memory stays bounded by
// the streams' high-water marks whatever the peers' speeds. The socket event handlers are
// module-level functions shared by every pair; a chunk costs two additions and one write — no
// closures, no strings (STYLE habit 10).
//
// Backend → client (usually the heavy direction) reads through net's `onread` into a buffer per
// pair (512 bytes from Node's pool until a read fills it, then 32 KiB) instead of a fresh Buffer
// per chunk pushed through the Readable machinery: measured here +30% req/s and +40% bulk MiB/s
// over `data` events, and no garbage buffers for the GC. The buffer is reused only when the
// write to the client completed synchronously (`writableLength` back to 0); otherwise the queued
// write still points into it and the next read gets a new one.
// Client → backend uses `data` events: sockets accepted by net.Server cannot take `onread`.
//
// Half-close (RFC 9293 §3.6): both sockets allow half-open, a FIN from one side becomes `end()`
// on the other while the opposite direction keeps flowing; the pair is done when both sockets
// have closed.
//
// Connect timeouts: one timer per listener over a queue of attempts in flight, not a timer per
// backend socket (each cost a Timeout and a bound function, and a timer-list insert).
//
// Idle pairs (tcpIdleTimeoutSeconds): no socket timers, which Node refreshes on every read and
// write. Instead one sweep per listener compares each pair's byte counters, already kept for the
// access log, with what it saw last time: a pair whose counters have not moved for the idle
// period is closed, at most one sweep interval late.
//
// PROXY protocol (SPEC §13): when the service asks for it, the header is encoded at accept (the
// service's setting then is the one that counts, so a PATCH reaches new connections only) and
// written to the backend as soon as it connects, before the client is resumed, so no client byte
// can overtake it. The write is corked: the client's first chunk joins it in one writev (one
// segment, one read for the backend — as HAProxy sends the header with MSG_MORE), and a client
// that says nothing (server-first protocols: SMTP, MySQL) holds it back for one loop turn at most.
import { Socket, createServer, type Server } from 'node:net'
import { performance } from 'node:perf_hooks'
import type { Backend } from '../control/model.ts'
import type { Metrics, RefusalReason } from '../metrics/metrics.ts'
import type { ProtocolStats } from './endpoint-runtime.ts'
import type { CloseReason, ListenerContext, ListenerFactory, ProxyListener } from './listener.ts'
import { createProxyHeaderEncoder, sendsHeader, type ProxyHeaderEncoder } from './proxy-protocol.ts'
import { LogLimiter, isLocalTrouble, socketErrorReason } from './socket-errors.ts'
import type { Peer } from './upstream/balancer.ts'
import { socketSharing } from './socket-sharing.ts'

/** Connect attempts per client connection, the first included (SPEC §5). */
export const MAX_CONNECT_ATTEMPTS = 3
/** Backend read buffer per pair (HAProxy's tune.bufsize is 16 KiB; 32 KiB measured as fast as 64 KiB for bulk here). */
const READ_BUFFER_SIZE = 32 * 1024
/**
 * A pair's first backend read buffer, from Node's shared 8 KiB pool; the first read that fills
 * it moves the pair to READ_BUFFER_SIZE. Measured with 8,000 idle sessions: 10.9 KiB RSS per
 * session with a 32 KiB buffer each, 7.3 with 512 bytes, 8.5 with 2 KiB.
 */
const FIRST_READ_BUFFER_SIZE = 512
/** limits.tcpHalfCloseTimeoutSeconds when a caller's limits predate it (schemas.ts holds the default). */
const DEFAULT_HALF_CLOSE_SECONDS = 30
/** Longest gap between two idle sweeps; shorter idle timeouts sweep 4 times per period. */
const MAX_SWEEP_INTERVAL_MS = 1000

type Child<M extends { labels: (...args: never[]) => unknown }> = ReturnType<M['labels']>

const noop = (): void => {}

export const createTcpListener: ListenerFactory = (ctx) => new TcpListener(ctx)

class TcpListener implements ProxyListener {
  readonly ctx: ListenerContext
  readonly pairs = new Set<TcpPair>()
  readonly idleMs: number
  /** Idle limit once one side has sent its FIN (limits.tcpHalfCloseTimeoutSeconds, at most idleMs). */
  readonly halfClosedIdleMs: number
  readonly connectTimeoutMs: number
  readonly connections: Child<Metrics['connectionsTotal']>
  readonly connectDuration: Child<Metrics['backendConnectDuration']>
  /** Keyed by the frozen Backend record: a zone change gives a new record, hence a new child. */
  readonly #backendCounters = new WeakMap<Backend, Child<Metrics['backendConnectionsTotal']>>()
  readonly #server: Server
  readonly #sweepIntervalMs: number
  /** Descriptor shortages are logged at most once a second per listener. */
  readonly #troubleLog = new LogLimiter(1000)
  #sweeper: NodeJS.Timeout | null = null
  /**
   * Connect attempts in flight, oldest first: one timer per listener instead of a timer per
   * backend socket. The timeout is the same for every attempt, so the queue is ordered by
   * deadline. An attempt that connects or fails clears its pair from its slot (connectSettled),
   * so a finished pair is not held until its deadline; empty slots are skipped when reached.
   */
  #connecting: Array<TcpPair | number | null> = []
  #connectingHead = 0
  /** Slot number of `#connecting[0]`: slots are numbered for ever, the array is compacted. */
  #connectingBase = 0
  #connectTimer: NodeJS.Timeout | null = null
  #listening = false
  #closing = false
  #destroyed = false
  #closeWaiters: Array<() => void> = []
  /** PROXY header encoder for the service's current `proxyProtocol` (rebuilt when a PATCH changes it). */
  #proxyEncoder: ProxyHeaderEncoder | null = null
  /**
   * Pairs whose corked PROXY header waits for the client's first chunk: connected during this
   * loop turn (`#corkedNew`) or the previous one (`#corkedOld`). One immediate per listener, not
   * one per connection, flushes the old ones.
   */
  #corkedNew: TcpPair[] = []
  #corkedOld: TcpPair[] = []
  #corkImmediate: NodeJS.Immediate | null = null

  constructor (ctx: ListenerContext) {
    this.ctx = ctx
    const { runtime, mapping, metrics, limits } = ctx
    this.idleMs = Math.round(limits.tcpIdleTimeoutSeconds * 1000)
    this.halfClosedIdleMs = Math.min(this.idleMs, Math.round((limits.tcpHalfCloseTimeoutSeconds ?? DEFAULT_HALF_CLOSE_SECONDS) * 1000))
    this.connectTimeoutMs = limits.connectTimeoutMs
    this.#sweepIntervalMs = Math.max(10, Math.min(MAX_SWEEP_INTERVAL_MS, Math.floor(this.halfClosedIdleMs / 4)))
    this.connections = runtime.connectionsCounter('TCP', mapping.terminalPort)
    this.connectDuration = metrics.backendConnectDuration.labels({ service_id: runtime.service.id })
    // pauseOnConnect: nothing is read from the client before a backend is there to take it.
    this.#server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, this.#onConnection)
    this.#server.on('error', (err) => {
      // Bind errors reach listen()'s promise; later ones are accept errors. On EMFILE/ENFILE
      // libuv itself accepts and closes the waiting connections with a reserved descriptor and
      // reports only when that fails. Whatever reaches us: counted as overload when it is local
      // trouble, logged (rate-limited), and the listener stays open and keeps serving.
      if (!this.#listening) return
      if (isLocalTrouble(err)) ctx.runtime.refused('overload')
      this.localTrouble(err, 'tcp listener: accept failed')
    })
  }

  listen (): Promise<void> {
    const { runtime, mapping } = this.ctx
    return new Promise((resolve, reject) => {
      const server = this.#server
      const onError = (err: Error): void => {
        server.off('listening', onListening)
        reject(err)
      }
      const onListening = (): void => {
        server.off('error', onError)
        this.#listening = true
        // Destroyed while the bind was in flight: give the port back at once.
        if (this.#destroyed) server.close(noop)
        else this.#sweeper = setInterval(this.#sweep, this.#sweepIntervalMs).unref()
        resolve()
      }
      server.once('error', onError)
      server.once('listening', onListening)
      server.listen({ host: runtime.endpoint.ip, port: mapping.terminalPort, reusePort: socketSharing.reusePort })
    })
  }

  close (): Promise<void> {
    this.#stopAccepting()
    if (this.pairs.size === 0) {
      this.#stopTimers()
      return Promise.resolve()
    }
    return new Promise((resolve) => { this.#closeWaiters.push(resolve) })
  }

  destroy (reason: CloseReason): void {
    this.#destroyed = true
    this.#stopAccepting()
    this.#stopTimers()
    for (const pair of this.pairs) pair.destroy(reason)
  }

  backendCounter (backend: Backend): Child<Metrics['backendConnectionsTotal']> {
    let child = this.#backendCounters.get(backend)
    if (child === undefined) {
      child = this.ctx.metrics.backendConnectionsTotal.labels({
        service_id: this.ctx.runtime.service.id, backend_id: backend.id, zone: backend.zone
      })
      this.#backendCounters.set(backend, child)
    }
    return child
  }

  /** Log a local shortage (descriptors, memory...) at most once a second. */
  localTrouble (err: Error, msg: string): void {
    this.#troubleLog.run((suppressed) => {
      this.ctx.logger.warn({ err, suppressed }, msg)
    })
  }

  /**
   * Time out `pair`'s connect attempt number `attempt`, started at `startedAt`, after
   * connectTimeoutMs. Returns the slot to hand to connectSettled.
   */
  watchConnect (pair: TcpPair, attempt: number, startedAt: number): number {
    const slot = this.#connectingBase + this.#connecting.length
    this.#connecting.push(pair, attempt, startedAt + this.connectTimeoutMs)
    if (this.#connectTimer === null) this.#connectTimer = setTimeout(this.#expireConnects, this.connectTimeoutMs).unref()
    return slot
  }

  /** The attempt watched in `slot` is over: let go of its pair now rather than at its deadline. */
  connectSettled (slot: number, pair: TcpPair): void {
    const i = slot - this.#connectingBase
    if (i >= this.#connectingHead && i < this.#connecting.length && this.#connecting[i] === pair) this.#connecting[i] = null
  }

  readonly #expireConnects = (): void => {
    this.#connectTimer = null
    const queue = this.#connecting
    const now = performance.now()
    let head = this.#connectingHead
    while (head < queue.length) {
      const deadline = queue[head + 2] as number
      if (deadline > now) break
      const pair = queue[head] as TcpPair | null
      const attempt = queue[head + 1] as number
      head += 3
      if (pair !== null) pair.connectTimedOut(attempt)
    }
    if (head >= queue.length) {
      this.#connectingBase += this.#connecting.length
      this.#connecting = []
      head = 0
    } else if (head > 3 * 1024 && head * 2 > queue.length) {
      this.#connectingBase += head
      this.#connecting = queue.slice(head)
      head = 0
    }
    this.#connectingHead = head
    if (head < this.#connecting.length && this.#connectTimer === null && !this.#destroyed) {
      const next = (this.#connecting[head + 2] as number) - now
      this.#connectTimer = setTimeout(this.#expireConnects, Math.max(1, Math.ceil(next))).unref()
    }
  }

  /** The PROXY header for a client at `address`:`port` under the service's current setting; null: none. */
  proxyHeader (address: string, port: number | undefined): Buffer | null {
    const { runtime, mapping } = this.ctx
    const version = runtime.service.proxyProtocol
    if (!sendsHeader(version)) return null
    if (this.#proxyEncoder?.version !== version) {
      try {
        this.#proxyEncoder = createProxyHeaderEncoder(version, runtime.endpoint.ip, mapping.terminalPort, runtime.endpoint.id)
      } catch (err) { // an endpoint record the schema should have refused: no header, no connection
        this.ctx.logger.warn({ err, endpointId: runtime.endpoint.id }, 'cannot encode a PROXY header for this endpoint')
        return null
      }
    }
    return port === undefined ? null : this.#proxyEncoder.encode(address, port)
  }

  /** `pair` corked its PROXY header: uncork it by the end of the next loop turn if no client byte comes. */
  holdHeader (pair: TcpPair): void {
    this.#corkedNew.push(pair)
    this.#corkImmediate ??= setImmediate(this.#flushHeaders)
  }

  // Runs in the check phase. A pair connected in this turn's poll phase waits for the next poll
  // phase, where its client's waiting bytes are read (the client was resumed at connect).
  readonly #flushHeaders = (): void => {
    this.#corkImmediate = null
    const old = this.#corkedOld
    for (let i = 0; i < old.length; i++) (old[i] as TcpPair).flushHeader()
    old.length = 0
    this.#corkedOld = this.#corkedNew
    this.#corkedNew = old
    if (this.#corkedOld.length > 0) this.#corkImmediate = setImmediate(this.#flushHeaders)
  }

  pairFinished (pair: TcpPair): void {
    this.pairs.delete(pair)
    if (this.#closing && this.pairs.size === 0) {
      this.#stopTimers()
      const waiters = this.#closeWaiters
      this.#closeWaiters = []
      for (const resolve of waiters) resolve()
    }
  }

  readonly #sweep = (): void => {
    const now = performance.now()
    for (const pair of this.pairs) pair.checkIdle(now, this.idleMs, this.halfClosedIdleMs)
  }

  #stopTimers (): void {
    if (this.#sweeper !== null) clearInterval(this.#sweeper)
    this.#sweeper = null
    if (this.#connectTimer !== null) clearTimeout(this.#connectTimer)
    this.#connectTimer = null
    this.#connectingBase += this.#connecting.length
    this.#connecting = []
    this.#connectingHead = 0
    if (this.#corkImmediate !== null) clearImmediate(this.#corkImmediate)
    this.#corkImmediate = null
    for (const pair of this.#corkedOld) pair.flushHeader()
    for (const pair of this.#corkedNew) pair.flushHeader()
    this.#corkedOld = []
    this.#corkedNew = []
  }

  #stopAccepting (): void {
    if (this.#closing) return
    this.#closing = true
    // Closes the listening socket now (the port is free again); accepted sockets are ours to end.
    this.#server.close(noop)
  }

  readonly #onConnection = (socket: Socket): void => {
    socket.on('error', noop)
    const runtime = this.ctx.runtime
    if (this.#closing) {
      socket.destroy()
      return
    }
    // The peer's address costs a getpeername call: asked only when allowedSources or the access
    // log needs it.
    let address: string | undefined
    const proxyProtocol = sendsHeader(runtime.service.proxyProtocol)
    if (!runtime.allowsEverySource || this.ctx.accessLog.enabled || proxyProtocol) {
      address = socket.remoteAddress
      if (address === undefined) { // already gone
        socket.destroy()
        return
      }
      // Security-group semantics: a source outside allowedSources never reaches a backend.
      if (!runtime.sourceAllowed(address)) {
        this.#refuse(socket, address, 'source')
        return
      }
    }
    // Per-endpoint limit, then the process-wide budget (SPEC §10 "overload").
    const refusal = runtime.admit(this.ctx.limits.maxConnectionsPerEndpoint)
    if (refusal !== null) {
      this.#refuse(socket, address, refusal)
      return
    }
    let header: Buffer | null = null
    if (proxyProtocol) {
      header = this.proxyHeader(address as string, socket.remotePort)
      if (header === null) { // no usable peer address (already gone): nothing truthful to send
        runtime.release()
        socket.destroy()
        return
      }
    }
    const pair = new TcpPair(this, socket, address, header)
    this.pairs.add(pair)
    pair.connectNext()
  }

  #refuse (socket: Socket, address: string | undefined, reason: RefusalReason): void {
    socket.destroy()
    this.ctx.runtime.refused(reason)
    this.writeAccessLog(address, socket.remotePort, null, 0, 0, 0, reason)
  }

  writeAccessLog (address: string | undefined, port: number | undefined, peer: Peer | null, toBackend: number, toClient: number,
    durationMs: number, closeReason: CloseReason): void {
    const { accessLog, runtime, mapping } = this.ctx
    if (!accessLog.enabled) return
    accessLog.write({
      endpointId: runtime.id,
      serviceId: runtime.service.id,
      protocol: 'TCP',
      terminalPort: mapping.terminalPort,
      client: address === undefined ? '' : port === undefined ? address : address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`,
      backendId: peer?.backend.id ?? null,
      backendAddress: peer?.backend.address ?? null,
      zone: peer?.backend.zone ?? null,
      bytesToBackend: toBackend,
      bytesToClient: toClient,
      durationMs,
      closeReason
    })
  }
}

const CONNECTING = 0
const OPEN = 1
const DONE = 2

/** The pair a socket belongs to, so the event handlers below can be shared by every pair. */
const PAIR = Symbol('linkgate.tcpPair')
type PairSocket = Socket & { [PAIR]: TcpPair }

// One set of handlers for every socket of every pair (STYLE habit 10): EventEmitter and net's
// `onread` call them with `this` set to the socket, whose PAIR names the pair. Per-pair arrow
// functions cost ~56 bytes each, and a pair had 13 of them; an idle session should cost little
// more than its two sockets.
function onClientData (this: PairSocket, chunk: Buffer): void { this[PAIR].clientData(chunk) }
function onClientEnd (this: PairSocket): void { this[PAIR].clientEnd() }
function onClientDrain (this: PairSocket): void { this[PAIR].clientDrain() }
function onClientError (this: PairSocket): void { this[PAIR].clientError() }
function onClientClose (this: PairSocket, hadError: boolean): void { this[PAIR].clientClose(hadError) }
function onBackendConnect (this: PairSocket): void { this[PAIR].backendConnect() }
function onBackendRead (this: PairSocket, n: number, buffer: Uint8Array): boolean { return this[PAIR].backendRead(n, buffer) }
function onBackendEnd (this: PairSocket): void { this[PAIR].backendEnd() }
function onBackendDrain (this: PairSocket): void { this[PAIR].backendDrain() }
function onBackendError (this: PairSocket, err: NodeJS.ErrnoException): void { this[PAIR].backendError(this, err) }
function onBackendClose (this: PairSocket, hadError: boolean): void { this[PAIR].backendClose(this, hadError) }

/** One client connection and its backend connection. */
class TcpPair {
  readonly #listener: TcpListener
  readonly #stats: ProtocolStats
  readonly #client: Socket
  /** Only read when the access log needs it (it costs a getpeername call). */
  readonly #clientAddress: string | undefined
  readonly #clientPort: number | undefined
  readonly #startedAt: number
  #backend: Socket | null = null
  #peer: Peer | null = null
  #tried: Set<Peer> | null = null
  #attempts = 0
  #connectStartedAt = 0
  /** The listener's connect-timeout slot of the attempt in flight, -1 when none. */
  #connectSlot = -1
  #state = CONNECTING
  #admitted = false
  #clientEnded = false
  #backendEnded = false
  #clientClosed = false
  #backendClosed = true
  #reason: CloseReason | null = null
  #bytesToBackend = 0
  #bytesToClient = 0
  /** Bytes both ways at the last idle sweep, and when they last moved. */
  #idleMark = 0
  #activeAt = 0
  /** Where the backend socket reads into; null after a queued write took it. */
  #readBuffer: Buffer | null = null
  /** PROXY protocol header for the backend, written once it connects (SPEC §13); null: none. */
  readonly #proxyHeader: Buffer | null
  /** The header sits corked in the backend socket, waiting for the client's first chunk. */
  #headerCorked = false
  /** A read filled the small first buffer: from now on read into READ_BUFFER_SIZE. */
  #bulk = false
  /** net asks for the buffer of the next backend read when the socket is set up and after every read. */
  readonly #nextReadBuffer = (): Buffer => {
    // Idle and request/response pairs never outgrow the small buffer, which comes from Node's
    // shared pool: a 32 KiB buffer per pair would cost a resident page even while idle.
    this.#readBuffer ??= this.#bulk ? Buffer.allocUnsafeSlow(READ_BUFFER_SIZE) : Buffer.allocUnsafe(FIRST_READ_BUFFER_SIZE)
    return this.#readBuffer
  }

  constructor (listener: TcpListener, client: Socket, address: string | undefined, proxyHeader: Buffer | null) {
    this.#listener = listener
    this.#stats = listener.ctx.runtime.tcp
    this.#client = client
    this.#clientAddress = address
    this.#clientPort = address === undefined ? undefined : client.remotePort
    this.#proxyHeader = proxyHeader
    this.#startedAt = performance.now()
    ;(client as PairSocket)[PAIR] = this
    client.removeListener('error', noop)
    client.on('error', onClientError)
    client.on('close', onClientClose)
  }

  /** Pick the next candidate and connect to it; when none is left, reset the client. */
  connectNext (): void {
    const listener = this.#listener
    const { runtime, mapping } = listener.ctx
    const peer = runtime.balancer.pick(runtime.zone, this.#tried ?? undefined)
    if (peer === undefined) {
      this.#fail(this.#attempts === 0 ? 'no_backend' : 'connect_failed')
      return
    }
    this.#peer = peer
    this.#attempts++
    this.#connectStartedAt = performance.now()
    const backend = new Socket({
      allowHalfOpen: true, noDelay: true, onread: { buffer: this.#nextReadBuffer, callback: onBackendRead }
    }) as PairSocket
    backend[PAIR] = this
    this.#backend = backend
    this.#backendClosed = false
    backend.on('connect', onBackendConnect)
    backend.on('error', onBackendError)
    backend.on('close', onBackendClose)
    this.#connectSlot = listener.watchConnect(this, this.#attempts, this.#connectStartedAt)
    backend.connect({ host: peer.backend.address, port: mapping.servicePort })
  }

  /** The listener's connect deadline for `attempt` passed: fail it if it is still connecting. */
  connectTimedOut (attempt: number): void {
    if (this.#state === CONNECTING && this.#attempts === attempt && this.#backend !== null) this.#attemptFailed('timeout')
  }

  /**
   * Called by the listener's sweep: close the pair when no byte moved for `idleMs`, or for
   * `halfClosedIdleMs` once either side has sent its FIN — HAProxy's `timeout client-fin` /
   * `server-fin`: a peer that half-closed and then went silent (or vanished without a RST) must
   * not hold a connection and a descriptor pair for the whole idle timeout.
   */
  checkIdle (now: number, idleMs: number, halfClosedIdleMs: number): void {
    if (this.#state !== OPEN) return
    const total = this.#bytesToBackend + this.#bytesToClient
    if (total !== this.#idleMark) {
      this.#idleMark = total
      this.#activeAt = now
    } else if (now - this.#activeAt >= (this.#clientEnded || this.#backendEnded ? halfClosedIdleMs : idleMs)) {
      this.destroy('idle')
    }
  }

  /** End both sides now (listener removed, shutdown deadline). */
  destroy (reason: CloseReason): void {
    if (this.#state === DONE) return
    this.#reason = reason
    this.#client.destroy()
    this.#backend?.destroy()
  }

  // ---- connecting ----

  backendConnect (): void {
    const backend = this.#backend as Socket
    const client = this.#client
    const peer = this.#peer as Peer
    const listener = this.#listener
    const now = performance.now()
    this.#connectSettled()
    this.#state = OPEN
    this.#admitted = true
    this.#activeAt = now
    listener.ctx.upstream.connectSucceeded(peer.health)
    listener.connectDuration.observe((now - this.#connectStartedAt) / 1000)
    listener.backendCounter(peer.backend).inc()
    listener.connections.inc()
    this.#stats.active++
    backend.on('end', onBackendEnd)
    backend.on('drain', onBackendDrain)
    // First on the wire, before the client is resumed (the client socket was paused at accept).
    if (this.#proxyHeader !== null) {
      backend.cork()
      backend.write(this.#proxyHeader)
      this.#headerCorked = true
      listener.holdHeader(this)
    }
    client.on('data', onClientData)
    client.on('end', onClientEnd)
    client.on('drain', onClientDrain)
    client.resume()
  }

  #connectSettled (): void {
    if (this.#connectSlot < 0) return
    this.#listener.connectSettled(this.#connectSlot, this)
    this.#connectSlot = -1
  }

  /** `local`: the attempt failed for lack of descriptors, memory or local ports (socket-errors.ts). */
  #attemptFailed (reason: string, local?: Error): void {
    const backend = this.#backend as Socket
    const peer = this.#peer as Peer
    const listener = this.#listener
    const ctx = listener.ctx
    this.#connectSettled()
    backend.removeAllListeners()
    backend.on('error', noop)
    backend.destroy()
    this.#backend = null
    this.#backendClosed = true
    if (local === undefined) {
      ctx.upstream.connectFailed(peer.health, reason)
      ctx.logger.debug({ backendId: peer.backend.id, address: peer.backend.address, attempt: this.#attempts, reason },
        'backend connect failed')
    }
    if (this.#reason !== null) { // the pair was destroyed meanwhile
      this.#maybeFinish()
      return
    }
    if (local !== undefined) {
      // Our shortage, not the backend's fault (SPEC §10): no passive failure, and no failover,
      // which would only fail the same way; the client is reset and counted as overload.
      listener.localTrouble(local, 'tcp proxy: cannot open a backend connection')
      this.#fail('overload')
      return
    }
    if (this.#tried === null) this.#tried = new Set()
    this.#tried.add(peer)
    if (this.#attempts >= MAX_CONNECT_ATTEMPTS) this.#fail('connect_failed')
    else this.connectNext()
  }

  /** No backend could take the connection: reset the client (SPEC §5) and count it. */
  #fail (reason: 'no_backend' | 'connect_failed' | 'overload'): void {
    this.#reason = reason
    this.#listener.ctx.runtime.refused(reason)
    if (!this.#clientClosed) this.#client.resetAndDestroy()
    this.#maybeFinish()
  }

  backendError (socket: Socket, err: NodeJS.ErrnoException): void {
    if (socket !== this.#backend) return // a failed attempt's socket
    if (this.#state === CONNECTING) {
      if (isLocalTrouble(err)) this.#attemptFailed(socketErrorReason(err), err)
      else this.#attemptFailed(err.code ?? err.message)
    } else if (this.#reason === null) {
      this.#reason = 'reset'
    }
  }

  // ---- data path ----

  clientData (chunk: Buffer): void {
    const n = chunk.length
    this.#bytesToBackend += n
    this.#stats.bytesToBackend += n
    if (!(this.#backend as Socket).write(chunk)) this.#client.pause()
    if (this.#headerCorked) this.flushHeader() // one writev: PROXY header + first chunk
  }

  /** Send a corked PROXY header (with whatever client bytes joined it). */
  flushHeader (): void {
    if (!this.#headerCorked) return
    this.#headerCorked = false
    const backend = this.#backend
    if (backend !== null && !backend.destroyed) backend.uncork()
  }

  /** `n` bytes from the backend are in `buffer`; returning false stops reading until `resume()`. */
  backendRead (n: number, buffer: Uint8Array): boolean {
    this.#bytesToClient += n
    this.#stats.bytesToClient += n
    const client = this.#client
    const flowing = client.write((buffer as Buffer).subarray(0, n))
    if (client.writableLength !== 0) {
      this.#readBuffer = null // the queued write still points into it
    } else if (n === buffer.length && !this.#bulk) {
      this.#bulk = true
      this.#readBuffer = null
    }
    return flowing
  }

  backendDrain (): void {
    this.#client.resume()
  }

  clientDrain (): void {
    // On an `onread` socket, resume() restarts the reads that a false return stopped.
    (this.#backend as Socket).resume()
  }

  clientEnd (): void {
    this.#clientEnded = true
    if (this.#reason === null) this.#reason = 'client'
    ;(this.#backend as Socket).end()
  }

  backendEnd (): void {
    this.#backendEnded = true
    if (this.#reason === null) this.#reason = 'backend'
    this.#client.end()
  }

  // ---- teardown ----

  clientError (): void {
    if (this.#reason === null) this.#reason = 'reset'
  }

  clientClose (hadError: boolean): void {
    this.#clientClosed = true
    const backend = this.#backend
    if (backend !== null && !this.#backendClosed) {
      if (this.#state !== OPEN) {
        backend.destroy()
      } else if (!(this.#clientEnded && this.#backendEnded)) {
        // Not an orderly close of both directions: pass the abort on (a reset stays a reset).
        if (hadError) backend.resetAndDestroy()
        else backend.destroy()
      }
      // Else both FINs were seen: the backend closes once our FIN is flushed (the idle sweep
      // bounds that wait).
    }
    this.#maybeFinish()
  }

  backendClose (socket: Socket, hadError: boolean): void {
    if (socket !== this.#backend) return
    this.#backendClosed = true
    if (!this.#clientClosed && !(this.#clientEnded && this.#backendEnded)) {
      if (hadError) this.#client.resetAndDestroy()
      else this.#client.destroy()
    }
    this.#maybeFinish()
  }

  #maybeFinish (): void {
    if (!this.#clientClosed || !this.#backendClosed || this.#state === DONE) return
    this.#connectSettled()
    this.#state = DONE
    const listener = this.#listener
    listener.ctx.runtime.release()
    if (this.#admitted) this.#stats.active--
    // connect_failed names the backend tried last (review finding: the line had no backend at all).
    listener.writeAccessLog(this.#clientAddress, this.#clientPort, this.#admitted || this.#reason === 'connect_failed' ? this.#peer : null,
      this.#bytesToBackend, this.#bytesToClient, Math.round(performance.now() - this.#startedAt), this.#reason ?? 'client')
    listener.pairFinished(this)
  }
}

