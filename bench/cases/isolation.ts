// Case 10: control-plane isolation (issue 15, SPEC §11). Keep-alive p99 through an endpoint
// (case 2's wrk) with the API idle, and again while the API creates 50 services and then lists
// them back to back until wrk ends — with the data plane in workers (`workers: 1`, `2`: the
// running ×1 and ×2 instances) against linkgate's single event loop (the data plane on the main
// thread, started for this case by bench/lib/linkgate-one-loop.ts). The API client is this
// harness process; wrk and the backend are their own processes. The created services are
// deleted after each run, so every round starts from the same state.
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import type { Daemon } from '../lib/proc.ts'
import type { Cell, Row } from '../lib/results.ts'
import { benchIds, linkgateInstance, ports, topology } from '../lib/topology.ts'
import { startLinkgate } from '../peers/linkgate.ts'
import { median, unavailableCell, type BenchContext, type PeerState } from './context.ts'
import { wrkAgainst, wrkConnections, type WrkRun } from './http.ts'

type Variant = 0 | 1 | 2
const columnOf = (v: Variant): 'linkgate-0' | 'linkgate-1' | 'linkgate-2' => `linkgate-${v}`

/** Services created per loaded run. */
export const isolationCreates = 50

async function api (v: Variant, method: string, path: string, payload?: unknown): Promise<any> {
  const lg = linkgateInstance(v)
  const res = await fetch(`http://${lg.api}:${lg.apiPort}${path}`, {
    method,
    headers: { authorization: `Bearer ${benchIds.token}`, ...(payload === undefined ? {} : { 'content-type': 'application/json' }) },
    body: payload === undefined ? undefined : JSON.stringify(payload),
    signal: AbortSignal.timeout(10_000)
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text.slice(0, 200)}`)
  return text === '' ? undefined : JSON.parse(text)
}

/**
 * The API load: `isolationCreates` services one after another, then list calls back to back
 * until `until` resolves. Returns the ids created and the number of calls made.
 */
async function apiLoad (v: Variant, tag: string, until: Promise<unknown>): Promise<{ ids: string[], calls: number }> {
  let done = false
  void until.finally(() => { done = true })
  const ids: string[] = []
  let calls = 0
  for (let i = 0; i < isolationCreates && !done; i++) {
    const svc = await api(v, 'POST', '/v1/endpoint-services', {
      name: `iso-${tag}-${i}`,
      portMappings: [{ protocol: 'TCP', servicePort: ports.http, terminalPort: 20000 + i }],
      backends: [{ address: topology.backend, zone: benchIds.zone, weight: 100 }],
      healthCheck: { enabled: false }
    })
    ids.push(svc.id as string)
    calls++
  }
  while (!done) {
    await api(v, 'GET', '/v1/endpoint-services')
    calls++
  }
  return { ids, calls }
}

interface IsolationRun {
  readonly quiet: WrkRun
  readonly loaded: WrkRun
  readonly calls: number
}

async function measure (ctx: BenchContext, v: Variant, peer: PeerState, round: number): Promise<IsolationRun> {
  ctx.log(`  ${columnOf(v)}, API idle:`)
  const quiet = await wrkAgainst(ctx, peer, false, round === 0, ctx.plan.seconds.isolation)
  ctx.log(`  ${columnOf(v)}, API creating ${isolationCreates} services, then listing:`)
  const wrk = wrkAgainst(ctx, peer, false, false, ctx.plan.seconds.isolation)
  const load = apiLoad(v, `${round}`, wrk)
  // Both settle before anything is judged: a failed API call must not leave wrk running into the next measurement.
  const [wrkDone, loadDone] = await Promise.allSettled([wrk, load])
  if (wrkDone.status === 'rejected') throw wrkDone.reason
  if (loadDone.status === 'rejected') throw loadDone.reason
  const loaded = wrkDone.value
  const { ids, calls } = loadDone.value
  ctx.log(`    ${calls} API calls during the run`)
  for (const id of ids) await api(v, 'DELETE', `/v1/endpoint-services/${id}`)
  return { quiet, loaded, calls }
}

export async function isolationCase (ctx: BenchContext): Promise<Row[]> {
  const base = { caseId: 10, caseName: 'control-plane isolation', reference: 'linkgate' as const }
  const rows = (cells: (pick: (r: IsolationRun) => number) => Partial<Record<'linkgate-0' | 'linkgate-1' | 'linkgate-2', Cell>>): Row[] => [
    { ...base, metric: 'keep-alive p99, API idle', unit: 'ms', better: 'lower', cells: cells((r) => r.quiet.p99Ms),
      note: `wrk ${wrkConnections} connections through the endpoint, ${ctx.plan.seconds.isolation} s${ctx.plan.rounds.isolation > 1 ? `, median of ${ctx.plan.rounds.isolation} rounds` : ''}; linkgate, one loop: the data plane on the main thread (what linkgate was before workers); ×1, ×2: workers: 1, 2` },
    { ...base, metric: `keep-alive p99 while the API creates ${isolationCreates} services, then lists them`, unit: 'ms', better: 'lower',
      cells: cells((r) => r.loaded.p99Ms), note: 'the same wrk run while one API client creates the services one after another, then lists every service back to back until wrk ends' },
    { ...base, metric: 'keep-alive request rate, API idle', unit: 'req/s', better: 'higher', cells: cells((r) => r.quiet.requestsPerSecond) },
    { ...base, metric: 'keep-alive request rate under API load', unit: 'req/s', better: 'higher', cells: cells((r) => r.loaded.requestsPerSecond) },
    { ...base, metric: 'API calls completed during the loaded run', unit: 'count', better: 'higher', cells: cells((r) => r.calls) }
  ]
  if (ctx.tools.wrk === undefined) return rows(() => Object.fromEntries([0, 1, 2].map((v) => [`linkgate-${v}`, unavailableCell('wrk not installed')])))

  // The single-loop instance exists only for this case.
  let oneLoop: Daemon | undefined
  let oneLoopError: string | undefined
  try {
    const sub = join(ctx.dir, 'linkgate-one-loop')
    await mkdir(sub, { recursive: true })
    oneLoop = await startLinkgate(sub, { workers: 0 })
    ctx.log(`  linkgate, one loop, started (pid ${oneLoop.pid})`)
  } catch (err) {
    oneLoopError = (err as Error).message.split('\n')[0]
    ctx.log(`  linkgate, one loop: not available: ${oneLoopError}`)
  }
  try {
    const peers = new Map<Variant, PeerState | string>()
    peers.set(0, oneLoop === undefined ? `not available: ${oneLoopError}` : { name: 'linkgate-1', address: linkgateInstance(0).endpoint, daemon: oneLoop })
    for (const v of [1, 2] as const) {
      const p = ctx.peers[`linkgate-${v}`]
      peers.set(v, p.unavailable !== undefined ? `not available: ${p.unavailable}` : p)
    }
    const results = new Map<Variant, IsolationRun[]>()
    const failed = new Map<Variant, string>()
    for (let round = 0; round < ctx.plan.rounds.isolation; round++) {
      for (const [v, peer] of peers) {
        if (typeof peer === 'string' || failed.has(v)) continue
        try {
          results.set(v, [...(results.get(v) ?? []), await measure(ctx, v, peer, round)])
        } catch (err) {
          const message = (err as Error).message.split('\n')[0] ?? String(err)
          ctx.log(`  ${columnOf(v)}: failed: ${message}`)
          failed.set(v, `failed: ${message}`)
        }
      }
    }
    return rows((pick) => {
      const out: Partial<Record<'linkgate-0' | 'linkgate-1' | 'linkgate-2', Cell>> = {}
      for (const [v, peer] of peers) {
        const list = results.get(v)
        const reason = typeof peer === 'string' ? peer : failed.get(v)
        if (reason !== undefined || list === undefined) out[columnOf(v)] = { note: reason ?? 'no figure' }
        else out[columnOf(v)] = list.length > 1 ? { value: median(list.map(pick)), samples: list.map(pick) } : { value: pick(list[0] as IsolationRun) }
      }
      return out
    })
  } finally {
    await oneLoop?.stop()
  }
}
