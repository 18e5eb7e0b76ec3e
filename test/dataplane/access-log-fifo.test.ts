// log.access naming a FIFO: open(2) for writing blocks until a reader comes, which hung `start`
// before any listener was up. A FIFO with no reader is now a clear error at once; with a reader
// (a real `cat` process here) the lines arrive.
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { createAccessLog, type AccessLogEntry } from '../../src/dataplane/access-log.ts'

const entry: AccessLogEntry = {
  endpointId: 'vpce-fifo', serviceId: 'vpcesvc-fifo', protocol: 'TCP', terminalPort: 9000,
  client: '127.0.0.1:1', backendId: null, backendAddress: null, zone: null,
  bytesToBackend: 0, bytesToClient: 0, durationMs: 1, closeReason: 'connect_failed'
}

t.test('a FIFO nobody reads fails at once, naming log.access and why', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-fifo-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const fifo = join(dir, 'access.fifo')
  execFileSync('mkfifo', [fifo])
  const started = Date.now()
  t.throws(() => createAccessLog(fifo), /log\.access: cannot open .*access\.fifo: a FIFO that no process reads/)
  t.ok(Date.now() - started < 1000, 'did not wait for a reader')
})

t.test('a FIFO with a reader gets the lines', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-fifo-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const fifo = join(dir, 'access.fifo')
  execFileSync('mkfifo', [fifo])
  const reader = spawn('cat', [fifo], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { reader.kill() })
  let out = ''
  reader.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  // cat opens the FIFO soon after it starts; until then there is no reader.
  let log
  for (let i = 0; i < 100 && log === undefined; i++) {
    try { log = createAccessLog(fifo) } catch { await new Promise((resolve) => setTimeout(resolve, 20)) }
  }
  if (log === undefined) throw new Error('cat never opened the FIFO')
  log.write(entry)
  await log.close(2000)
  await once(reader, 'close')
  const line = JSON.parse(out.trim()) as Record<string, unknown>
  t.equal(line.endpointId, 'vpce-fifo')
  t.equal(line.msg, 'access')
})
