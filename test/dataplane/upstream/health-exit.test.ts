// close() leaves no timer or socket behind: a child process running a checker exits by itself.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { startBackends, TestBackend } from './health-helpers.ts'

const fixture = fileURLToPath(new URL('../../fixtures/health-exit.ts', import.meta.url))
const KILL_AFTER_MS = 15_000

t.test('a process whose checker was closed mid-probe exits on its own', async (t) => {
  const [up] = await startBackends(t, ['127.24.7.1'], { kind: 'tcp' }) as [TestBackend]
  const [hang] = await startBackends(t, ['127.24.7.3'], { kind: 'hang' }) as [TestBackend]
  const spec = { tcpPort: up.port, up: up.host, down: '127.24.7.2', hang: hang.host, hangPort: hang.port }
  const child = spawn(process.execPath, [fixture, t.testdir(), JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  let killed = false
  const killer = setTimeout(() => { killed = true; child.kill('SIGKILL') }, KILL_AFTER_MS)
  t.teardown(() => { clearTimeout(killer); child.kill('SIGKILL') })
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    child.on('exit', (c, s) => { resolve([c, s]) })
  })
  clearTimeout(killer)

  t.notOk(killed, `exited by itself before the ${KILL_AFTER_MS} ms kill (stderr: ${stderr.trim()})`)
  t.equal(code, 0, 'exit code 0')
  t.equal(signal, null)
  const report = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as {
    closed?: boolean, before?: { up: string, down: string, probeSockets: number }, resourcesAfter?: string[]
  }
  t.equal(report.closed, true, 'close() resolved')
  t.match(report.before, { up: 'healthy', down: 'unhealthy' }, 'probing ran before close')
  t.ok((report.before?.probeSockets ?? 0) >= 1, 'a probe was in flight at close')
  t.same(report.resourcesAfter?.filter((r) => r === 'TCPSocketWrap' || r === 'TCPWrap' || r === 'Timeout'), [],
    `no socket or timer keeps the loop alive after close (active: ${report.resourcesAfter?.join(', ')})`)
  t.ok(hang.accepted.length >= 1, 'the hanging backend was probed')
})
