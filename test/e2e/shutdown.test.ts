// SIGTERM during live connections (SPEC §1): the gateway stops accepting at once, live
// connections keep working until limits.shutdownGraceSeconds, then are ended; exit code 0.
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { startGateway, writeConfig } from '../helpers/gateway-process.ts'

const EP_IP = '127.46.1.5'
const PORT = 9100

function open (): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: EP_IP, port: PORT })
    s.once('connect', () => resolve(s))
    s.once('error', reject)
  })
}

function echo (s: Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = ''
    const onData = (d: Buffer): void => {
      got += d.toString()
      if (got.length >= text.length) { s.off('data', onData); resolve(got) }
    }
    s.on('data', onData)
    s.once('error', reject)
    s.write(text)
  })
}

t.test('SIGTERM drains live connections for the grace period, then ends them and exits 0', async (t) => {
  const backend = createServer((s) => { s.on('error', () => {}); s.pipe(s) })
  await new Promise<void>((resolve) => backend.listen(0, '127.46.0.10', resolve))
  t.teardown(() => backend.close())
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-shutdown-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const configFile = await writeConfig(dir, {
    listen: { api: '127.46.0.1:0', dns: '127.46.0.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.46.1.0/24', zone: 'zone-a' }],
    limits: { shutdownGraceSeconds: 2 },
    log: { level: 'warn' },
    services: [{
      id: 'vpcesvc-0000000046a1',
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: (backend.address() as AddressInfo).port, terminalPort: PORT }],
      backends: [{ address: '127.46.0.10', zone: 'zone-a' }]
    }],
    endpoints: [{ id: 'vpce-0000000046a1', ownerAccountId: '100000000001', serviceId: 'vpcesvc-0000000046a1', subnetId: 'subnet-a', ip: EP_IP }]
  })
  const gw = await startGateway(t, configFile)
  const live = await open()
  t.teardown(() => live.destroy())
  t.equal(await echo(live, 'before'), 'before', 'the connection works before SIGTERM')
  let closedAt = 0
  live.on('close', () => { closedAt = Date.now() })
  live.on('error', () => {})

  const termAt = Date.now()
  gw.proc.kill('SIGTERM')
  await new Promise((resolve) => setTimeout(resolve, 300))
  const refused = await open().then((s) => { s.destroy(); return 'connected' }, (err: NodeJS.ErrnoException) => err.code)
  t.equal(refused, 'ECONNREFUSED', 'no new connections after SIGTERM')
  t.equal(await echo(live, 'during grace'), 'during grace', 'a live connection keeps working during the grace period')
  t.equal(closedAt, 0, 'and is still open')

  const exit = await gw.exited
  t.equal(exit.code, 0, 'exit code 0')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.ok(closedAt > 0, 'the live connection was ended at the deadline')
  const waited = closedAt - termAt
  t.ok(waited >= 1500 && waited < 6000, `ended ${waited} ms after SIGTERM (grace 2 s)`)
})
