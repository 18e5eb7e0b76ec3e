// Active health check, HTTP flavour (SPEC §5): `GET path` over a fresh connection, passed on a
// 2xx or 3xx status within the timeout (the success range of AWS NLB/ALB and HAProxy's
// `http-check expect status` default). Only the status line is read; the socket is then closed,
// so a large or endless body costs nothing. A minimal HTTP/1.1 request over node:net keeps the
// deadline and the abort in one place (health-check-tcp.ts) instead of an http.Agent's.
import { isIPv6 } from 'node:net'
import type { ProxyProtocol } from '../../control/model.ts'
import { localHeader } from '../proxy-protocol.ts'
import { runProbe, PROBE_OK, type ProbeResult, type ProbeTarget } from './health-check-tcp.ts'

export interface HttpProbeTarget extends ProbeTarget {
  /** Request target, origin-form (`/`, `/healthz?deep=1`); the schema limits it to printable ASCII. */
  readonly path: string
  /**
   * The service's PROXY protocol (SPEC §13): the request is preceded by a v2 LOCAL header (v1:
   * `PROXY UNKNOWN`), so a backend that requires the header answers the check.
   */
  readonly proxyProtocol?: ProxyProtocol | undefined
}

/** Bytes read while looking for the status line before the response is called malformed. */
const MAX_HEAD_BYTES = 8192
const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})(?: |$)/
const END_OF_HEADERS = /\r?\n\r?\n/

/** `Host` names the backend itself (RFC 9112 §3.2: uri-host, port unless the default 80). */
export function hostHeader (address: string, port: number): string {
  const host = isIPv6(address) ? `[${address}]` : address
  return port === 80 ? host : `${host}:${port}`
}

export function httpCheckRequest (target: HttpProbeTarget): string {
  return `GET ${target.path} HTTP/1.1\r\n` +
    `Host: ${hostHeader(target.host, target.port)}\r\n` +
    'User-Agent: linkgate-health-check\r\n' +
    'Accept: */*\r\n' +
    'Connection: close\r\n\r\n'
}

/** Status of a response head: 2xx/3xx pass, anything else fails as `HTTP <status>`. */
export function verdictOfStatus (status: number): ProbeResult {
  return status >= 200 && status < 400 ? PROBE_OK : { ok: false, reason: `HTTP ${status}` }
}

export function probeHttp (target: HttpProbeTarget, signal?: AbortSignal): Promise<ProbeResult> {
  const request = httpCheckRequest(target)
  return runProbe(target, signal, (socket, done) => {
    let head = ''
    socket.setEncoding('latin1')
    socket.on('data', (chunk: string) => {
      head += chunk
      for (;;) {
        const eol = head.indexOf('\n')
        if (eol < 0) break
        const match = STATUS_LINE.exec(head.slice(0, eol).replace(/\r$/, ''))
        if (match === null) { done({ ok: false, reason: 'bad response' }); return }
        const status = Number(match[1])
        if (status < 100 || status >= 200 || status === 101) { done(verdictOfStatus(status)); return }
        // An interim 1xx (RFC 9110 §15.2, e.g. 103 Early Hints): skip its head, the final one follows.
        const end = END_OF_HEADERS.exec(head)
        if (end === null) break
        head = head.slice(end.index + end[0].length)
      }
      if (head.length > MAX_HEAD_BYTES) done({ ok: false, reason: 'bad response' })
    })
    const header = localHeader(target.proxyProtocol)
    if (header !== null) socket.write(header)
    socket.write(request)
  })
}
