// Cases 2, 3 and 7: small HTTP responses from the nginx backend through each proxy, with wrk.
// Case 2 keeps 50 connections alive (req/s, p50, p99); case 3 sends `Connection: close`, so
// every request is a new TCP connection through the proxy (conn/s, p99); case 7 is case 2 with
// each proxy's logging on, against the same proxy with it off, measured back to back.
// Cases 2 and 3 also give the proxy's CPU time per request, user and kernel, read from /proc
// around the measured run: where the time goes, beside how fast it went.
import { parseWrk, type WrkResult } from '../lib/parse.ts'
import { measureCpu, run, type CpuTime } from '../lib/proc.ts'
import type { Cell, Row } from '../lib/results.ts'
import { ports, type PeerName } from '../lib/topology.ts'
import { cellsOf, cpuRows, microsPerOp, perPeer, tcpPeers, unavailableCell, type BenchContext, type Outcome, type PeerState } from './context.ts'

export const wrkConnections = 50

/** A wrk run, and the CPU time the peer's processes used during it (none for direct). */
export type WrkRun = WrkResult & { readonly cpu?: CpuTime }

/**
 * One wrk run against `peer`; with `warmUp`, a short run first (JIT, buffer pools), unless the
 * plan has none. The CPU time covers the measured run only, not the warm-up.
 */
export async function wrkAgainst (ctx: BenchContext, peer: PeerState, closeEach: boolean, warmUp: boolean, seconds = ctx.plan.seconds.wrk): Promise<WrkRun> {
  const wrk = ctx.tools.wrk
  if (wrk === undefined) throw new Error('wrk not installed')
  const url = `http://${peer.address}:${ports.http}/`
  const args = (d: number): string[] => [
    '-t', '2', '-c', String(wrkConnections), '-d', `${d}s`, '--latency', '--timeout', '2s',
    ...(closeEach ? ['-H', 'Connection: close'] : []),
    url
  ]
  const warm = ctx.plan.seconds.wrkWarmUp
  if (warmUp && warm > 0) await run(wrk, args(warm), { timeoutMs: (warm + 15) * 1000 })
  const { result: r, cpu } = await measureCpu(peer.daemon?.pid, () => run(wrk, args(seconds), { timeoutMs: (seconds + 15) * 1000 }))
  if (r.timedOut) throw new Error(`wrk did not finish within ${seconds + 15} s`)
  if (r.code !== 0) throw new Error(`wrk exited ${r.code}: ${r.stderr.trim()}`)
  const result = parseWrk(r.stdout)
  const cpuText = cpu === undefined
    ? ''
    : `, CPU/request ${microsPerOp(cpu, 'userMs', result.requests).toFixed(1)} µs user + ${microsPerOp(cpu, 'systemMs', result.requests).toFixed(1)} µs kernel`
  ctx.log(`  ${peer.name}: ${Math.round(result.requestsPerSecond)} req/s, p50 ${result.p50Ms.toFixed(2)} ms, p99 ${result.p99Ms.toFixed(2)} ms, errors ${result.errors}${cpuText}`)
  return { ...result, cpu }
}

function noWrk (peers: readonly PeerName[]): Row['cells'] {
  return Object.fromEntries(peers.map((p) => [p, unavailableCell('wrk not installed')]))
}

function wrkRounds (ctx: BenchContext, peers: readonly PeerName[], closeEach: boolean): Promise<Map<PeerName, Outcome<WrkRun>>> {
  return perPeer(ctx, peers, (peer, round) => wrkAgainst(ctx, peer, closeEach, round === 0), ctx.plan.rounds.wrk)
}

function roundsNote (ctx: BenchContext): string {
  const { rounds, seconds } = ctx.plan
  return `${wrkConnections} connections, ${rounds.wrk > 1 ? `median of ${rounds.wrk} runs of ` : ''}${seconds.wrk} s`
}

const cpuNote = 'CPU time of the proxy\'s processes (nginx: master + workers), all threads, from /proc/PID/stat, during the measured run, ÷ the requests wrk completed'
const noProxy = { direct: { note: 'n/a: no proxy process' } }

export async function keepAliveCase (ctx: BenchContext): Promise<Row[]> {
  const base = { caseId: 2, caseName: 'HTTP keep-alive', reference: 'haproxy' as const }
  if (ctx.tools.wrk === undefined) return [{ ...base, metric: 'request rate', unit: 'req/s', better: 'higher', cells: noWrk(tcpPeers) }]
  const outcomes = await wrkRounds(ctx, tcpPeers, false)
  return [
    { ...base, metric: 'request rate', unit: 'req/s', better: 'higher', cells: cellsOf(outcomes, (r) => r.requestsPerSecond),
      target: { kind: 'ratio', against: 'haproxy', min: 1, text: '≥ 1.0× HAProxy' }, note: roundsNote(ctx) },
    { ...base, metric: 'p50 latency', unit: 'ms', better: 'lower', cells: cellsOf(outcomes, (r) => r.p50Ms) },
    { ...base, metric: 'p99 latency', unit: 'ms', better: 'lower', cells: cellsOf(outcomes, (r) => r.p99Ms),
      target: { kind: 'ratio', against: 'haproxy', max: 1, text: '≤ HAProxy' } },
    { ...base, metric: 'errors', unit: 'count', better: 'lower', cells: cellsOf(outcomes, (r) => r.errors) },
    ...cpuRows(base, 'request', outcomes, (r) => r.requests, noProxy, cpuNote)
  ]
}

