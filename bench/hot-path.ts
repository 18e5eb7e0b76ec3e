// Hot-path experiments (issue 15): linkgate alone, through its CLI (`workers: 1` unless a
// variant says otherwise), against the bench's nginx backend, with one change per variant —
// Node flags, environment — measured side by side, interleaved rounds:
//
//   node bench/hot-path.ts [--variants base,uring,...] [--rounds 2] [--seconds 3] [--strace] [--sessions 4000]
//
// Per variant: keep-alive (wrk -c50) and Connection: close rates, p99, linkgate's CPU µs per
// request (user/kernel, /proc over all threads); with --sessions, RSS growth per idle session
// (case 6's method, on the fresh process); with --strace, `strace -f -c` over one close run (syscalls per connection).
// Addresses and ports are the bench's (127.50.0.0/16): never run it beside `bench/run.ts`.
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { spawn } from 'node:child_process'
import { median } from './cases/context.ts'
import { parseWrk } from './lib/parse.ts'
import { findTool, measureCpu, rssKiB, run, type Daemon } from './lib/proc.ts'
import { linkgateInstance, ports } from './lib/topology.ts'
import { startBackends } from './peers/backends.ts'
import { startLinkgate, type LinkgateOptions } from './peers/linkgate.ts'

interface Variant { readonly name: string, readonly options: LinkgateOptions }
const variants: Record<string, Variant> = {
  base: { name: 'base (workers 1, shebang flags)', options: { workers: 1 } },
  w2: { name: 'workers 2', options: { workers: 2 } },
  oneloop: { name: 'one loop (no workers)', options: { workers: 0 } },
  uring: { name: 'UV_USE_IO_URING=1', options: { workers: 1, env: { UV_USE_IO_URING: '1' } } },
  nouring: { name: 'UV_USE_IO_URING=0', options: { workers: 1, env: { UV_USE_IO_URING: '0' } } },
  semi1: { name: '--max-semi-space-size=1', options: { workers: 1, nodeArgs: ['--max-semi-space-size=1'] } },
  semi16: { name: '--max-semi-space-size=16', options: { workers: 1, nodeArgs: ['--max-semi-space-size=16'] } },
  semi32: { name: '--max-semi-space-size=32', options: { workers: 1, nodeArgs: ['--max-semi-space-size=32'] } },
  semi16w2: { name: 'workers 2, --max-semi-space-size=16', options: { workers: 2, nodeArgs: ['--max-semi-space-size=16'] } },
  semi1w2: { name: 'workers 2, --max-semi-space-size=1', options: { workers: 2, nodeArgs: ['--max-semi-space-size=1'] } },
  // glibc gives each thread that allocates its own malloc arena: the worker's socket wraps
  // live in a second arena (a question for idle memory per session).
  arena1: { name: 'MALLOC_ARENA_MAX=1', options: { workers: 1, env: { MALLOC_ARENA_MAX: '1' } } },
  arena1w2: { name: 'workers 2, MALLOC_ARENA_MAX=1', options: { workers: 2, env: { MALLOC_ARENA_MAX: '1' } } }
}

const { values } = parseArgs({
  options: {
    variants: { type: 'string', default: 'base,uring' },
    rounds: { type: 'string', default: '2' },
    seconds: { type: 'string', default: '3' },
    sessions: { type: 'string', default: '0' },
    strace: { type: 'boolean', default: false },
    'cpu-prof': { type: 'boolean', default: false }
  },
  strict: true
})
const chosen = values.variants.split(',').map((v) => {
  const found = variants[v]
  if (found === undefined) throw new Error(`unknown variant ${v}: one of ${Object.keys(variants).join(', ')}`)
  return [v, found] as const
})
const seconds = Number(values.seconds)
const wrkBin = findTool('wrk')
if (wrkBin === undefined) throw new Error('wrk not installed')
const log = (m: string): void => { process.stderr.write(`[hot-path] ${m}\n`) }

async function wrk (address: string, closeEach: boolean, d: number): Promise<ReturnType<typeof parseWrk>> {
  const r = await run(wrkBin as string, ['-t', '2', '-c', '50', '-d', `${d}s`, '--latency', '--timeout', '2s',
    ...(closeEach ? ['-H', 'Connection: close'] : []), `http://${address}:${ports.http}/`], { timeoutMs: (d + 15) * 1000 })
  if (r.code !== 0) throw new Error(`wrk: ${r.stderr}`)
  return parseWrk(r.stdout)
}

async function idleSessions (address: string, pid: number, count: number): Promise<number> {
  await sleep(1000)
  const before = rssKiB(pid)
  const child = spawn(process.execPath, [join(import.meta.dirname, 'lib/idle-clients.ts'), address, String(ports.idle), String(count), '40000'], { stdio: ['pipe', 'pipe', 'inherit'] })
  let line = ''
  for await (const chunk of child.stdout.setEncoding('utf8')) {
    line += chunk as string
    if (line.includes('\n')) break
  }
  await sleep(1000)
  const after = rssKiB(pid)
  const { opened } = JSON.parse(line) as { opened: number }
  child.stdin.end('close\n')
  await new Promise((resolve) => child.on('exit', resolve))
  await sleep(1000)
  return (after - before) / opened
}

