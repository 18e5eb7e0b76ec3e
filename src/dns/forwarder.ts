// Forwarding of names outside the private suffix to `dns.upstreams` (SPEC §6): each upstream in
// order, `timeoutMs` (2 s) each; the first real answer wins and goes back with the client's id.
// SERVFAIL and REFUSED count as "try the next one" (as dnsmasq does), and are returned only when no
// upstream does better. A TCP client whose UDP answer comes back truncated gets the answer over TCP.
//
// Queries leave from one shared UDP socket per address family, each with a fresh random id
// (RFC 5452 §9.2), and a reply is taken only from the upstream's address and port, with that id
// and the same question, so a stray or forged datagram cannot answer someone else's query.
import dgram from 'node:dgram'
import net from 'node:net'
import { randomFillSync } from 'node:crypto'
import type { Logger } from 'pino'
import ipaddr from 'ipaddr.js'
import { parseHostPort } from '../control/validation.ts'
import { FrameParts } from './frame-parts.ts'

const RCODE_SERVFAIL = 2
const RCODE_REFUSED = 5

interface Upstream {
  readonly host: string
  readonly port: number
  readonly family: 4 | 6
  readonly label: string
}

interface Pending {
  readonly upstream: Upstream
  readonly query: Buffer
  readonly questionEnd: number
  readonly resolve: (response: Buffer | undefined) => void
  readonly timer: NodeJS.Timeout
}

export interface ForwarderOptions {
  readonly upstreams: readonly string[]
  readonly logger: Logger
  /** Per upstream and attempt. */
  readonly timeoutMs?: number
  /** Queries in flight at once; past it a query fails at once (SERVFAIL) instead of queueing. */
  readonly maxPending?: number
}

/** Same question section (the name compared ASCII case-insensitively: 0x20 randomisation). */
function sameQuestion (query: Buffer, response: Buffer, questionEnd: number): boolean {
  if (response.length < questionEnd || response.readUInt16BE(4) !== 1) return false
  for (let i = 12; i < questionEnd; i++) {
    let a = query[i] as number
    let b = response[i] as number
    if (a >= 0x41 && a <= 0x5a) a |= 0x20
    if (b >= 0x41 && b <= 0x5a) b |= 0x20
    if (a !== b) return false
  }
  return true
}

/** Whether `response` answers `query`: a response with the same id and question (or, for an error, none). */
function answers (query: Buffer, questionEnd: number, response: Buffer): boolean {
  if (response.length < 12 || ((response[2] as number) & 0x80) === 0) return false
  if (response.readUInt16BE(0) !== query.readUInt16BE(0)) return false
  if (sameQuestion(query, response, questionEnd)) return true
  // FORMERR and friends may come back without a question section (RFC 6891 §7).
  return response.readUInt16BE(4) === 0 && ((response[3] as number) & 0x0f) !== 0
}

export class Forwarder {
  readonly #upstreams: readonly Upstream[]
  readonly #logger: Logger
  readonly #timeoutMs: number
  readonly #maxPending: number
  readonly #pending = new Map<number, Pending>()
  readonly #sockets = new Map<4 | 6, dgram.Socket>()
  readonly #tcpSockets = new Set<net.Socket>()
  readonly #ids = new Uint16Array(1024)
  #nextId = this.#ids.length
  #closed = false

