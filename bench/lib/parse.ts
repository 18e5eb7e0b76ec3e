// Parsers for the load tools' output. Pure functions, so test/bench/harness.test.ts checks them.

export interface WrkResult {
  readonly requestsPerSecond: number
  readonly requests: number
  readonly p50Ms: number
  readonly p99Ms: number
  /** connect + read + write + timeout socket errors, and non-2xx/3xx responses. */
  readonly errors: number
}

/** wrk's time units: us, ms, s, m, h. */
function toMs (value: string, unit: string): number {
  const n = Number(value)
  switch (unit) {
    case 'us': return n / 1000
    case 'ms': return n
    case 's': return n * 1000
    case 'm': return n * 60_000
    case 'h': return n * 3_600_000
    default: throw new Error(`wrk: unknown time unit ${JSON.stringify(unit)}`)
  }
}

/** `wrk --latency` text output. */
export function parseWrk (text: string): WrkResult {
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(text)
  const total = /^\s*(\d+) requests in /m.exec(text)
  const p50 = /^\s+50%\s+([\d.]+)(us|ms|s|m|h)\s*$/m.exec(text)
  const p99 = /^\s+99%\s+([\d.]+)(us|ms|s|m|h)\s*$/m.exec(text)
  if (rps?.[1] === undefined || total?.[1] === undefined || p50 === null || p99 === null) {
    throw new Error(`wrk: unexpected output: ${text.trim().slice(0, 300)}`)
  }
  let errors = 0
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text)
  if (socket !== null) errors += socket.slice(1).reduce((sum, n) => sum + Number(n), 0)
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(text)
  if (non2xx?.[1] !== undefined) errors += Number(non2xx[1])
  return {
    requestsPerSecond: Number(rps[1]),
    requests: Number(total[1]),
    p50Ms: toMs(p50[1] as string, p50[2] as string),
    p99Ms: toMs(p99[1] as string, p99[2] as string),
    errors
  }
}

export interface DnsperfResult {
  readonly queriesPerSecond: number
  readonly sent: number
  readonly lost: number
  readonly lossPercent: number
}

/** dnsperf's final statistics. */
export function parseDnsperf (text: string): DnsperfResult {
  const qps = /Queries per second:\s+([\d.]+)/.exec(text)
  const sent = /Queries sent:\s+(\d+)/.exec(text)
  const lost = /Queries lost:\s+(\d+) \(([\d.]+)%\)/.exec(text)
  if (qps?.[1] === undefined || sent?.[1] === undefined || lost?.[1] === undefined || lost[2] === undefined) {
    throw new Error(`dnsperf: unexpected output: ${text.trim().slice(-300)}`)
  }
  return { queriesPerSecond: Number(qps[1]), sent: Number(sent[1]), lost: Number(lost[1]), lossPercent: Number(lost[2]) }
}

export interface IperfResult {
  readonly gbitsPerSecond: number
  readonly retransmits: number
}

/** `iperf3 -J` output: the receiver's figure, which counts what actually arrived. */
export function parseIperf (json: string): IperfResult {
  let doc: { error?: string, end?: { sum_received?: { bits_per_second?: number }, sum_sent?: { retransmits?: number } } }
  try {
    doc = JSON.parse(json) as typeof doc
  } catch {
    throw new Error(`iperf3: output is not JSON: ${json.trim().slice(0, 200)}`)
  }
  if (typeof doc.error === 'string') throw new Error(`iperf3: ${doc.error}`)
  const bps = doc.end?.sum_received?.bits_per_second
  if (typeof bps !== 'number') throw new Error('iperf3: no end.sum_received.bits_per_second in the output')
  return { gbitsPerSecond: bps / 1e9, retransmits: doc.end?.sum_sent?.retransmits ?? 0 }
}
