// Active health check, TCP flavour (SPEC §5): a backend passes when a TCP connection to
// `address:port` is established within the timeout; the socket is closed at once (FIN, as
// HAProxy's plain `check` does). The connect-and-deadline machinery here is shared with the HTTP
// probe (health-check-http.ts), which speaks one request over the connected socket.
import { connect, type Socket } from 'node:net'
import { isLocalTrouble, socketErrorReason } from '../socket-errors.ts'

export interface ProbeTarget {
  /** IPv4 or IPv6 literal (SPEC §3: backend addresses are literals, so no DNS lookup happens). */
  readonly host: string
  readonly port: number
  /** Deadline for the whole probe: connect, and for HTTP the status line too. */
  readonly timeoutMs: number
}

/**
 * `reason` is short and stable, for logs and transition reasons: refused, timeout, HTTP 503...
 * `local`: the probe could not run for lack of descriptors, memory or local ports here
 * (socket-errors.ts); it says nothing about the backend and must not count for or against it.
 */
export type ProbeResult = { readonly ok: true } | { readonly ok: false, readonly reason: string, readonly local?: true }

export const PROBE_OK: ProbeResult = Object.freeze({ ok: true })
export const PROBE_TIMEOUT: ProbeResult = Object.freeze({ ok: false, reason: 'timeout' })
export const PROBE_ABORTED: ProbeResult = Object.freeze({ ok: false, reason: 'aborted' })

/** What to do once connected: settle the probe by calling `done` exactly once (later calls are ignored). */
export type ProbeSession = (socket: Socket, done: (result: ProbeResult) => void) => void

/**
 * Connect to `target` and run `session` on the connected socket (none: connected = passed).
 * Never rejects: every outcome is a ProbeResult. On the deadline or on `signal` the socket is
 * destroyed and its timer cleared, so an aborted probe leaves nothing behind.
 */
export function runProbe (target: ProbeTarget, signal?: AbortSignal, session?: ProbeSession): Promise<ProbeResult> {
  if (signal?.aborted === true) return Promise.resolve(PROBE_ABORTED)
  return new Promise((resolve) => {
    let settled = false
    const socket = connect({ host: target.host, port: target.port })
    const onAbort = (): void => { done(PROBE_ABORTED) }
    const timer = setTimeout(() => { done(PROBE_TIMEOUT) }, target.timeoutMs)
    timer.unref()
    function done (result: ProbeResult): void {
      if (settled) return
      settled = true
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      socket.destroy()
      resolve(result)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    socket.on('error', (err: NodeJS.ErrnoException) => {
      done(isLocalTrouble(err) ? { ok: false, reason: socketErrorReason(err), local: true } : { ok: false, reason: socketErrorReason(err) })
    })
    socket.on('close', () => { done({ ok: false, reason: 'closed by backend' }) })
    socket.once('connect', () => {
      if (session === undefined) done(PROBE_OK)
      else session(socket, done)
    })
  })
}

/** TCP check: passed when the connection is established within `target.timeoutMs`. */
export function probeTcp (target: ProbeTarget, signal?: AbortSignal): Promise<ProbeResult> {
  return runProbe(target, signal)
}