async function strace (pid: number, address: string): Promise<string> {
  const bin = findTool('strace')
  if (bin === undefined) return 'strace not installed'
  const tracer = spawn(bin, ['-f', '-c', '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] })
  let out = ''
  tracer.stderr.setEncoding('utf8').on('data', (s: string) => { out += s })
  await sleep(500)
  const r = await wrk(address, true, 2)
  tracer.kill('SIGINT')
  await new Promise((resolve) => tracer.on('exit', resolve))
  return `${r.requests} connections\n${out}`
}

interface Sample { kaRps: number, kaP99: number, kaUser: number, kaSys: number, ccRps: number, ccP99: number, ccUser: number, ccSys: number, kib?: number }

async function main (): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-hot-path-'))
  const backends = await startBackends(dir)
  const samples = new Map<string, Sample[]>()
  let n = 0
  try {
    for (let round = 0; round < Number(values.rounds); round++) {
      for (const [key, v] of chosen) {
        const sub = join(dir, `${key}-${++n}`)
        await mkdir(sub, { recursive: true })
        const profDir = join(sub, 'prof')
        const options: LinkgateOptions = values['cpu-prof'] ? { ...v.options, nodeArgs: [...(v.options.nodeArgs ?? []), '--cpu-prof', `--cpu-prof-dir=${profDir}`] } : v.options
        const daemon: Daemon = await startLinkgate(sub, options)
        const address = linkgateInstance(v.options.workers ?? 1).endpoint
        try {
          // Idle sessions first, on the fresh process (case 6's method): after the load runs, the
          // heap has room to spare and would hide them.
          const kib = Number(values.sessions) > 0 ? await idleSessions(address, daemon.pid, Number(values.sessions)) : undefined
          await wrk(address, false, 1) // warm-up
          const ka = await measureCpu(daemon.pid, () => wrk(address, false, seconds))
          const cc = await measureCpu(daemon.pid, () => wrk(address, true, seconds))
          const per = (ms: number | undefined, ops: number): number => (ms ?? Number.NaN) * 1000 / ops
          const s: Sample = {
            kaRps: ka.result.requestsPerSecond, kaP99: ka.result.p99Ms, kaUser: per(ka.cpu?.userMs, ka.result.requests), kaSys: per(ka.cpu?.systemMs, ka.result.requests),
            ccRps: cc.result.requestsPerSecond, ccP99: cc.result.p99Ms, ccUser: per(cc.cpu?.userMs, cc.result.requests), ccSys: per(cc.cpu?.systemMs, cc.result.requests)
          }
          if (kib !== undefined) s.kib = kib
          log(`${v.name}: keep-alive ${Math.round(s.kaRps)} req/s p99 ${s.kaP99.toFixed(2)} ms CPU ${s.kaUser.toFixed(1)}+${s.kaSys.toFixed(1)} µs; ` +
            `close ${Math.round(s.ccRps)} conn/s p99 ${s.ccP99.toFixed(2)} ms CPU ${s.ccUser.toFixed(1)}+${s.ccSys.toFixed(1)} µs${s.kib === undefined ? '' : `; ${s.kib.toFixed(2)} KiB/session`}`)
          samples.set(key, [...(samples.get(key) ?? []), s])
          if (values.strace && round === 0) log(`${v.name}: strace -f -c over a 2 s close run:\n${await strace(daemon.pid, address)}`)
        } finally {
          await daemon.stop()
        }
        if (values['cpu-prof']) log(`${v.name}: CPU profiles in ${profDir}`)
      }
    }
  } finally {
    await backends.stop()
    if (!values['cpu-prof']) await rm(dir, { recursive: true, force: true })
  }
  const cols: Array<[string, keyof Sample]> = [['keep-alive req/s', 'kaRps'], ['p99 ms', 'kaP99'], ['µs user', 'kaUser'], ['µs kernel', 'kaSys'],
    ['conn/s', 'ccRps'], ['p99 ms', 'ccP99'], ['µs user', 'ccUser'], ['µs kernel', 'ccSys'], ['KiB/session', 'kib']]
  const lines = [`| variant | ${cols.map((c) => c[0]).join(' | ')} |`, `|---|${cols.map(() => '--:').join('|')}|`]
  for (const [key, v] of chosen) {
    const list = samples.get(key) ?? []
    lines.push(`| ${v.name} | ${cols.map(([, k]) => {
      const xs = list.map((s) => s[k]).filter((x): x is number => x !== undefined)
      if (xs.length === 0) return ''
      const m = median(xs)
      return m >= 100 ? Math.round(m).toString() : m.toFixed(2)
    }).join(' | ')} |`)
  }
  process.stdout.write(lines.join('\n') + '\n')
}

main().catch((err: unknown) => {
  process.stderr.write(`hot-path: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
