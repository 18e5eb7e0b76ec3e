// Case 8: the control plane at scale (issue 14), in the full bench. The measuring is
// bench/control-scale.ts (runnable alone); this turns its figures into rows. linkgate only: the
// peers have no control API. A quick run stops at 1,000 + 1,000.
import { controlScaleTable, runControlScale, type SizeResult } from '../control-scale.ts'
import type { Row } from '../lib/results.ts'
import type { BenchContext } from './context.ts'
import { linkgateMain } from '../peers/linkgate.ts'

const base = { caseId: 8, caseName: 'control plane at scale', reference: 'linkgate' } as const
/**
 * linkgate runs through its CLI at `workers: 1`: every worker binds each endpoint's listener,
 * and 10,000 endpoints at 2 workers need 20,000 listening descriptors, over this machine's
 * open-file limit (linkgate then stops at start with EMFILE).
 */
const column = 'linkgate-1'

export async function controlScaleCase (ctx: BenchContext, main = linkgateMain): Promise<Row[]> {
  const sizes = ctx.quick ? [100, 1000] : [100, 1000, 10000]
  const results = await runControlScale({ sizes, creates: ctx.quick ? 10 : 40, main, workers: 1, log: (m) => ctx.log(`  ${m}`) })
  ctx.log('\n' + controlScaleTable(results, ''))
  return rowsOf(results)
}

function rowsOf (results: readonly SizeResult[]): Row[] {
  const rows: Row[] = []
  const ms = (metric: string, value: number, target?: Row['target']): Row =>
    ({ ...base, metric, unit: 'ms', better: 'lower', cells: { [column]: { value } }, ...(target === undefined ? {} : { target }) })
  for (const r of results) {
    const n = r.size.toLocaleString('en')
    rows.push(ms(`create service p50, ${n} + ${n} in the store`, r.createService.p50))
    rows.push(ms(`create endpoint p50, ${n} + ${n} in the store`, r.createEndpoint.p50))
  }
  const first = results[0]
  const last = results[results.length - 1]
  if (first !== undefined && last !== undefined && last !== first) {
    const ratio = Math.max(last.createService.p50 / first.createService.p50, last.createEndpoint.p50 / first.createEndpoint.p50)
    rows.push({ ...base, metric: `create p50 at ${last.size.toLocaleString('en')} ÷ at ${first.size.toLocaleString('en')} (the worse of service, endpoint)`, unit: '×', better: 'lower',
      cells: { [column]: { value: ratio } }, target: { kind: 'absolute', max: 2, text: '≤ 2×' } })
    rows.push(ms(`start with ${last.size.toLocaleString('en')} + ${last.size.toLocaleString('en')} (restart)`, last.restartMs,
      last.size >= 10000 ? { kind: 'absolute', max: 20000, text: '≤ 20 s' } : undefined))
  }
  if (last?.ping !== undefined) {
    rows.push(ms('ping RTT p99 while 50 creates + 8 lists run', last.ping.p99, { kind: 'absolute', max: 10, text: '≤ 10 ms' }))
    rows.push(ms('ping RTT max while 50 creates + 8 lists run', last.ping.max, { kind: 'absolute', max: 50, text: '≤ 50 ms' }))
  }
  return rows
}

