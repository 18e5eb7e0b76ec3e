// Plain-text tables as kubectl prints them: an upper-case header, columns padded with spaces to
// the widest cell plus three, no borders, so `awk '{print $1}'` and `grep` work on the output.

export type Cell = string | number | boolean | undefined | null

/**
 * Characters a terminal acts on or that reorder what it shows: C0 (ESC, BEL, CR...), DEL, C1
 * (U+009B is an 8-bit CSI to many terminals), and the bidi/format controls that make text read
 * other than it is (U+202E). Text from a server never reaches a terminal with them.
 */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g

/** `text` with every such character shown as a visible \uXXXX escape. */
export const escapeControls = (text: string): string =>
  text.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)

/** Control characters in a value (a name from the API) must not move the cursor of a terminal. */
const printable = (value: Cell): string =>
  value === undefined || value === null || value === '' ? '-' : escapeControls(String(value))

export function table (header: readonly string[], rows: ReadonlyArray<readonly Cell[]>): string {
  const cells = [header.map((h) => h.toUpperCase()), ...rows.map((r) => header.map((_, i) => printable(r[i])))]
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] as string).length)))
  return cells
    .map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd((widths[i] as number) + 3))).join('').trimEnd())
    .join('\n') + '\n'
}
