// /healthz tells the truth about the state store: on a real full file system (a tmpfs the test
// mounts and fills) it answers 503 {"status":"degraded","reason"} naming the trouble, the API
// refuses changes, and once space is back and a change is written it is 200 again.
// Addresses: 127.84.0.0/16, ports 0.
import { open, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { api, startGateway, writeConfig } from '../helpers/gateway-process.ts'
import { mountTmpfs } from '../helpers/tmpfs.ts'

const PROVIDER_TOKEN = 'provider-dev-token'
const service = { portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 80 }] }

async function healthz (apiUrl: string): Promise<{ status: number, body: { status?: string, reason?: string } }> {
  const res = await fetch(`${apiUrl}/healthz`)
  return { status: res.status, body: await res.json() as { status?: string, reason?: string } }
}

async function until<T> (fn: () => Promise<T>, ok: (v: T) => boolean, ms: number): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const v = await fn()
    if (ok(v) || Date.now() > deadline) return v
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
}

/** Write zeros until the file system says ENOSPC. */
async function fill (file: string): Promise<void> {
  const handle = await open(file, 'w')
  const chunk = Buffer.alloc(64 * 1024)
  try {
    for (let i = 0; i < 10_000; i++) await handle.write(chunk)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
  } finally {
    await handle.close()
  }
}

t.test('a full disk under stateDir: /healthz 503 with the reason, changes refused; space back and a write: 200', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-health-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const mnt = join(dir, 'mnt')
  await mkdir(mnt)
  if (!mountTmpfs(t, mnt, '4m')) {
    if (process.env.CI === 'true') t.fail('cannot mount a tmpfs (tests run as root in CI)')
    else t.pass('needs mount', { skip: 'cannot mount a tmpfs here (not root?)' })
    return
  }
  const gw = await startGateway(t, await writeConfig(dir, {
    listen: { api: '127.84.0.20:0', dns: '127.84.0.20:0' },
    stateDir: join(mnt, 'state'),
    zones: ['zone-a'],
    subnets: [{ id: 'subnet-a', cidr: '127.84.4.0/24', zone: 'zone-a' }]
  }))
  t.teardown(async () => { gw.proc.kill('SIGKILL'); await gw.exited })
  t.same(await healthz(gw.apiUrl), { status: 200, body: { status: 'ok' } })
  t.equal((await api(gw, 'POST', '/v1/endpoint-services', PROVIDER_TOKEN, service)).status, 201)

  const filler = join(mnt, 'filler')
  await fill(filler)
  // The directory probe sees it within its 5 s reuse interval, before any change is tried.
  const full = await until(() => healthz(gw.apiUrl), (h) => h.status === 503, 8000)
  t.equal(full.status, 503, 'a full disk makes /healthz 503')
  t.equal(full.body.status, 'degraded')
  t.match(full.body.reason, /ENOSPC/, `the reason names it: ${full.body.reason}`)
  const refused = await api(gw, 'POST', '/v1/endpoint-services', PROVIDER_TOKEN, service)
  t.not(refused.status, 201, 'a change is refused while the disk is full')
  const after = await healthz(gw.apiUrl)
  t.equal(after.status, 503)
  t.match(after.body.reason, /could not be written|ENOSPC/, `after a failed change: ${after.body.reason}`)

  await rm(filler)
  t.equal((await api(gw, 'POST', '/v1/endpoint-services', PROVIDER_TOKEN, service)).status, 201, 'space is back: the change is written')
  const healed = await until(() => healthz(gw.apiUrl), (h) => h.status === 200, 8000)
  t.same(healed, { status: 200, body: { status: 'ok' } }, 'and /healthz is ok again')
})
