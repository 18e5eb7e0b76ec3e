// Case 5: DNS serving. dnsperf against linkgate's embedded DNS server and against dnsmasq
// holding the same names (the bench endpoint's regional and zonal A records).
import type { DnsperfResult } from '../lib/parse.ts'
import type { Cell, Row } from '../lib/results.ts'
import { ports, topology } from '../lib/topology.ts'
import { linkgateDnsNames } from '../peers/linkgate.ts'
import { median, unavailableCell, type BenchContext } from './context.ts'
import { dnsperfAgainst, writeQueryFile } from './dns-load.ts'

type Server = 'dnsmasq' | 'linkgate'

export async function dnsCase (ctx: BenchContext, dnsmasqDown: string | undefined): Promise<Row[]> {
  const base = { caseId: 5, caseName: 'DNS serving', reference: 'dnsmasq' as const }
  const servers: Array<[Server, string, number, string | undefined]> = [
    ['dnsmasq', topology.dnsmasq, ports.dns, dnsmasqDown],
    ['linkgate', topology.linkgate.dns, topology.linkgate.dnsPort, ctx.peers.linkgate.unavailable]
  ]
  const samples = new Map<Server, DnsperfResult[]>()
  const qps: Partial<Record<Server, Cell>> = {}
  const loss: Partial<Record<Server, Cell>> = {}
  const file = await writeQueryFile(ctx.dir, linkgateDnsNames())
  for (let round = 0; round < ctx.plan.rounds.dnsperf; round++) {
    for (const [name, address, port, down] of servers) {
      if (qps[name] !== undefined) continue
      if (ctx.tools.dnsperf === undefined || down !== undefined) {
        qps[name] = loss[name] = unavailableCell(down ?? 'dnsperf not installed')
        continue
      }
      try {
        const r = await dnsperfAgainst(ctx, address, port, file)
        ctx.log(`  ${name}: ${Math.round(r.queriesPerSecond)} qps, lost ${r.lost} (${r.lossPercent}%)`)
        samples.set(name, [...(samples.get(name) ?? []), r])
      } catch (err) {
        qps[name] = loss[name] = { note: `failed: ${(err as Error).message.split('\n')[0]}` }
      }
    }
  }
  for (const [name, list] of samples) {
    if (qps[name] !== undefined) continue
    const q = list.map((r) => r.queriesPerSecond)
    qps[name] = list.length > 1 ? { value: median(q), samples: q } : { value: q[0] as number }
    loss[name] = { value: median(list.map((r) => r.lossPercent)) }
  }
  return [
    { ...base, metric: 'query rate', unit: 'qps', better: 'higher', cells: qps,
      target: { kind: 'ratio', against: 'dnsmasq', min: 1, text: '≥ 1.0× dnsmasq' }, note: 'dnsperf -c 4 -q 100, A queries for the endpoint\'s two names' },
    { ...base, metric: 'loss', unit: '%', better: 'lower', cells: loss }
  ]
}