  constructor (options: ForwarderOptions) {
    this.#logger = options.logger
    this.#timeoutMs = options.timeoutMs ?? 2000
    this.#maxPending = options.maxPending ?? 2048
    this.#upstreams = options.upstreams.map((text) => {
      const hp = parseHostPort(text)
      if (hp === undefined) throw new RangeError(`dns.upstreams: ${JSON.stringify(text)} is not host:port`)
      // Normalised so that it compares equal to the source address of its replies.
      return { host: ipaddr.parse(hp.host).toString(), port: hp.port, family: net.isIPv6(hp.host) ? 6 : 4, label: text }
    })
  }

  get upstreamCount (): number {
    return this.#upstreams.length
  }

  /** Queries in flight: over UDP, and the TCP fallbacks of truncated answers. */
  get #inflight (): number {
    return this.#pending.size + this.#tcpSockets.size
  }

  /** The upstream's answer with the client's id, or undefined when none answered in time. */
  async forward (query: Buffer, questionEnd: number, viaTcp: boolean): Promise<Buffer | undefined> {
    if (this.#closed || this.#inflight >= this.#maxPending) return undefined
    const clientId = query.readUInt16BE(0)
    const own = Buffer.from(query)
    let fallback: Buffer | undefined
    for (const upstream of this.#upstreams) {
      if (this.#closed) return undefined
      let response = await this.#viaUdp(own, questionEnd, upstream)
      // The TCP fallback counts against the same cap (it holds a socket); at the cap the
      // truncated answer goes back as it is, and the client retries as it sees fit.
      if (response !== undefined && viaTcp && ((response[2] as number) & 0x02) !== 0 && this.#inflight < this.#maxPending) {
        response = (await this.#viaTcp(own, questionEnd, upstream)) ?? response
      }
      if (response === undefined) continue
      const rcode = (response[3] as number) & 0x0f
      if (rcode === RCODE_SERVFAIL || rcode === RCODE_REFUSED) {
        fallback = response
        continue
      }
      response.writeUInt16BE(clientId, 0)
      return response
    }
    fallback?.writeUInt16BE(clientId, 0)
    return fallback
  }

  close (): void {
    if (this.#closed) return
    this.#closed = true
    for (const pending of this.#pending.values()) {
      clearTimeout(pending.timer)
      pending.resolve(undefined)
    }
    this.#pending.clear()
    for (const socket of this.#sockets.values()) socket.close()
    this.#sockets.clear()
    for (const socket of this.#tcpSockets) socket.destroy()
    this.#tcpSockets.clear()
  }

  #freshId (): number {
    for (;;) {
      if (this.#nextId >= this.#ids.length) {
        randomFillSync(this.#ids)
        this.#nextId = 0
      }
      const id = this.#ids[this.#nextId++] as number
      if (!this.#pending.has(id)) return id
    }
  }

  #socket (family: 4 | 6): dgram.Socket {
    let socket = this.#sockets.get(family)
    if (socket === undefined) {
      const s = dgram.createSocket(family === 6 ? 'udp6' : 'udp4')
      s.on('message', this.#onMessage)
      s.on('error', (err) => {
        this.#logger.warn({ err }, 'dns forwarder socket error')
      })
      s.unref()
      this.#sockets.set(family, s)
      socket = s
    }
    return socket
  }

  readonly #onMessage = (msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    if (msg.length < 12) return
    const pending = this.#pending.get(msg.readUInt16BE(0))
    if (pending === undefined) return
    if (rinfo.port !== pending.upstream.port || rinfo.address !== pending.upstream.host) return
    if (!answers(pending.query, pending.questionEnd, msg)) return
    this.#settle(msg.readUInt16BE(0), msg)
  }

  #settle (id: number, response: Buffer | undefined): void {
    const pending = this.#pending.get(id)
    if (pending === undefined) return
    this.#pending.delete(id)
    clearTimeout(pending.timer)
    pending.resolve(response)
  }

  #viaUdp (query: Buffer, questionEnd: number, upstream: Upstream): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      const id = this.#freshId()
      query.writeUInt16BE(id, 0)
      const timer = setTimeout(() => {
        this.#logger.debug({ upstream: upstream.label }, 'dns upstream did not answer in time')
        this.#settle(id, undefined)
      }, this.#timeoutMs)
      timer.unref()
      this.#pending.set(id, { upstream, query, questionEnd, resolve, timer })
      this.#socket(upstream.family).send(query, upstream.port, upstream.host, (err) => {
        if (err !== null) {
          this.#logger.debug({ err, upstream: upstream.label }, 'dns upstream send failed')
          this.#settle(id, undefined)
        }
      })
    })
  }

  /** One query over a fresh TCP connection (RFC 7766), same timeout. */
  #viaTcp (query: Buffer, questionEnd: number, upstream: Upstream): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      const socket = net.connect({ host: upstream.host, port: upstream.port })
      this.#tcpSockets.add(socket)
      const received = new FrameParts()
      let done = false
      const finish = (response: Buffer | undefined): void => {
        if (done) return
        done = true
        clearTimeout(timer)
        this.#tcpSockets.delete(socket)
        socket.destroy()
        resolve(response)
      }
      const timer = setTimeout(() => finish(undefined), this.#timeoutMs)
      timer.unref()
      socket.on('error', () => finish(undefined))
      socket.on('close', () => finish(undefined))
      socket.on('connect', () => {
        const frame = Buffer.allocUnsafe(query.length + 2)
        frame.writeUInt16BE(query.length, 0)
        query.copy(frame, 2)
        socket.write(frame)
      })
      socket.on('data', (chunk: Buffer) => {
        const all = received.add(chunk)
        if (all === undefined) return
        const size = all.readUInt16BE(0)
        const response = Buffer.from(all.subarray(2, size + 2))
        finish(answers(query, questionEnd, response) ? response : undefined)
      })
    })
  }
}
