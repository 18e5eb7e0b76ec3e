// Spawn the real gateway process (`node dist/main.js start --config FILE`), as a user would,
// and wait for its start-up banner to learn the bound addresses.
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'

export const ROOT = fileURLToPath(new URL('../../', import.meta.url))
export const MAIN = join(ROOT, 'dist', 'main.js')

export interface Gateway {
  proc: ChildProcess
  apiUrl: string
  dnsPort: number
  output: () => string
  /** Resolves with the exit code (or signal) once the process has ended. */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

interface Teardown { teardown (fn: () => unknown): void }

export async function writeConfig (dir: string, config: Record<string, unknown>): Promise<string> {
  const file = join(dir, 'config.yaml')
  await writeFile(file, stringify(config))
  return file
}

export async function startGateway (t: Teardown, configFile: string,
  options: { timeoutMs?: number, env?: NodeJS.ProcessEnv, wrapper?: readonly string[] } = {}): Promise<Gateway> {
  // `wrapper`: a command that execs the gateway, e.g. ['prlimit', '--nofile=1200:1200', '--'].
  const argv = [process.execPath, MAIN, 'start', '--config', configFile]
  const [command, ...args] = [...(options.wrapper ?? []), ...argv] as [string, ...string[]]
  const proc = spawn(command, args, {
    cwd: ROOT,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL') })
  let out = ''
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal }))
  })
  const started = new Promise<{ apiUrl: string, dnsPort: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not start within ${options.timeoutMs ?? 20000} ms:\n${out}`)), options.timeoutMs ?? 20000)
    const onData = (chunk: Buffer): void => {
      out += chunk.toString()
      // The start-up banner (printed whatever the log level) names the bound addresses.
      const apiMatch = /control API\s+(http:\/\/\S+)\/v1/.exec(out)
      const dnsMatch = /DNS\s+\S+ port (\d+)/.exec(out)
      if (apiMatch !== null && dnsMatch !== null) {
        clearTimeout(timer)
        resolve({ apiUrl: apiMatch[1] as string, dnsPort: Number(dnsMatch[1]) })
      }
    }
    proc.stdout?.on('data', onData)
    proc.stderr?.on('data', (chunk: Buffer) => { out += chunk.toString() })
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`gateway exited (code ${code}, signal ${signal}) before starting:\n${out}`))
    })
  })
  const { apiUrl, dnsPort } = await started
  return { proc, apiUrl, dnsPort, output: () => out, exited }
}

export async function api (gw: { apiUrl: string }, method: string, path: string, token: string, body?: unknown): Promise<{ status: number, body: any }> {
  const res = await fetch(gw.apiUrl + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await res.text()
  return { status: res.status, body: text === '' ? undefined : JSON.parse(text) }
}
