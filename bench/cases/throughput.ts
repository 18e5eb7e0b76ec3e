// Case 1: TCP bulk throughput, one iperf3 stream through each proxy (Gb/s, the receiver's count).
import { parseIperf, type IperfResult } from '../lib/parse.ts'
import { run } from '../lib/proc.ts'
import type { Row } from '../lib/results.ts'
import { ports } from '../lib/topology.ts'
import { cellsOf, perPeer, tcpPeers, unavailableCell, type BenchContext } from './context.ts'

export async function throughputCase (ctx: BenchContext): Promise<Row[]> {
  const seconds = ctx.plan.seconds.iperf
  const base = { caseId: 1, caseName: 'TCP bulk', metric: 'throughput', unit: 'Gb/s', better: 'higher' as const, reference: 'haproxy' as const }
  const target = { kind: 'ratio' as const, against: 'best-proxy' as const, min: 1, text: '≥ 1.0× best of HAProxy, nginx' }
  const iperf3 = ctx.tools.iperf3
  if (iperf3 === undefined) {
    return [{ ...base, target, cells: Object.fromEntries(tcpPeers.map((p) => [p, unavailableCell('iperf3 not installed')])) }]
  }
  const outcomes = await perPeer<IperfResult>(ctx, tcpPeers, async (peer) => {
    const r = await run(iperf3, ['-c', peer.address, '-p', String(ports.iperf), '-t', String(seconds), '-J', '--connect-timeout', '3000'], {
      timeoutMs: (seconds + 15) * 1000
    })
    if (r.timedOut) throw new Error(`iperf3 did not finish within ${seconds + 15} s`)
    const result = parseIperf(r.stdout)
    ctx.log(`  ${peer.name}: ${result.gbitsPerSecond.toFixed(2)} Gb/s`)
    return result
  }, ctx.plan.rounds.iperf)
  return [{ ...base, target, cells: cellsOf(outcomes, (r) => r.gbitsPerSecond), note: `one stream, ${ctx.plan.rounds.iperf > 1 ? `median of ${ctx.plan.rounds.iperf} runs of ` : ''}${seconds} s` }]
}
