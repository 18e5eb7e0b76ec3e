// Case 4: UDP through each UDP proxy to the dnsmasq backend, with dnsperf (qps, loss).
// Open-source HAProxy has no UDP proxy, so the reference is nginx's stream module.
import type { DnsperfResult } from '../lib/parse.ts'
import type { Row } from '../lib/results.ts'
import { ports } from '../lib/topology.ts'
import { linkgateDnsNames } from '../peers/linkgate.ts'
import { cellsOf, perPeer, unavailableCell, type BenchContext } from './context.ts'
import { dnsperfAgainst, writeQueryFile } from './dns-load.ts'

export async function udpCase (ctx: BenchContext): Promise<Row[]> {
  const base = { caseId: 4, caseName: 'UDP (DNS queries)', reference: 'nginx' as const }
  const haproxy = { note: 'n/a: open-source HAProxy has no UDP proxy' }
  if (ctx.tools.dnsperf === undefined) {
    return [{ ...base, metric: 'query rate', unit: 'qps', better: 'higher', cells: { direct: unavailableCell('dnsperf not installed'), haproxy } }]
  }
  const file = await writeQueryFile(ctx.dir, linkgateDnsNames())
  const outcomes = await perPeer<DnsperfResult>(ctx, ['direct', 'nginx', 'linkgate'], async (peer) => {
    const r = await dnsperfAgainst(ctx, peer.address, ports.dns, file)
    ctx.log(`  ${peer.name}: ${Math.round(r.queriesPerSecond)} qps, lost ${r.lost} (${r.lossPercent}%)`)
    return r
  }, ctx.plan.rounds.dnsperf)
  return [
    { ...base, metric: 'query rate', unit: 'qps', better: 'higher', cells: { ...cellsOf(outcomes, (r) => r.queriesPerSecond), haproxy },
      target: { kind: 'ratio', against: 'nginx', min: 1.5, text: '≥ 1.5× nginx' }, note: 'dnsperf -c 4 -q 100 to a dnsmasq backend' },
    { ...base, metric: 'loss', unit: '%', better: 'lower', cells: { ...cellsOf(outcomes, (r) => r.lossPercent), haproxy } }
  ]
}
