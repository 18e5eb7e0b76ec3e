// Plain-text tables as kubectl prints them: an upper-case header, columns padded with spaces to
// the widest cell plus three, no borders, so `awk '{print $1}'` and `grep` work on the output.

export type Cell = string | number | boolean | undefined | null

/** Control characters in a value (a name from the API) must not move the cursor of a terminal. */
const printable = (value: Cell): string =>
  value === undefined || value === null || value === '' ? '-' : String(value).replace(/[\x00-\x1f\x7f]/g, '?')

export function table (header: readonly string[], rows: ReadonlyArray<readonly Cell[]>): string {
  const cells = [header.map((h) => h.toUpperCase()), ...rows.map((r) => header.map((_, i) => printable(r[i])))]
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] as string).length)))
  return cells
    .map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd((widths[i] as number) + 3))).join('').trimEnd())
    .join('\n') + '\n'
}
