// A run's results as Markdown (two tables: the figures, then their ratios) and as an SVG chart
// of the ratios to each row's reference (written by hand: a chart library would be the bench's
// only dependency).
import { columnTitle, columns, ratio, referenceColumn, referenceTitle, targetBase, verdictText, type Column, type Row, type RunResults } from './results.ts'

export function formatNumber (n: number): string {
  if (!Number.isFinite(n)) return String(n)
  const abs = Math.abs(n)
  if (abs >= 1000) return Math.round(n).toLocaleString('en-US')
  if (abs >= 100) return n.toFixed(0)
  if (abs >= 10) return n.toFixed(1)
  if (abs >= 1) return n.toFixed(2)
  if (abs === 0) return '0'
  return n.toPrecision(2)
}

/** Errors and loss are counts of failures (mostly 0) and `×` rows are ratios already. */
function ratioWorthy (row: Row): boolean {
  // A linkgate-only row (case 8) has nothing to be divided by.
  return row.unit !== '×' && row.unit !== '%' && row.unit !== 'count' && row.reference !== 'linkgate'
}

const formatRatio = (r: number | undefined): string => (r === undefined ? '—' : `${r.toFixed(2)}×`)

/** Columns that hold at least one figure or note in the run. */
function usedColumns (rows: readonly Row[]): Column[] {
  return columns.filter((c) => rows.some((r) => r.cells[c] !== undefined))
}

function cellText (row: Row, column: Column): string {
  const cell = row.cells[column]
  if (cell === undefined) return ''
  if (cell.value === undefined) return 'n/a'
  return formatNumber(cell.value)
}

/** Cell notes and the row's note; a peer's "not available" is said once, above the tables. */
function rowNotes (row: Row, unavailable: Readonly<Record<string, string>>): string {
  const notes: string[] = []
  for (const c of columns) {
    const note = row.cells[c]?.note
    if (note !== undefined && !(unavailable[c] !== undefined && note.startsWith('not available:'))) notes.push(`${columnTitle[c]}: ${note}`)
  }
  if (row.note !== undefined) notes.push(row.note)
  return notes.join('; ').replaceAll('|', '\\|').replaceAll('\n', ' ')
}

export function toMarkdown (run: RunResults): string {
  const used = usedColumns(run.rows)
  const out: string[] = []
  out.push(`# linkgate bench, ${run.date}${run.quick ? ' (quick)' : ''}`, '')
  out.push(`${run.machine.cpus} CPUs, ${run.machine.memoryGiB} GiB, Linux ${run.machine.kernel}, Node ${run.machine.node}; ` +
    `the run took ${Math.round(run.durationSeconds)} s. Everything on loopback, load generators and servers sharing the same cores; ` +
    `1-minute load average ${run.machine.loadAverage.start} at the start, ${run.machine.loadAverage.end} at the end` +
    (run.machine.loadAverage.start > 0.5 * run.machine.cpus ? ' (**busy machine: figures are low and noisy**)' : '') + '.')
  const versions = Object.entries(run.versions).map(([k, v]) => `${k} ${v}`).join(', ')
  if (versions !== '') out.push('', `Versions: ${versions}.`)
  for (const [peer, reason] of Object.entries(run.peersUnavailable)) out.push('', `**${columnTitle[peer as Column] ?? peer} not available**: ${reason}`)

  out.push('', '## Figures', '')
  out.push(`| case | metric | ${used.map((c) => columnTitle[c]).join(' | ')} | target | verdict | notes |`)
  out.push(`|---|---|${used.map(() => '--:').join('|')}|---|---|---|`)
  for (const row of run.rows) {
    const target = row.target?.text ?? ''
    const verdict = verdictText(row)
    out.push(`| ${row.caseId}. ${row.caseName} | ${row.metric} (${row.unit}) | ${used.map((c) => cellText(row, c)).join(' | ')} | ${target} | ${verdict} | ${rowNotes(row, run.peersUnavailable)} |`)
  }

  out.push('', '## Ratios', '')
  out.push('Each figure divided by the row\'s reference at the same thread count (HAProxy; nginx for UDP; dnsmasq for DNS serving), and by direct. ' +
    'For latency, loss, memory and CPU time, lower is better, so a ratio below 1 is the better one.', '')
  const proxies = used.filter((c) => c !== 'direct')
  out.push(`| case | metric | reference | ${proxies.map((c) => `${columnTitle[c]} ÷ ref`).join(' | ')} | ${proxies.map((c) => `${columnTitle[c]} ÷ direct`).join(' | ')} |`)
  out.push(`|---|---|---|${proxies.map(() => '--:').join('|')}|${proxies.map(() => '--:').join('|')}|`)
  for (const row of run.rows) {
    if (!ratioWorthy(row)) continue
    const toRef = proxies.map((c) => (c === referenceColumn(row.reference, c) ? (row.cells[c]?.value !== undefined ? '1.00×' : '—') : formatRatio(ratio(row, c))))
    const toDirect = proxies.map((c) => formatRatio(ratio(row, c, 'direct')))
    out.push(`| ${row.caseId} | ${row.metric} | ${referenceTitle[row.reference]} | ${toRef.join(' | ')} | ${toDirect.join(' | ')} |`)
  }
  out.push('')
  return out.join('\n')
}

