// The shape of a bench run's results, the targets of issues 8 and 15, and how ratios are taken.
import type { PeerName } from './topology.ts'

/**
 * A column of the results table: a way to reach the backend (each proxy at 1 and 2 threads),
 * dnsmasq as a DNS server, and linkgate with its data plane on the main thread (case 10 only).
 */
export type Column = PeerName | 'dnsmasq' | 'linkgate-0'
export const columns: readonly Column[] = ['direct', 'haproxy-1', 'haproxy-2', 'nginx-1', 'nginx-2', 'dnsmasq', 'linkgate-0', 'linkgate-1', 'linkgate-2']
export const columnTitle: Readonly<Record<Column, string>> = {
  direct: 'direct',
  'haproxy-1': 'HAProxy ×1',
  'haproxy-2': 'HAProxy ×2',
  'nginx-1': 'nginx ×1',
  'nginx-2': 'nginx ×2',
  dnsmasq: 'dnsmasq',
  'linkgate-0': 'linkgate, one loop',
  'linkgate-1': 'linkgate ×1',
  'linkgate-2': 'linkgate ×2'
}

/** What a row is compared with: a kind of peer, taken at the same thread count as the figure. */
export type Reference = 'haproxy' | 'nginx' | 'dnsmasq' | 'linkgate'
export const referenceTitle: Readonly<Record<Reference, string>> = { haproxy: 'HAProxy', nginx: 'nginx', dnsmasq: 'dnsmasq', linkgate: 'linkgate' }

/** Threads of a column: ×2 columns count 2, every other column 1 (dnsmasq is one process). */
export function columnThreads (column: Column): 1 | 2 {
  return column.endsWith('-2') ? 2 : 1
}

/** linkgate's columns that targets are judged on: ×1 and ×2. */
export const linkgateColumns = ['linkgate-1', 'linkgate-2'] as const

/** The column `reference` is read from for a figure in `column` (equal threads). */
export function referenceColumn (reference: Reference, column: Column): Column | undefined {
  switch (reference) {
    case 'haproxy': return `haproxy-${columnThreads(column)}`
    case 'nginx': return `nginx-${columnThreads(column)}`
    case 'dnsmasq': return 'dnsmasq'
    case 'linkgate': return undefined
  }
}

/** A measured figure, or the reason there is none (`not available: ...`, `n/a: ...`). */
export interface Cell {
  /** The median of `samples` when there were several rounds. */
  readonly value?: number
  readonly samples?: readonly number[]
  readonly note?: string
}

/**
 * A target from issues 8 and 15, judged for linkgate ×1 and ×2 each. `ratio`: linkgate ÷
 * `against` at the same thread count (or ÷ the better of HAProxy and nginx there) must be ≥ `min`
 * / ≤ `max`; `absolute`: linkgate's value itself must be ≤ `max`.
 */
export type Target =
  | { readonly kind: 'ratio', readonly against: Reference | 'best-proxy', readonly min?: number, readonly max?: number, readonly text: string }
  | { readonly kind: 'absolute', readonly max: number, readonly text: string }

export interface Row {
  readonly caseId: number
  readonly caseName: string
  readonly metric: string
  readonly unit: string
  readonly better: 'higher' | 'lower'
  /** What the ratios are taken against (at equal threads): HAProxy, or nginx for UDP, dnsmasq for DNS. */
  readonly reference: Reference
  readonly cells: Partial<Record<Column, Cell>>
  readonly target?: Target
  readonly note?: string
}

export interface RunResults {
  readonly date: string
  readonly quick: boolean
  readonly durationSeconds: number
  readonly machine: {
    readonly cpus: number
    readonly memoryGiB: number
    readonly kernel: string
    readonly node: string
    /** 1-minute load average at the start and end of the run: other work on the machine skews every figure. */
    readonly loadAverage: { readonly start: number, readonly end: number }
  }
  readonly versions: Readonly<Record<string, string>>
  readonly peersUnavailable: Readonly<Record<string, string>>
  readonly rows: readonly Row[]
}

export function cellValue (row: Row, column: Column): number | undefined {
  return row.cells[column]?.value
}

/**
 * `column`'s figure ÷ the reference's at the same thread count (or ÷ direct's); undefined when
 * either is missing or zero.
 */
export function ratio (row: Row, column: Column, against: 'direct' | 'reference' = 'reference'): number | undefined {
  const a = cellValue(row, column)
  const refColumn = against === 'direct' ? 'direct' : referenceColumn(row.reference, column)
  const b = refColumn === undefined ? undefined : cellValue(row, refColumn)
  if (a === undefined || b === undefined || b === 0) return undefined
  return a / b
}

export type Verdict = 'met' | 'missed' | 'n/a'

/** The figure a ratio target holds `column` (a linkgate column) to, before its factor. */
export function targetBase (row: Row, column: Column): number | undefined {
  const t = row.target
  if (t === undefined || t.kind !== 'ratio') return undefined
  const n = columnThreads(column)
  if (t.against !== 'best-proxy') {
    const c = referenceColumn(t.against, column)
    return c === undefined ? undefined : cellValue(row, c)
  }
  const candidates = [cellValue(row, `haproxy-${n}`), cellValue(row, `nginx-${n}`)].filter((v): v is number => v !== undefined)
  if (candidates.length === 0) return undefined
  return row.better === 'higher' ? Math.max(...candidates) : Math.min(...candidates)
}

/** The row's target judged on linkgate's figure in `column` (×1 by default). */
export function evaluateTarget (row: Row, column: Column = 'linkgate-1'): Verdict {
  const t = row.target
  const value = cellValue(row, column)
  if (t === undefined || value === undefined) return 'n/a'
  if (t.kind === 'absolute') return value <= t.max ? 'met' : 'missed'
  const base = targetBase(row, column)
  if (base === undefined || base === 0) return 'n/a'
  const r = value / base
  if (t.min !== undefined && r < t.min) return 'missed'
  if (t.max !== undefined && r > t.max) return 'missed'
  return 'met'
}

/** The verdicts of ×1 and ×2 as one cell: "×1 met, ×2 missed"; only columns the row has. */
export function verdictText (row: Row): string {
  if (row.target === undefined) return ''
  const parts = linkgateColumns.filter((c) => row.cells[c] !== undefined).map((c) => `×${columnThreads(c)} ${evaluateTarget(row, c)}`)
  return parts.length === 0 ? 'n/a' : parts.join(', ')
}
