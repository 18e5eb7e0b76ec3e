// What every case gets: the run's settings, the tools, and how to reach each peer.
import type { CpuTime, Daemon } from '../lib/proc.ts'
import type { Cell, Column, Row } from '../lib/results.ts'
import { peerNames, type PeerName, type ProxyName } from '../lib/topology.ts'

export interface PeerState {
  readonly name: PeerName
  /** Where a client connects to reach the backends through this peer. */
  readonly address: string
  /** The proxy's process (undefined for direct, or when it is not available). */
  daemon?: Daemon
  /** Why the peer takes no part, when it does not. */
  unavailable?: string
}

/** How long each load runs and how many interleaved rounds a case makes (the median is kept). */
export interface BenchPlan {
  readonly seconds: { readonly iperf: number, readonly wrk: number, readonly dnsperf: number, readonly wrkWarmUp: number, readonly isolation: number }
  readonly rounds: { readonly iperf: number, readonly wrk: number, readonly dnsperf: number, readonly logging: number, readonly isolation: number }
  /** Case 7 measures these peers (a quick run: linkgate only). */
  readonly loggingPeers: readonly ProxyName[]
}

// Seven ways through (direct, three proxies at 1 and 2 threads) instead of four: the full run
// makes fewer, shorter rounds than the single-variant bench did (5 s × 2, 4 s × 3) to stay
// within ~12 minutes on two cores; the median of 2 interleaved rounds still damps a drift.
export const fullPlan: BenchPlan = {
  seconds: { iperf: 4, wrk: 3, dnsperf: 3, wrkWarmUp: 1, isolation: 4 },
  rounds: { iperf: 2, wrk: 2, dnsperf: 2, logging: 2, isolation: 2 },
  loggingPeers: ['haproxy-1', 'nginx-1', 'linkgate-1']
}

export const quickPlan: BenchPlan = {
  seconds: { iperf: 2, wrk: 2, dnsperf: 2, wrkWarmUp: 0, isolation: 2 },
  rounds: { iperf: 1, wrk: 1, dnsperf: 1, logging: 1, isolation: 1 },
  loggingPeers: ['linkgate-1']
}

export interface BenchContext {
  readonly quick: boolean
  readonly plan: BenchPlan
  readonly dir: string
  readonly tools: { readonly iperf3?: string, readonly wrk?: string, readonly dnsperf?: string }
  readonly peers: Readonly<Record<PeerName, PeerState>>
  /** Restarts a proxy with logging on (true) or off (false); cases 6 and 7 use it. */
  restart (name: ProxyName, logging: boolean): Promise<void>
  log (message: string): void
}

export const tcpPeers: readonly PeerName[] = peerNames

/** A cell for a peer that is not running, or a tool that is missing. */
export function unavailableCell (reason: string): Cell {
  return { note: `not available: ${reason.split('\n')[0] ?? reason}` }
}

export type Outcome<T> = { readonly ok: true, readonly results: readonly T[] } | { readonly ok: false, readonly cell: Cell }

/**
 * Runs `measure` `rounds` times for each peer that is up, interleaved (round 1 for every peer,
 * then round 2, ...) so a slow drift of the machine spreads over all peers alike. A thrown error
 * ends that peer's part in the case and becomes its note.
 */
export async function perPeer<T> (
  ctx: BenchContext,
  names: readonly PeerName[],
  measure: (peer: PeerState, round: number) => Promise<T>,
  rounds = 1
): Promise<Map<PeerName, Outcome<T>>> {
  const results = new Map<PeerName, T[]>()
  const failed = new Map<PeerName, Cell>()
  for (const name of names) {
    const peer = ctx.peers[name]
    if (peer.unavailable !== undefined) failed.set(name, unavailableCell(peer.unavailable))
    else results.set(name, [])
  }
  for (let round = 0; round < rounds; round++) {
    for (const name of names) {
      const list = results.get(name)
      if (list === undefined || failed.has(name)) continue
      try {
        list.push(await measure(ctx.peers[name], round))
      } catch (err) {
        const message = (err as Error).message.split('\n')[0] ?? String(err)
        ctx.log(`  ${name}: failed: ${message}`)
        failed.set(name, { note: `failed: ${message}` })
      }
    }
  }
  const out = new Map<PeerName, Outcome<T>>()
  for (const name of names) {
    const cell = failed.get(name)
    out.set(name, cell !== undefined ? { ok: false, cell } : { ok: true, results: results.get(name) ?? [] })
  }
  return out
}

export function median (values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] as number : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

/** One row's cells from per-peer outcomes: the median over the rounds of `pick(result)`. */
export function cellsOf<T> (outcomes: Map<PeerName, Outcome<T>>, pick: (result: T) => number): Partial<Record<Column, Cell>> {
  const cells: Partial<Record<Column, Cell>> = {}
  for (const [name, o] of outcomes) {
    if (!o.ok) {
      cells[name] = o.cell
      continue
    }
    const samples = o.results.map(pick)
    cells[name] = samples.length === 1 ? { value: samples[0] as number } : { value: median(samples), samples }
  }
  return cells
}

/**
 * CPU time per operation in µs: the ms of `kind` a run's processes used ÷ the operations it
 * completed. NaN (shown as such) when the run has no CPU figure or completed nothing.
 */
export function microsPerOp (cpu: CpuTime | undefined, kind: keyof CpuTime, operations: number): number {
  const ms = cpu?.[kind]
  return ms === undefined || operations <= 0 ? Number.NaN : ms * 1000 / operations
}

/**
 * The two rows of a case's CPU time per operation (user, kernel) from per-peer runs that carry
 * `cpu`; `operations` is what a run completed. `cells` adds the notes of peers without a process.
 */
export function cpuRows<T extends { readonly cpu?: CpuTime }> (
  base: Pick<Row, 'caseId' | 'caseName' | 'reference'>, per: string, outcomes: Map<PeerName, Outcome<T>>,
  operations: (run: T) => number, cells: Partial<Record<Column, Cell>>, note: string
): Row[] {
  return [
    { ...base, metric: `proxy CPU per ${per}, user`, unit: 'µs', better: 'lower', note,
      cells: { ...cellsOf(outcomes, (r) => microsPerOp(r.cpu, 'userMs', operations(r))), ...cells } },
    { ...base, metric: `proxy CPU per ${per}, kernel`, unit: 'µs', better: 'lower',
      cells: { ...cellsOf(outcomes, (r) => microsPerOp(r.cpu, 'systemMs', operations(r))), ...cells } }
  ]
}

export type { Column }