const colors: Readonly<Record<Column, string>> = {
  direct: '#9e9e9e',
  'haproxy-1': '#1f77b4',
  'haproxy-2': '#6baed6',
  'nginx-1': '#2ca02c',
  'nginx-2': '#98df8a',
  dnsmasq: '#9467bd',
  'linkgate-0': '#8c564b',
  'linkgate-1': '#ff7f0e',
  'linkgate-2': '#fdae6b'
}

function escapeXml (s: string): string {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('"', '&quot;')
}

/** Relative performance to the reference, higher is better: value ÷ ref, or ref ÷ value for "lower is better". */
export function relative (row: Row, column: Column): number | undefined {
  const r = ratio(row, column)
  if (r === undefined) return undefined
  if (row.better === 'higher') return r
  return r === 0 ? undefined : 1 / r
}

/**
 * Rows worth a bar: those with a target (issue 8), when a reference figure exists. The other
 * rows (p50, CPU per operation, case 7) would more than double the chart; the Markdown has them.
 */
function chartRows (run: RunResults): Row[] {
  return run.rows.filter((row) => row.target !== undefined && ratioWorthy(row) &&
    linkgateHasReference(row))
}

/** A row with a reference figure for at least one of linkgate's columns. */
function linkgateHasReference (row: Row): boolean {
  return (['linkgate-1', 'linkgate-2'] as const).some((c) => {
    const ref = referenceColumn(row.reference, c)
    const v = ref === undefined ? undefined : row.cells[ref]?.value
    return v !== undefined && v !== 0
  })
}

/** Where linkgate's target for `column` sits on the chart's scale (its reference = 1, higher is better). */
export function targetRelative (row: Row, column: Column): number | undefined {
  const t = row.target
  const refColumn = referenceColumn(row.reference, column)
  const ref = refColumn === undefined ? undefined : row.cells[refColumn]?.value
  if (t === undefined || ref === undefined || ref === 0) return undefined
  const toRelative = (value: number): number | undefined => (row.better === 'higher' ? value / ref : value === 0 ? undefined : ref / value)
  if (t.kind === 'absolute') return toRelative(t.max)
  const base = targetBase(row, column)
  const factor = t.min ?? t.max
  if (base === undefined || factor === undefined) return undefined
  return toRelative(base * factor)
}

