// dnsperf against one server for a bounded time; shared by cases 4 and 5.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseDnsperf, type DnsperfResult } from '../lib/parse.ts'
import { run } from '../lib/proc.ts'
import type { BenchContext } from './context.ts'

/** The query file: every bench name, type A, in a loop (dnsperf repeats the file). */
export async function writeQueryFile (dir: string, names: readonly string[]): Promise<string> {
  const file = join(dir, 'queries.txt')
  await writeFile(file, names.map((n) => `${n} A\n`).join(''))
  return file
}

/** 4 clients (4 source ports, so 4 UDP flows through a proxy), 100 queries in flight. */
export async function dnsperfAgainst (ctx: BenchContext, address: string, port: number, queryFile: string): Promise<DnsperfResult> {
  const dnsperf = ctx.tools.dnsperf
  if (dnsperf === undefined) throw new Error('dnsperf not installed')
  const seconds = ctx.plan.seconds.dnsperf
  const r = await run(dnsperf, ['-s', address, '-p', String(port), '-d', queryFile, '-l', String(seconds), '-c', '4', '-q', '100', '-t', '1'], {
    timeoutMs: (seconds + 15) * 1000
  })
  if (r.timedOut) throw new Error(`dnsperf did not finish within ${seconds + 15} s`)
  return parseDnsperf(r.stdout + r.stderr)
}
