// SPEC §11 with `linkgate start` and `workers: 2`: SIGTERM drains every worker (live connections
// on both keep working for the grace period, new ones are refused, then all end and the process
// exits 0), and the access log has one line per connection whichever worker served it.
// Addresses: 127.77.5.0/24 - 127.77.6.0/24.
import { readFile, mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { startGateway, writeConfig } from '../helpers/gateway-process.ts'

const EP_IP = '127.77.6.5'
const PORT = 7706
const CONNECTIONS = 20

function open (): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: EP_IP, port: PORT })
    s.once('connect', () => { resolve(s) })
    s.once('error', reject)
  })
}

function echo (s: Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = ''
    const timer = setTimeout(() => { reject(new Error(`no echo of ${text}`)) }, 3000)
    const onData = (d: Buffer): void => {
      got += d.toString()
      if (got.length >= text.length) { clearTimeout(timer); s.off('data', onData); resolve(got) }
    }
    s.on('data', onData)
    s.write(text)
  })
}

t.test('SIGTERM with two workers: every worker drains, then exit 0; one access-log line per connection', async (t) => {
  const backend = createServer((s) => { s.on('error', () => {}); s.pipe(s) })
  await new Promise<void>((resolve) => backend.listen(0, '127.77.5.10', resolve))
  t.teardown(() => backend.close())
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-workers-term-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const accessLog = join(dir, 'access.log')
  const configFile = await writeConfig(dir, {
    listen: { api: '127.77.5.1:0', dns: '127.77.5.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.77.6.0/24', zone: 'zone-a' }],
    limits: { shutdownGraceSeconds: 2 },
    workers: 2,
    log: { level: 'warn', access: accessLog },
    services: [{
      id: 'vpcesvc-0000000077f1',
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: (backend.address() as AddressInfo).port, terminalPort: PORT }],
      backends: [{ address: '127.77.5.10', zone: 'zone-a' }]
    }],
    endpoints: [{ id: 'vpce-0000000077f1', ownerAccountId: '100000000001', serviceId: 'vpcesvc-0000000077f1', subnetId: 'subnet-a', ip: EP_IP }]
  })
  const gw = await startGateway(t, configFile)
  const live: Socket[] = []
  t.teardown(() => { for (const s of live) s.destroy() })
  for (let i = 0; i < CONNECTIONS; i++) {
    const s = await open()
    s.on('error', () => {})
    live.push(s)
    t.equal(await echo(s, `c${i}`), `c${i}`)
  }
  const closedAt = new Map<Socket, number>()
  for (const s of live) s.on('close', () => { closedAt.set(s, Date.now()) })

  const termAt = Date.now()
  gw.proc.kill('SIGTERM')
  await new Promise((resolve) => setTimeout(resolve, 300))
  for (let i = 0; i < 5; i++) {
    const refused = await open().then((s) => { s.destroy(); return 'connected' }, (err: NodeJS.ErrnoException) => err.code)
    t.equal(refused, 'ECONNREFUSED', 'no worker accepts after SIGTERM')
  }
  let working = 0
  for (const s of live) if (await echo(s, 'grace').catch(() => '') === 'grace') working++
  t.equal(working, CONNECTIONS, 'every live connection, on either worker, works during the grace period')
  t.equal(closedAt.size, 0, 'and none has ended yet')

  const exit = await gw.exited
  t.equal(exit.code, 0, 'exit code 0')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(closedAt.size, CONNECTIONS, 'every connection was ended at the deadline')
  const last = Math.max(...closedAt.values()) - termAt
  t.ok(last >= 1500 && last < 7000, `ended ${last} ms after SIGTERM (grace 2 s)`)
  const lines = (await readFile(accessLog, 'utf8')).split('\n').filter((l) => l !== '')
  t.equal(lines.length, CONNECTIONS, 'one access-log line per connection')
  t.ok(lines.every((l) => { try { return JSON.parse(l) !== null } catch { return false } }), 'every line is whole JSON (no interleaving)')
})