export async function connectionRateCase (ctx: BenchContext): Promise<Row[]> {
  const base = { caseId: 3, caseName: 'new connection per request', reference: 'haproxy' as const }
  if (ctx.tools.wrk === undefined) return [{ ...base, metric: 'connection rate', unit: 'conn/s', better: 'higher', cells: noWrk(tcpPeers) }]
  const outcomes = await wrkRounds(ctx, tcpPeers, true)
  return [
    { ...base, metric: 'connection rate', unit: 'conn/s', better: 'higher', cells: cellsOf(outcomes, (r) => r.requestsPerSecond),
      target: { kind: 'ratio', against: 'haproxy', min: 1, text: '≥ 1.0× HAProxy' }, note: `wrk -H "Connection: close", ${roundsNote(ctx)}` },
    { ...base, metric: 'p99 latency', unit: 'ms', better: 'lower', cells: cellsOf(outcomes, (r) => r.p99Ms),
      target: { kind: 'ratio', against: 'haproxy', max: 1, text: '≤ HAProxy' } },
    { ...base, metric: 'errors', unit: 'count', better: 'lower', cells: cellsOf(outcomes, (r) => r.errors) },
    ...cpuRows(base, 'connection', outcomes, (r) => r.requests, noProxy, cpuNote)
  ]
}

/**
 * Case 7. linkgate's metrics have no off switch (they are always collected, published once per
 * scrape), so "on" means its access log (config `log.access`) written to a file; for reference,
 * HAProxy logs each connection to stdout (`option tcplog`) and nginx to a buffered file.
 * Each proxy is restarted fresh with logging off and measured, restarted with it on and
 * measured, and restarted off again: both figures come from fresh processes, back to back.
 */
export async function loggingCostCase (ctx: BenchContext): Promise<Row[]> {
  const base = { caseId: 7, caseName: 'metrics + access log cost', reference: 'haproxy' as const }
  const peers = ctx.plan.loggingPeers
  const rounds = ctx.plan.rounds.logging
  if (ctx.tools.wrk === undefined) return [{ ...base, metric: 'request rate, logging on', unit: 'req/s', better: 'higher', cells: noWrk(peers) }]
  const off: Partial<Record<PeerName, Cell>> = {}
  const on: Partial<Record<PeerName, Cell>> = {}
  const ratioCells: Partial<Record<PeerName, Cell>> = {}
  for (const name of peers) {
    const rate = (o: Map<PeerName, Outcome<WrkResult>>): Cell => cellsOf(o, (r) => r.requestsPerSecond)[name] ?? { note: 'no figure' }
    if (ctx.peers[name].unavailable === undefined) await ctx.restart(name, false)
    off[name] = rate(await perPeer(ctx, [name], (peer, round) => wrkAgainst(ctx, peer, false, round === 0), rounds))
    if (off[name]?.value === undefined) continue
    try {
      ctx.log(`  ${name}: restarting with logging on`)
      await ctx.restart(name, true)
      on[name] = rate(await perPeer(ctx, [name], (peer, round) => wrkAgainst(ctx, peer, false, round === 0), rounds))
    } catch (err) {
      on[name] = { note: `failed: ${(err as Error).message.split('\n')[0]}` }
    } finally {
      await ctx.restart(name, false).catch((err: unknown) => {
        ctx.peers[name].unavailable = `restart after case 7 failed: ${(err as Error).message}`
      })
    }
    const a = on[name]?.value
    const b = off[name]?.value
    ratioCells[name] = a !== undefined && b !== undefined && b > 0 ? { value: a / b } : { note: on[name]?.note ?? 'no figure' }
  }
  const note = `${rounds > 1 ? `median of ${rounds} runs` : 'one run'} each way, back to back`
  return [
    { ...base, metric: 'request rate, logging off', unit: 'req/s', better: 'higher', cells: off, note },
    { ...base, metric: 'request rate, logging on', unit: 'req/s', better: 'higher', cells: on,
      note: 'linkgate: access log to a file (log.access); it has no switch for metrics, which stay on in both runs' },
    { ...base, metric: 'logging on ÷ off', unit: '×', better: 'higher', cells: ratioCells }
  ]
}
