// SPEC §10 "Local trouble is not the backend's fault", with descriptors really exhausted: a child
// process under `ulimit -n 80` (tcp-emfile-child.ts) runs a DataPlane without a connection
// budget and a HealthChecker; this process runs the echo backend. The child holds all its free
// descriptors but one, then none: EMFILE on a backend connect never crashes it, never closes
// the listener, counts as reason="overload", and neither the proxy nor the health probes hold
// it against the healthy backend. (EMFILE at accept is handled inside libuv, which accepts and
// closes the waiting connections with a reserved descriptor without telling Node.)
// Addresses: 127.71.20.0/24.
import { spawn } from 'node:child_process'
import { connect } from 'node:net'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t from 'tap'
import { startEchoServer } from '../helpers/dataplane-fixtures.ts'

t.test('out of descriptors: the listener survives, refusals count as overload, the healthy backend stays healthy', async (t) => {
  const echo = await startEchoServer(t, '127.71.20.20')
  const child = spawn('bash', ['-c', 'ulimit -n 80 && exec "$0" "$1" "$2"', process.execPath, join(import.meta.dirname, 'tcp-emfile-child.ts'), String(echo.port)],
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
  t.equal(ready.healthBefore, 'healthy', 'the backend is healthy before the shortage')
  const ask = async (command: string): Promise<Record<string, any>> => {
    child.stdin.write(command + '\n')
    return await next()
  }

  // One descriptor left: a connection is accepted with it and its backend connect meets EMFILE
  // (or libuv drops it at accept, or a probe holds it at that moment: then try again).
  const filled = await ask('fill')
  t.ok(filled.held > 0, `the child holds ${filled.held} descriptors`)
  let peak: Record<string, any> = {}
  for (let i = 0; i < 30; i++) {
    // Exactly one free descriptor before each try: a probe or a closing socket of the last try
    // may have moved the count by one since (a clean-clone CI run saw 30 tries without overload).
    if (i > 0) await ask('fill')
    const client = connect({ host: '127.71.20.10', port: 7320 })
    client.on('error', () => {})
    client.write('x')
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => { client.destroy(); resolve() }, 1000)
      client.on('close', () => { clearTimeout(timer); resolve() })
    })
    peak = await ask('peak')
    if (peak.overload > 0) break
  }
  t.ok(peak.overload > 0, `a backend connect that met EMFILE counts as reason="overload" (${JSON.stringify(peak)})`)
  t.ok(peak.proxyWarnings >= 1, 'and is logged')
  t.equal(peak.passiveFailures, 0, 'it is not held against the backend')

  // No descriptor left for ten probe intervals: every probe meets EMFILE, none is a verdict.
  t.same(await ask('squeeze'), { squeezed: true })
  await new Promise((resolve) => setTimeout(resolve, 1000))
  peak = await ask('peak')
  t.ok(peak.probeWarnings >= 1, `the health probes met the shortage (${JSON.stringify(peak)})`)
  t.equal(peak.health, 'healthy', 'the healthy backend stays healthy')
  t.equal(peak.passiveFailures, 0)

  await ask('release')
  const after = await ask('after')
  t.equal(after.served, 'after', 'the listener still serves once descriptors are free')
  t.equal(after.health, 'healthy')
  const exit = await new Promise<number | null>((resolve) => { if (child.exitCode !== null) resolve(child.exitCode); else child.on('exit', resolve) })
  t.equal(exit, 0, `the child process never crashed (stderr: ${stderr.trim().slice(0, 300)})`)
})
