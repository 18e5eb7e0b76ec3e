// SPEC §10 "Local trouble is not the backend's fault", with descriptors really exhausted: a child
// process under `ulimit -n 80` (tcp-emfile-child.ts) runs a DataPlane without a connection
// budget and a HealthChecker; this process opens 150 connections to it. EMFILE on accept and
// on backend connects never crashes it, never closes the listener, counts as reason="overload",
// and neither the proxies nor the health probes hold it against the healthy backend.
// Addresses: 127.71.20.0/24.
import { spawn } from 'node:child_process'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t from 'tap'

t.test('out of descriptors: the listener survives, refusals count as overload, the healthy backend stays healthy', async (t) => {
  const child = spawn('bash', ['-c', 'ulimit -n 80 && exec "$0" "$1"', process.execPath, join(import.meta.dirname, 'tcp-emfile-child.ts')],
    { stdio: ['pipe', 'pipe', 'pipe'] })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
  const next = async (): Promise<Record<string, any>> => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
    const { value, done } = await lines.next()
    clearTimeout(timer)
    if (done === true) throw new Error(`child ended early: ${stderr.slice(0, 500)}`)
    return JSON.parse(value as string)
  }
  const ready = await next()
  t.equal(ready.healthBefore, 'healthy', 'the backend is healthy before the load')

  const clients: Socket[] = []
  t.teardown(() => { for (const s of clients) s.destroy() })
  for (let i = 0; i < 150; i++) {
    const s = connect({ host: '127.71.20.10', port: 7320 })
    s.on('error', () => {})
    s.write('x')
    clients.push(s)
  }
  await new Promise((resolve) => setTimeout(resolve, 1500)) // fifteen probe intervals
  child.stdin.write('peak\n')
  const peak = await next()
  t.ok(peak.overload > 0, `refusals for lack of descriptors count as reason="overload" (${peak.overload})`)
  t.equal(peak.healthAtPeak, 'healthy', 'the backend stays healthy')
  t.equal(peak.passiveFailures, 0, 'no failed connect held against it')
  t.ok(peak.acceptWarnings >= 1, 'the shortage is logged (rate-limited)')
  for (const s of clients) s.destroy()
  await new Promise((resolve) => setTimeout(resolve, 500))
  child.stdin.write('after\n')
  const after = await next()
  t.equal(after.served, 'after', 'the listener still serves once descriptors are free')
  t.equal(after.healthAfter, 'healthy')
  const exit = await new Promise<number | null>((resolve) => { if (child.exitCode !== null) resolve(child.exitCode); else child.on('exit', resolve) })
  t.equal(exit, 0, `the child process never crashed (stderr: ${stderr.trim().slice(0, 300)})`)
})
