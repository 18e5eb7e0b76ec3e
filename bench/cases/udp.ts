// Case 4: UDP through each UDP proxy to the dnsmasq backend, with dnsperf (qps, loss).
// Open-source HAProxy has no UDP proxy, so the reference is nginx's stream module. The proxy's
// CPU time per query, user and kernel, is read from /proc around each dnsperf run.
import type { DnsperfResult } from '../lib/parse.ts'
import { measureCpu, type CpuTime } from '../lib/proc.ts'
import type { Row } from '../lib/results.ts'
import { ports } from '../lib/topology.ts'
import { linkgateDnsNames } from '../peers/linkgate.ts'
import { cellsOf, cpuRows, perPeer, unavailableCell, type BenchContext } from './context.ts'
import { dnsperfAgainst, writeQueryFile } from './dns-load.ts'

export async function udpCase (ctx: BenchContext): Promise<Row[]> {
  const base = { caseId: 4, caseName: 'UDP (DNS queries)', reference: 'nginx' as const }
  const na = { note: 'n/a: open-source HAProxy has no UDP proxy' }
  const haproxy = { 'haproxy-1': na, 'haproxy-2': na }
  if (ctx.tools.dnsperf === undefined) {
    return [{ ...base, metric: 'query rate', unit: 'qps', better: 'higher', cells: { direct: unavailableCell('dnsperf not installed'), ...haproxy } }]
  }
  const file = await writeQueryFile(ctx.dir, linkgateDnsNames())
  const outcomes = await perPeer<DnsperfResult & { readonly cpu?: CpuTime }>(ctx, ['direct', 'nginx-1', 'nginx-2', 'linkgate-1', 'linkgate-2'], async (peer) => {
    const { result: r, cpu } = await measureCpu(peer.daemon?.pid, () => dnsperfAgainst(ctx, peer.address, ports.dns, file))
    ctx.log(`  ${peer.name}: ${Math.round(r.queriesPerSecond)} qps, lost ${r.lost} (${r.lossPercent}%)`)
    return { ...r, cpu }
  }, ctx.plan.rounds.dnsperf)
  // Lost queries may still have cost the proxy work; they are not counted as served.
  const answered = (r: DnsperfResult): number => r.sent - r.lost
  return [
    { ...base, metric: 'query rate', unit: 'qps', better: 'higher', cells: { ...cellsOf(outcomes, (r) => r.queriesPerSecond), ...haproxy },
      target: { kind: 'ratio', against: 'nginx', min: 1.5, text: '≥ 1.5× nginx' }, note: 'dnsperf -c 4 -q 100 to a dnsmasq backend' },
    { ...base, metric: 'loss', unit: '%', better: 'lower', cells: { ...cellsOf(outcomes, (r) => r.lossPercent), ...haproxy } },
    ...cpuRows(base, 'query', outcomes, answered, { direct: { note: 'n/a: no proxy process' }, ...haproxy },
      'CPU time of the proxy\'s processes (nginx: master + workers), all threads, from /proc/PID/stat, during the dnsperf run, ÷ the queries answered')
  ]
}
