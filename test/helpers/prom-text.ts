// Read values out of Prometheus text exposition: the sum of every sample of `name` whose labels
// include `labels`.
export function sampleSum (text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0
  let found = false
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue
    const m = /^([^{\s]+)(?:\{(.*)\})?\s+(\S+)/.exec(line)
    if (m === null || m[1] !== name) continue
    const have: Record<string, string> = {}
    for (const pair of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have[pair[1] as string] = pair[2] as string
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) {
      sum += Number(m[3])
      found = true
    }
  }
  return found ? sum : NaN
}
