// Child processes for the bench: one-shot tools (bounded by a kill timer) and daemons (each in
// its own process group, so nginx's workers go with their master, and a crash of the harness
// still ends everything it started).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants, readFileSync, readdirSync } from 'node:fs'
import { connect } from 'node:net'
import { delimiter, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

/** An executable by name: PATH first, then sbin (haproxy, nginx and dnsmasq live there). */
export function findTool (name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/local/sbin']
  for (const dir of dirs) {
    if (dir === '') continue
    const file = join(dir, name)
    try {
      accessSync(file, constants.X_OK)
      return file
    } catch {}
  }
  return undefined
}

export interface RunResult {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
  readonly timedOut: boolean
}

/** Runs a tool to completion; past `timeoutMs` it gets SIGTERM, then SIGKILL 2 s later. */
export function run (cmd: string, args: readonly string[], options: { timeoutMs: number, cwd?: string }): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    let timedOut = false
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGTERM')
      setTimeout(() => child.kill('SIGKILL'), 2000).unref()
    }, options.timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      resolve({ code: null, signal: null, stdout, stderr: stderr + String(err.message), timedOut })
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, timedOut })
    })
  })
}

const live = new Set<Daemon>()
let exitHookInstalled = false
function installExitHook (): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on('exit', () => {
    for (const d of live) d.killNow()
  })
}

/** A long-running server started by the harness. Keeps the tail of its output for error messages. */
export class Daemon {
  readonly name: string
  readonly child: ChildProcess
  readonly exited: Promise<void>
  #output = ''
  #done = false

  /** `stdin: 'pipe'` gives the child a pipe that closes when the harness dies (the node helpers watch it). */
  constructor (name: string, cmd: string, args: readonly string[], options: { cwd?: string, stdin?: 'pipe' | 'ignore', env?: NodeJS.ProcessEnv } = {}) {
    installExitHook()
    this.name = name
    this.child = spawn(cmd, args, { cwd: options.cwd, env: options.env, stdio: [options.stdin ?? 'ignore', 'pipe', 'pipe'], detached: true })
    this.child.stdin?.on('error', () => {})
    const keep = (s: string): void => {
      this.#output = (this.#output + s).slice(-8192)
    }
    this.child.stdout?.setEncoding('utf8').on('data', keep)
    this.child.stderr?.setEncoding('utf8').on('data', keep)
    this.child.on('error', (err) => keep(`\nspawn error: ${err.message}\n`))
    this.exited = new Promise((resolve) => {
      this.child.on('close', () => {
        this.#done = true
        live.delete(this)
        resolve()
      })
    })
    live.add(this)
  }

  get pid (): number {
    if (this.child.pid === undefined) throw new Error(`${this.name}: not started: ${this.#output.trim()}`)
    return this.child.pid
  }

  get running (): boolean { return !this.#done && this.child.pid !== undefined }

  /** Everything printed so far (the last 8 KiB). */
  get printed (): string { return this.#output }

  /** The last lines the daemon printed, for a reason when it fails. */
  output (lines = 6): string {
    return this.#output.trim().split('\n').slice(-lines).join('\n')
  }

  /** SIGTERM to the process group, SIGKILL after `graceMs`. */
  async stop (graceMs = 5000): Promise<void> {
    if (!this.running) return
    this.#signal('SIGTERM')
    const timer = setTimeout(() => this.#signal('SIGKILL'), graceMs)
    await this.exited
    clearTimeout(timer)
    // nginx workers finish after their master; give the group a moment, then make sure.
    await sleep(50)
    this.#signal('SIGKILL')
  }

  killNow (): void {
    this.#signal('SIGKILL')
  }

  #signal (signal: NodeJS.Signals): void {
    const pid = this.child.pid
    if (pid === undefined) return
    try {
      process.kill(-pid, signal)
    } catch {}
  }
}

/** Polls `probe` until it returns true; throws after `timeoutMs` with `what` in the message. */
export async function waitFor (what: string, timeoutMs: number, probe: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await probe()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(50)
  }
}

export function tcpAccepts (host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port })
    const done = (ok: boolean): void => {
      clearTimeout(timer)
      socket.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

/** Resident set size in KiB of `pid` plus, with `tree`, every descendant (nginx workers). */
export function rssKiB (pid: number, tree = true): number {
  const pids = tree ? [pid, ...descendants(pid)] : [pid]
  let total = 0
  for (const p of pids) {
    try {
      const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'))
      if (m?.[1] !== undefined) total += Number(m[1])
    } catch {}
  }
  return total
}

export interface CpuTime {
  readonly userMs: number
  readonly systemMs: number
}

let clockTicks: number | undefined
/** /proc counts CPU time in clock ticks; 100 per second on every common Linux build. */
function ticksPerSecond (): number {
  if (clockTicks === undefined) {
    let n = Number.NaN
    try {
      n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 2000 }).trim())
    } catch {}
    clockTicks = Number.isInteger(n) && n > 0 ? n : 100
  }
  return clockTicks
}

/**
 * CPU time used so far by `pid` plus, with `tree`, every live descendant (nginx workers):
 * utime and stime (fields 14 and 15 of /proc/PID/stat), which cover all of a process's threads.
 * A process that is gone by the time it is read counts nothing.
 */
export function cpuTime (pid: number, tree = true): CpuTime {
  const pids = tree ? [pid, ...descendants(pid)] : [pid]
  const hz = ticksPerSecond()
  let user = 0
  let system = 0
  for (const p of pids) {
    try {
      // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
      // What follows is field 3 onwards, so fields 14 and 15 are at index 11 and 12.
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      user += Number(fields[11])
      system += Number(fields[12])
    } catch {}
  }
  return { userMs: user * 1000 / hz, systemMs: system * 1000 / hz }
}

/**
 * Runs `load` and returns its result with the CPU time `pid`'s processes used meanwhile; no
 * `cpu` without a pid (direct: no proxy process).
 */
export async function measureCpu<T> (pid: number | undefined, load: () => Promise<T>): Promise<{ result: T, cpu?: CpuTime }> {
  if (pid === undefined) return { result: await load() }
  const start = cpuTime(pid)
  const result = await load()
  const end = cpuTime(pid)
  return { result, cpu: { userMs: end.userMs - start.userMs, systemMs: end.systemMs - start.systemMs } }
}

function descendants (root: number): number[] {
  const children = new Map<number, number[]>()
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      // Field 4 of /proc/PID/stat is the parent; the command name (field 2) may hold spaces.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      const list = children.get(ppid) ?? []
      list.push(Number(entry))
      children.set(ppid, list)
    } catch {}
  }
  const out: number[] = []
  const stack = [root]
  while (stack.length > 0) {
    for (const c of children.get(stack.pop() as number) ?? []) {
      out.push(c)
      stack.push(c)
    }
  }
  return out
}
