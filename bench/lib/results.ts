// The shape of a bench run's results, the targets of issue 8, and how ratios are taken.

/** A column of the results table: a way to reach the backend, or a DNS server. */
export type Column = 'direct' | 'haproxy' | 'nginx' | 'dnsmasq' | 'linkgate'
export const columns: readonly Column[] = ['direct', 'haproxy', 'nginx', 'dnsmasq', 'linkgate']
export const columnTitle: Readonly<Record<Column, string>> = {
  direct: 'direct',
  haproxy: 'HAProxy',
  nginx: 'nginx',
  dnsmasq: 'dnsmasq',
  linkgate: 'linkgate'
}

/** A measured figure, or the reason there is none (`not available: ...`, `n/a: ...`). */
export interface Cell {
  /** The median of `samples` when there were several rounds. */
  readonly value?: number
  readonly samples?: readonly number[]
  readonly note?: string
}

/**
 * A target from issue 8. `ratio`: linkgate ÷ `against` (or ÷ the better of HAProxy and nginx)
 * must be ≥ `min` / ≤ `max`; `absolute`: linkgate's value itself must be ≤ `max`.
 */
export type Target =
  | { readonly kind: 'ratio', readonly against: Column | 'best-proxy', readonly min?: number, readonly max?: number, readonly text: string }
  | { readonly kind: 'absolute', readonly max: number, readonly text: string }

export interface Row {
  readonly caseId: number
  readonly caseName: string
  readonly metric: string
  readonly unit: string
  readonly better: 'higher' | 'lower'
  /** The column the ratios are taken against: HAProxy, or nginx for UDP, dnsmasq for DNS. */
  readonly reference: Column
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

/** `column`'s figure ÷ the reference's (or ÷ direct's); undefined when either is missing or zero. */
export function ratio (row: Row, column: Column, against: Column | 'reference' = 'reference'): number | undefined {
  const a = cellValue(row, column)
  const b = cellValue(row, against === 'reference' ? row.reference : against)
  if (a === undefined || b === undefined || b === 0) return undefined
  return a / b
}

export type Verdict = 'met' | 'missed' | 'n/a'

export function evaluateTarget (row: Row): Verdict {
  const t = row.target
  const value = cellValue(row, 'linkgate')
  if (t === undefined || value === undefined) return 'n/a'
  if (t.kind === 'absolute') return value <= t.max ? 'met' : 'missed'
  let base: number | undefined
  if (t.against === 'best-proxy') {
    const candidates = [cellValue(row, 'haproxy'), cellValue(row, 'nginx')].filter((v): v is number => v !== undefined)
    if (candidates.length > 0) base = row.better === 'higher' ? Math.max(...candidates) : Math.min(...candidates)
  } else {
    base = cellValue(row, t.against)
  }
  if (base === undefined || base === 0) return 'n/a'
  const r = value / base
  if (t.min !== undefined && r < t.min) return 'missed'
  if (t.max !== undefined && r > t.max) return 'missed'
  return 'met'
}
