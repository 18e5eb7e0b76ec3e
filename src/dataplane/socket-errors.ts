// The one place that says what a socket error means (SPEC §10 "Local trouble is not the
// backend's fault"). Used on accept (tcp-proxy), on connect to a backend (tcp-proxy, udp-proxy)
// and by health probes (health-check-tcp), so that the three never disagree.
//
// - `local`: this process or host is short of something (descriptors, buffers, memory, local
//   ports). Another backend would fail the same way, so the error never counts against the
//   backend's health (neither passive failures nor an active probe's verdict), and a connection
//   refused for it counts as `linkgate_connections_refused_total{reason="overload"}`.
//   HAProxy draws the same line in its logs: termination state `R` is "a resource on the proxy
//   has been exhausted (memory, sockets, source ports...)", distinct from the server's errors.
// - `backend`: the backend (or the path to it) refused, reset, timed out or is unreachable.
// - `other`: anything else (a bug, an odd errno): logged, and treated like a backend failure
//   where a verdict is needed.
import { getSystemErrorMessage } from 'node:util'

export type SocketErrorKind = 'local' | 'backend' | 'other'

/** errno codes that mean "we are short of resources", never "the peer is bad". */
const LOCAL = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM', 'EADDRNOTAVAIL'])
/** errno codes that mean "the backend is not there or would not talk". */
const BACKEND = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENETDOWN', 'EPIPE', 'ECONNABORTED'
])

function codeOf (err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null | undefined)?.code
  return typeof code === 'string' ? code : ''
}

export function classifySocketError (err: unknown): SocketErrorKind {
  const code = codeOf(err)
  if (LOCAL.has(code)) return 'local'
  if (BACKEND.has(code)) return 'backend'
  return 'other'
}

/** Shortage of descriptors, buffers, memory or local ports: never the backend's fault. */
export function isLocalTrouble (err: unknown): boolean {
  return LOCAL.has(codeOf(err))
}

/** Short reason for logs and health transitions: the words an operator expects. */
export function socketErrorReason (err: unknown): string {
  switch (codeOf(err)) {
    case 'ECONNREFUSED': return 'refused'
    case 'ECONNRESET': return 'reset'
    case 'ETIMEDOUT': return 'timeout'
    case 'EHOSTUNREACH':
    case 'ENETUNREACH': return 'unreachable'
    case '': return (err as Error | undefined)?.message ?? String(err)
    default: return codeOf(err)
  }
}

/** "EADDRINUSE address already in use", for bind failures reported to the control plane. */
export function describeSocketError (err: unknown): string {
  const e = err as NodeJS.ErrnoException
  if (typeof e?.errno === 'number' && typeof e.code === 'string') {
    try {
      return `${e.code} ${getSystemErrorMessage(e.errno)}`
    } catch {
      return `${e.code} ${e.message}`
    }
  }
  return e?.message ?? String(err)
}

/**
 * At most one log line per `intervalMs` for a recurring condition (a descriptor shortage fires
 * once per refused connection): the line carries how many were suppressed since the last one.
 */
export class LogLimiter {
  readonly #intervalMs: number
  #lastAt = Number.NEGATIVE_INFINITY
  #suppressed = 0

  constructor (intervalMs: number) {
    this.#intervalMs = intervalMs
  }

  /** Calls `log(suppressed)` unless one was logged within the interval. */
  run (log: (suppressed: number) => void): void {
    const now = performance.now()
    if (now - this.#lastAt < this.#intervalMs) {
      this.#suppressed++
      return
    }
    const suppressed = this.#suppressed
    this.#lastAt = now
    this.#suppressed = 0
    log(suppressed)
  }
}
