// The embedded private DNS server (SPEC §6): UDP and TCP on `listen.dns`, the zone compiled
// from the store's state (records.ts) and updated name by name from its change events (only
// the names an event touches are recompiled, SPEC §11), answers from the pure
// answers.ts, names outside the suffix through the Forwarder.
//
// Why plain node:dgram / node:net and not dns2's UDPServer / TCPServer (STYLE "dns2 notes"):
// both decode every message into a Packet object with dns2's bit-at-a-time reader before
// emitting it, and encode replies the same way. The point of this server is the opposite: answer
// from the raw bytes with pre-encoded records (one hash lookup, one buffer copy), which the dns2
// servers cannot hand us. dns2's TCPServer also closes the connection on any undecodable message
// instead of answering FORMERR, and its combined server hangs on bind errors. Both sockets here
// are thin: framing, backpressure, idle timeout and socket tracking are the whole of it.
import dgram from 'node:dgram'
import net, { type AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import type { Store } from '../control/store.ts'
import type { Config } from '../control/schemas.ts'
import { parseHostPort } from '../control/validation.ts'
import type { Metrics } from '../metrics/metrics.ts'
import { answerQuery, createAnswer, errorResponse, qtypeName, rcodeName, RCODE, type Answer } from './answers.ts'
import { Forwarder } from './forwarder.ts'
import { FrameParts } from './frame-parts.ts'
import type { ChangeEvent } from '../control/model.ts'
import { endpointRecords, LiveZone, nextSerial, recordsOf, type DnsRecord, type DnsZone } from './records.ts'
import { socketSharing } from '../dataplane/socket-sharing.ts'

export interface DnsServerOptions {
  readonly config: Config
  readonly store: Store
  readonly metrics: Metrics
  readonly logger: Logger
  /** Idle TCP connections are closed after this long (RFC 7766 §6.2.3 suggests seconds). */
  readonly tcpIdleTimeoutMs?: number
  /** Per upstream (SPEC: 2 s). */
  readonly forwardTimeoutMs?: number
}

export interface DnsAddresses {
  readonly udp: AddressInfo
  readonly tcp: AddressInfo
}

const DEFAULT_TCP_IDLE_MS = 10_000
/** Open TCP connections at once; more are closed. 256 + the API's 256 fit in the 1,024 descriptors kept back by limits.maxConnections (SPEC §10). */
const MAX_TCP_CONNECTIONS = 256
/** Forwarded queries in flight per TCP connection before reading from it pauses. */
const MAX_TCP_INFLIGHT = 64
/** Attempts at getting the same port number for UDP and TCP when `listen.dns` asks for port 0. */
const SAME_PORT_ATTEMPTS = 8
/** Distinct numeric qtype labels before the rest are counted as `other` (bounded cardinality). */
const MAX_NUMERIC_QTYPE_LABELS = 32
const QTYPE_OTHER = -2
const UDP_RECV_BUFFER = 4 * 1024 * 1024

type CounterChild = ReturnType<Metrics['dnsQueriesTotal']['labels']>

/** Plain-number count of one (qtype, rcode), published to prom-client at scrape time (STYLE habit 10). */
class QueryCount {
  count = 0
  published = 0
  readonly child: CounterChild
  constructor (child: CounterChild) {
    this.child = child
  }
}

/**
 * dgram resolves the destination of every `send` through dns.lookup (a regexp, a tick), even for
 * the literal address a datagram came from. Replies only ever go to such literals, so the
 * lookup is the identity; the socket's family is all dgram needs back.
 */
function literalLookup (family: 4 | 6): dgram.SocketOptions['lookup'] {
  return ((address: string, _options: unknown, callback: (err: Error | null, address: string, family: number) => void) => {
    callback(null, address, family)
  }) as unknown as dgram.SocketOptions['lookup']
}

export class DnsServer {
  readonly #config: Config
  readonly #store: Store
  readonly #metrics: Metrics
  readonly #logger: Logger
  readonly #tcpIdleMs: number
  readonly #forwarder: Forwarder
  readonly #udpAnswer: Answer = createAnswer()
  readonly #tcpSessions = new Set<TcpSession>()
  readonly #counts = new Map<number, QueryCount>()
  readonly #numericQtypes = new Set<number>()
  #live: LiveZone
  #zone: DnsZone
  #serial: number
  #unsubscribe: (() => void) | undefined
  #udp: dgram.Socket | undefined
  #tcp: net.Server | undefined
  #unhookScrape: (() => void) | undefined
  #started = false
  #destroyed = false
  #closed: Promise<void> | undefined

  constructor (options: DnsServerOptions) {
    this.#config = options.config
    this.#store = options.store
    this.#metrics = options.metrics
    this.#logger = options.logger
    this.#tcpIdleMs = options.tcpIdleTimeoutMs ?? DEFAULT_TCP_IDLE_MS
    this.#forwarder = new Forwarder({
      upstreams: this.#config.dns.upstreams,
      logger: this.#logger,
      timeoutMs: options.forwardTimeoutMs ?? 2000
    })
    this.#serial = nextSerial(0)
    this.#live = this.#compile()
    this.#zone = this.#live.zone
  }

  /** The zone answering right now (for logs and tests). */
  get zone (): DnsZone {
    return this.#zone
  }

  /** Open DNS-over-TCP connections. */
  get tcpConnections (): number {
    return this.#tcpSessions.size
  }

  /** Bind UDP, then TCP on the same port (see SAME_PORT_ATTEMPTS), and start following the store. */
  async start (): Promise<DnsAddresses> {
    if (this.#started) throw new Error('DnsServer.start() may be called once')
    this.#started = true
    const listen = parseHostPort(this.#config.listen.dns)
    if (listen === undefined) throw new RangeError(`listen.dns: ${this.#config.listen.dns} is not host:port`)
    const { udp, tcp } = await this.#bind(listen.host, listen.port)
    if (this.#destroyed) {
      udp.close()
      tcp.close()
      throw new Error('DnsServer closed while starting')
    }
    this.#udp = udp
    this.#tcp = tcp
    // A change may have landed between the constructor and now: compile again, and follow the
    // store from this very state on (both synchronous, so no change slips in between).
    this.#live = this.#compile()
    this.#zone = this.#live.zone
    this.#unsubscribe = this.#store.subscribe(this.#onChange)
    this.#unhookScrape = this.#metrics.beforeScrape(this.#publish)
    const addresses = { udp: udp.address(), tcp: tcp.address() as AddressInfo }
    this.#logger.info({ udp: addresses.udp, tcp: addresses.tcp, suffix: this.#zone.suffix, records: this.#zone.records.length },
      'dns server listening')
    return addresses
  }

  /** Stop at once: both sockets closed, every TCP connection destroyed. Safe to call twice. */
  destroy (): void {
    if (this.#destroyed) return
    this.#destroyed = true
    this.#unsubscribe?.()
    this.#forwarder.close()
    for (const session of this.#tcpSessions) session.destroy()
    this.#tcpSessions.clear()
    this.#publish()
    this.#unhookScrape?.()
    const waits: Array<Promise<void>> = []
    const udp = this.#udp
    if (udp !== undefined) waits.push(new Promise((resolve) => udp.close(() => resolve())))
    const tcp = this.#tcp
    if (tcp !== undefined) waits.push(new Promise((resolve) => tcp.close(() => resolve())))
    this.#closed = Promise.all(waits).then(() => undefined)
  }

  /** DNS has nothing to drain: close() is destroy() plus waiting for the sockets to be closed. */
  close (): Promise<void> {
    this.destroy()
    return this.#closed ?? Promise.resolve()
  }

  // ---- binding ----

  async #bind (host: string, port: number): Promise<{ udp: dgram.Socket, tcp: net.Server }> {
    const attempts = port === 0 ? SAME_PORT_ATTEMPTS : 1
    for (let attempt = 1; attempt <= attempts; attempt++) {
      const udp = await this.#bindUdp(host, port)
      const udpPort = udp.address().port
      try {
        return { udp, tcp: await this.#listenTcp(host, udpPort) }
      } catch (err) {
        udp.close()
        const code = (err as NodeJS.ErrnoException).code
        if (port !== 0 || code !== 'EADDRINUSE') throw bindError(this.#config.listen.dns, 'TCP', err)
        this.#logger.debug({ port: udpPort, attempt }, 'dns: UDP port taken over TCP, trying another')
      }
    }
    // Port 0 and no common free port found: UDP and TCP on different ports (start() reports both).
    const udp = await this.#bindUdp(host, 0)
    try {
      const tcp = await this.#listenTcp(host, 0)
      this.#logger.warn({ udp: udp.address().port, tcp: (tcp.address() as AddressInfo).port },
        'dns: UDP and TCP listen on different ports')
      return { udp, tcp }
    } catch (err) {
      udp.close()
      throw bindError(this.#config.listen.dns, 'TCP', err)
    }
  }

  #bindUdp (host: string, port: number): Promise<dgram.Socket> {
    return new Promise((resolve, reject) => {
      const v6 = net.isIPv6(host)
      const socket = dgram.createSocket({ type: v6 ? 'udp6' : 'udp4', lookup: literalLookup(v6 ? 6 : 4), reusePort: socketSharing.reusePort })
      const onError = (err: Error): void => {
        try {
          socket.close()
        } catch {}
        reject(bindError(this.#config.listen.dns, 'UDP', err))
      }
      socket.once('error', onError)
      socket.bind({ address: host, port, exclusive: true }, () => {
        socket.off('error', onError)
        socket.on('error', (err) => {
          this.#logger.warn({ err }, 'dns udp socket error')
        })
        socket.on('message', this.#onUdpMessage)
        try {
          socket.setRecvBufferSize(UDP_RECV_BUFFER)
        } catch {}
        resolve(socket)
      })
    })
  }

  #listenTcp (host: string, port: number): Promise<net.Server> {
    return new Promise((resolve, reject) => {
      // allowHalfOpen: a client that sends its query and half-closes still gets the answer.
      const server = net.createServer({ allowHalfOpen: true, noDelay: true })
      const onError = (err: Error): void => {
        server.close()
        reject(err)
      }
      server.once('error', onError)
      server.listen({ host, port, exclusive: true, reusePort: socketSharing.reusePort }, () => {
        server.off('error', onError)
        server.on('error', (err) => {
          this.#logger.warn({ err }, 'dns tcp server error')
        })
        server.on('connection', this.#onTcpConnection)
        resolve(server)
      })
    })
  }

  // ---- records ----

  readonly #onChange = (events: readonly ChangeEvent[]): void => {
    if (this.#destroyed) return
    const removed: DnsRecord[] = []
    const added: DnsRecord[] = []
    for (const event of events) {
      if (event.kind !== 'endpoint') continue
      const before = recordsOf(event.before, this.#config)
      const after = recordsOf(event.after, this.#config)
      if (sameRecords(before, after)) continue
      removed.push(...before)
      added.push(...after)
    }
    if (removed.length === 0 && added.length === 0) return
    try {
      const serial = nextSerial(this.#serial)
      this.#zone = this.#live.update(removed, added, serial)
      this.#serial = serial
      this.#logger.debug({ removed: removed.length, added: added.length, serial }, 'dns zone updated')
    } catch (err) {
      // Keep answering rather than die on a record we cannot encode.
      this.#logger.error({ err }, 'dns zone update failed')
    }
  }

  /** The whole zone from the store's state (at construction and start only). */
  #compile (): LiveZone {
    const live = new LiveZone(this.#config, {
      onSkip: (record, reason) => {
        this.#logger.warn({ name: record.name, address: record.address, reason }, 'dns record not published')
      }
    })
    live.update([], endpointRecords(this.#store.state, this.#config), this.#serial)
    return live
  }

  // ---- metrics ----

  #count (qtype: number, rcode: number): void {
    let entry = this.#counts.get(qtype * 32 + rcode)
    if (entry === undefined) entry = this.#newCount(qtype, rcode)
    entry.count++
  }

  #newCount (qtype: number, rcode: number): QueryCount {
    let label = qtypeName(qtype)
    if (qtype >= 0 && label === String(qtype) && !this.#numericQtypes.has(qtype)) {
      if (this.#numericQtypes.size >= MAX_NUMERIC_QTYPE_LABELS) {
        const other = this.#counts.get(QTYPE_OTHER * 32 + rcode)
        if (other !== undefined) return other
        qtype = QTYPE_OTHER
        label = 'other'
      } else {
        this.#numericQtypes.add(qtype)
      }
    }
    const entry = new QueryCount(this.#metrics.dnsQueriesTotal.labels({ qtype: label, rcode: rcodeName(rcode) }))
    this.#counts.set(qtype * 32 + rcode, entry)
    return entry
  }

  readonly #publish = (): void => {
    for (const entry of this.#counts.values()) {
      if (entry.count !== entry.published) {
        entry.child.inc(entry.count - entry.published)
        entry.published = entry.count
      }
    }
  }

  // ---- UDP ----

  readonly #onUdpMessage = (msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    const udp = this.#udp
    if (udp === undefined) return
    const answer = answerQuery(msg, this.#zone, 'udp', this.#udpAnswer)
    if (answer.action === 'reply') {
      // No callback: a failed send is not retried (the client will), and dgram then reports nothing.
      udp.send(answer.response as Buffer, rinfo.port, rinfo.address)
      this.#count(answer.qtype, answer.rcode)
    } else if (answer.action === 'forward') {
      this.#forwardUdp(msg, answer.questionEnd, answer.qtype, rinfo.port, rinfo.address)
    }
  }

  #forwardUdp (query: Buffer, questionEnd: number, qtype: number, port: number, address: string): void {
    this.#forwarder.forward(query, questionEnd, false).then((upstream) => {
      const udp = this.#udp
      if (this.#destroyed || udp === undefined) return
      const response = upstream ?? errorResponse(query, questionEnd, RCODE.SERVFAIL, this.#zone, 'udp')
      this.#count(qtype, (response[3] as number) & 0x0f)
      udp.send(response, port, address)
    }).catch((err: unknown) => {
      this.#logger.error({ err }, 'dns forward failed')
    })
  }

  /** For TCP sessions: answer one framed message's payload. */
  answerTcp (msg: Buffer, out: Answer): Answer {
    return answerQuery(msg, this.#zone, 'tcp', out)
  }

  /** For TCP sessions: the upstream's answer, framed, or a framed SERVFAIL. */
  async forwardTcp (query: Buffer, questionEnd: number, qtype: number): Promise<Buffer> {
    const upstream = await this.#forwarder.forward(query, questionEnd, true)
    if (upstream === undefined) {
      this.#count(qtype, RCODE.SERVFAIL)
      return errorResponse(query, questionEnd, RCODE.SERVFAIL, this.#zone, 'tcp')
    }
    this.#count(qtype, (upstream[3] as number) & 0x0f)
    const frame = Buffer.allocUnsafe(upstream.length + 2)
    frame.writeUInt16BE(upstream.length, 0)
    upstream.copy(frame, 2)
    return frame
  }

  countAnswer (qtype: number, rcode: number): void {
    this.#count(qtype, rcode)
  }

  get tcpIdleMs (): number {
    return this.#tcpIdleMs
  }

  get logger (): Logger {
    return this.#logger
  }

  // ---- TCP ----

  readonly #onTcpConnection = (socket: net.Socket): void => {
    if (this.#destroyed) {
      socket.destroy()
      return
    }
    // At the bound, the least recently active connection with no query in flight makes room
    // (as the control API does): a few hundred sockets that trickle a byte now and then cannot
    // lock real clients out. Sessions move to the end of the set on every complete query.
    if (this.#tcpSessions.size >= MAX_TCP_CONNECTIONS) {
      let evicted = false
      for (const old of this.#tcpSessions) {
        if (!old.idle) continue
        this.#tcpSessions.delete(old)
        old.destroy()
        evicted = true
        break
      }
      if (!evicted) {
        socket.destroy()
        return
      }
    }
    const session: TcpSession = new TcpSession(socket, this, () => this.#tcpSessions.delete(session),
      () => {
        if (!this.#tcpSessions.delete(session)) return
        this.#tcpSessions.add(session)
      })
    this.#tcpSessions.add(session)
  }
}

function bindError (listen: string, protocol: 'UDP' | 'TCP', err: unknown): Error {
  const cause = err as NodeJS.ErrnoException
  if (cause.message?.startsWith('listen.dns')) return cause
  const out = new Error(`listen.dns ${listen}: cannot bind ${protocol}: ${cause.code ?? cause.message}`, { cause })
  return Object.assign(out, { code: cause.code })
}

/**
 * One DNS-over-TCP connection (RFC 7766): 2-byte length framing (RFC 1035 §4.2.2), any number of
 * queries, answered in order for local names and as they come back for forwarded ones (§6.2.1.1
 * allows out of order). Reading pauses while the client does not read its answers or too many
 * forwards are in flight; idle connections close. A message that cannot be answered (no full
 * header, or a response) is skipped: the length prefix keeps the framing, so the next one is fine.
 */
class TcpSession {
  readonly #socket: net.Socket
  readonly #server: DnsServer
  readonly #onGone: () => void
  readonly #onActive: () => void
  readonly #answer: Answer = createAnswer()
  /** Bytes of an incomplete message, as received: joined once the whole message is there. */
  readonly #partial = new FrameParts()
  #inflight = 0
  #peerEnded = false
  #gone = false

  constructor (socket: net.Socket, server: DnsServer, onGone: () => void, onActive: () => void) {
    this.#socket = socket
    this.#server = server
    this.#onGone = onGone
    this.#onActive = onActive
    socket.setTimeout(server.tcpIdleMs)
    socket.on('data', this.#onData)
    socket.on('drain', this.#flow)
    socket.on('end', this.#onEnd)
    socket.on('timeout', this.destroy)
    socket.on('error', this.#onError)
    socket.on('close', this.#onClose)
  }

  readonly destroy = (): void => {
    this.#socket.destroy()
  }

  /** No query of this connection waits for an answer: it may be closed to make room. */
  get idle (): boolean {
    return this.#inflight === 0
  }

  readonly #onError = (err: Error): void => {
    this.#server.logger.debug({ err }, 'dns tcp connection error')
  }

  readonly #onClose = (): void => {
    if (this.#gone) return
    this.#gone = true
    this.#partial.clear()
    this.#onGone()
  }

  readonly #onEnd = (): void => {
    this.#peerEnded = true
    this.#partial.clear()
    if (this.#inflight === 0) this.#socket.end()
  }

  readonly #flow = (): void => {
    const socket = this.#socket
    if (this.#gone) return
    if (socket.writableNeedDrain || this.#inflight >= MAX_TCP_INFLIGHT) socket.pause()
    else if (socket.isPaused()) socket.resume()
  }

  readonly #onData = (chunk: Buffer): void => {
    // A message trickled in small chunks is copied once, when complete, not on every chunk.
    const buf = this.#partial.add(chunk)
    if (buf === undefined) return
    let p = 0
    while (buf.length - p >= 2) {
      const size = buf.readUInt16BE(p)
      if (buf.length - p - 2 < size) break
      this.#handle(buf.subarray(p + 2, p + 2 + size))
      p += 2 + size
    }
    if (p < buf.length) this.#partial.keep(buf.subarray(p))
    if (p > 0) this.#onActive()
    this.#flow()
  }

  #handle (msg: Buffer): void {
    const answer = this.#server.answerTcp(msg, this.#answer)
    if (answer.action === 'reply') {
      this.#socket.write(answer.response as Buffer)
      this.#server.countAnswer(answer.qtype, answer.rcode)
    } else if (answer.action === 'forward') {
      this.#inflight++
      // The framed payload is a view of a chunk that nothing else writes to; the forwarder copies it.
      this.#server.forwardTcp(msg, answer.questionEnd, answer.qtype).then(this.#forwarded, this.#forwardFailed)
    }
    // 'drop' (no readable header, or a response): nothing to answer; the framing is intact, so go on.
  }

  readonly #forwarded = (frame: Buffer): void => {
    this.#inflight--
    if (this.#gone) return
    this.#socket.write(frame)
    this.#afterForward()
  }

  readonly #forwardFailed = (err: unknown): void => {
    this.#inflight--
    this.#server.logger.error({ err }, 'dns forward failed')
    this.#afterForward()
  }

  #afterForward (): void {
    if (this.#gone) return
    if (this.#peerEnded && this.#inflight === 0) this.#socket.end()
    else this.#flow()
  }
}

function sameRecords (x: readonly DnsRecord[], y: readonly DnsRecord[]): boolean {
  return x.length === y.length && x.every((r, i) => r.name === y[i]?.name && r.address === y[i]?.address)
}