export function toSvg (run: RunResults): string {
  const rows = chartRows(run)
  const width = 960
  const labelWidth = 300
  const plotWidth = 520
  const barHeight = 13
  const top = 70
  const maxRatio = Math.max(2, ...rows.flatMap((row) => columns.map((c) => Math.min(relative(row, c) ?? 0, 4))))
  const scale = plotWidth / maxRatio
  const parts: string[] = []
  let y = top
  for (const row of rows) {
    const present = columns.filter((c) => row.cells[c] !== undefined)
    const groupHeight = present.length * (barHeight + 2) + 14
    parts.push(`<text x="${labelWidth - 10}" y="${y + groupHeight / 2}" text-anchor="end" class="label">${escapeXml(`${row.caseId}. ${row.metric}`)}</text>`)
    parts.push(`<text x="${labelWidth - 10}" y="${y + groupHeight / 2 + 13}" text-anchor="end" class="sub">${escapeXml(`${row.unit}, ${row.better} is better, vs ${referenceTitle[row.reference]} at equal threads`)}</text>`)
    let by = y + 5
    for (const c of present) {
      const rel = relative(row, c)
      const value = row.cells[c]?.value
      if (rel === undefined || value === undefined) {
        parts.push(`<text x="${labelWidth + 4}" y="${by + barHeight - 3}" class="na">${escapeXml(`${columnTitle[c]}: ${row.cells[c]?.note ?? 'n/a'}`.slice(0, 90))}</text>`)
      } else {
        const w = Math.max(1, Math.min(rel, maxRatio) * scale)
        parts.push(`<rect x="${labelWidth}" y="${by}" width="${w.toFixed(1)}" height="${barHeight}" fill="${colors[c]}"><title>${escapeXml(`${columnTitle[c]}: ${formatNumber(value)} ${row.unit}`)}</title></rect>`)
        parts.push(`<text x="${(labelWidth + w + 4).toFixed(1)}" y="${by + barHeight - 3}" class="val">${escapeXml(`${rel.toFixed(2)}×  ${columnTitle[c]} ${formatNumber(value)} ${row.unit}`)}</text>`)
      }
      const goal = c === 'linkgate-1' || c === 'linkgate-2' ? targetRelative(row, c) : undefined
      if (goal !== undefined && goal <= maxRatio) {
        const gx = (labelWidth + goal * scale).toFixed(1)
        parts.push(`<line x1="${gx}" x2="${gx}" y1="${by - 2}" y2="${by + barHeight + 2}" class="goal"><title>${escapeXml(`target: ${row.target?.text ?? ''}`)}</title></line>`)
      }
      by += barHeight + 2
    }
    y += groupHeight + 8
    parts.push(`<line x1="20" x2="${width - 20}" y1="${y - 4}" y2="${y - 4}" class="sep"/>`)
  }
  const height = y + 40
  const ticks: string[] = []
  for (let t = 0; t <= maxRatio + 1e-9; t += 0.5) {
    const x = labelWidth + t * scale
    ticks.push(`<line x1="${x}" x2="${x}" y1="${top - 6}" y2="${y - 4}" class="${t === 1 ? 'one' : 'grid'}"/>`)
    ticks.push(`<text x="${x}" y="${top - 10}" text-anchor="middle" class="sub">${t.toFixed(1)}×</text>`)
  }
  const legend = columns.map((c, i) => `<rect x="${20 + i * 100}" y="${height - 28}" width="12" height="12" fill="${colors[c]}"/><text x="${36 + i * 100}" y="${height - 18}" class="label">${columnTitle[c]}</text>`)
  const gx = 26 + columns.length * 100
  legend.push(`<line x1="${gx}" x2="${gx}" y1="${height - 30}" y2="${height - 14}" class="goal"/><text x="${gx + 10}" y="${height - 18}" class="label">linkgate's target (issues 8, 15)</text>`)
  const unavailable = Object.keys(run.peersUnavailable).length > 0
    ? ` (not available: ${Object.keys(run.peersUnavailable).join(', ')})`
    : ''
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">`,
    '<style>.label{font-size:12px;fill:#222}.sub{font-size:10px;fill:#666}.val{font-size:10px;fill:#222}.na{font-size:10px;fill:#999;font-style:italic}' +
      '.grid{stroke:#ddd;stroke-width:1}.one{stroke:#000;stroke-width:1.5;stroke-dasharray:4 3}.sep{stroke:#eee}' +
      '.goal{stroke:#d62728;stroke-width:3}.val,.na{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}</style>',
    '<rect width="100%" height="100%" fill="#fff"/>',
    `<text x="20" y="24" class="label" font-size="15" font-weight="bold">${escapeXml(`linkgate bench ${run.date}${run.quick ? ' (quick)' : ''}: relative to the reference (1.0×), higher is better${unavailable}`)}</text>`,
    `<text x="20" y="42" class="sub">${escapeXml('Rows with a target; the Markdown has every row. Reference at equal threads (×1, ×2): HAProxy (TCP), nginx (UDP), dnsmasq (DNS serving). Latency and memory inverted (ref ÷ value). Bars cut at 4×.')}</text>`,
    ...ticks,
    ...parts,
    ...legend,
    '</svg>',
    ''
  ].join('\n')
}
