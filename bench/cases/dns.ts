// Case 5: DNS serving. dnsperf against linkgate's embedded DNS server and against dnsmasq
// holding the same names (the bench endpoint's regional and zonal A records), and each server's
// CPU time per query, user and kernel, read from /proc around each dnsperf run. dnsmasq here is
// the same process that is case 4's UDP backend.
import type { DnsperfResult } from '../lib/parse.ts'
import { measureCpu, type CpuTime } from '../lib/proc.ts'
import type { Cell, Row } from '../lib/results.ts'
import { linkgateInstance, ports, topology } from '../lib/topology.ts'
import { linkgateDnsNames } from '../peers/linkgate.ts'
import { median, microsPerOp, unavailableCell, type BenchContext } from './context.ts'
import { dnsperfAgainst, writeQueryFile } from './dns-load.ts'

type Server = 'dnsmasq' | 'linkgate-1' | 'linkgate-2'

/** `dnsmasqDown`: why dnsmasq cannot be measured; `dnsmasqPid`: its process, for the CPU time. */
export async function dnsCase (ctx: BenchContext, dnsmasqDown: string | undefined, dnsmasqPid: number | undefined): Promise<Row[]> {
  const base = { caseId: 5, caseName: 'DNS serving', reference: 'dnsmasq' as const }
  const servers: Array<[Server, string, number, string | undefined, number | undefined]> = [
    ['dnsmasq', topology.dnsmasq, ports.dns, dnsmasqDown, dnsmasqPid],
    ...([1, 2] as const).map((n): [Server, string, number, string | undefined, number | undefined] => {
      const peer = ctx.peers[`linkgate-${n}`]
      return [`linkgate-${n}`, linkgateInstance(n).dns, linkgateInstance(n).dnsPort, peer.unavailable, peer.daemon?.pid]
    })
  ]
  const samples = new Map<Server, Array<DnsperfResult & { readonly cpu?: CpuTime }>>()
  const qps: Partial<Record<Server, Cell>> = {}
  const loss: Partial<Record<Server, Cell>> = {}
  const user: Partial<Record<Server, Cell>> = {}
  const kernel: Partial<Record<Server, Cell>> = {}
  const file = await writeQueryFile(ctx.dir, linkgateDnsNames())
  for (let round = 0; round < ctx.plan.rounds.dnsperf; round++) {
    for (const [name, address, port, down, pid] of servers) {
      if (qps[name] !== undefined) continue
      if (ctx.tools.dnsperf === undefined || down !== undefined) {
        qps[name] = loss[name] = user[name] = kernel[name] = unavailableCell(down ?? 'dnsperf not installed')
        continue
      }
      try {
        const { result: r, cpu } = await measureCpu(pid, () => dnsperfAgainst(ctx, address, port, file))
        ctx.log(`  ${name}: ${Math.round(r.queriesPerSecond)} qps, lost ${r.lost} (${r.lossPercent}%)`)
        samples.set(name, [...(samples.get(name) ?? []), { ...r, cpu }])
      } catch (err) {
        qps[name] = loss[name] = user[name] = kernel[name] = { note: `failed: ${(err as Error).message.split('\n')[0]}` }
      }
    }
  }
  for (const [name, list] of samples) {
    if (qps[name] !== undefined) continue
    const q = list.map((r) => r.queriesPerSecond)
    qps[name] = list.length > 1 ? { value: median(q), samples: q } : { value: q[0] as number }
    loss[name] = { value: median(list.map((r) => r.lossPercent)) }
    user[name] = { value: median(list.map((r) => microsPerOp(r.cpu, 'userMs', r.sent - r.lost))) }
    kernel[name] = { value: median(list.map((r) => microsPerOp(r.cpu, 'systemMs', r.sent - r.lost))) }
  }
  return [
    { ...base, metric: 'query rate', unit: 'qps', better: 'higher', cells: qps,
      target: { kind: 'ratio', against: 'dnsmasq', min: 1, text: '≥ 1.0× dnsmasq' }, note: 'dnsperf -c 4 -q 100, A queries for the endpoint\'s two names' },
    { ...base, metric: 'loss', unit: '%', better: 'lower', cells: loss },
    { ...base, metric: 'server CPU per query, user', unit: 'µs', better: 'lower', cells: user,
      note: 'CPU time of the server\'s process, all threads, from /proc/PID/stat, during the dnsperf run, ÷ the queries answered' },
    { ...base, metric: 'server CPU per query, kernel', unit: 'µs', better: 'lower', cells: kernel }
  ]
}
