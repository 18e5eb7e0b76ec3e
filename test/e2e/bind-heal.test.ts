// SPEC §10 "Bind failures heal": an endpoint whose terminal port is taken becomes `failed` with
// the bind error as statusReason, retries every 5 s (backing off to 60 s), and is `accepted`
// again by itself once the port is free; linkgate_endpoints{status} follows. A gateway restarted
// while the endpoint is failed retries it too. Addresses: 127.72.2.0/24 and 127.72.3.0/24.
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { api, startGateway, writeConfig, type Gateway } from '../helpers/gateway-process.ts'
import { sampleSum } from '../helpers/prom-text.ts'

const TOKEN = 'provider-dev-token'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

async function listen (host: string, handler?: (s: Socket) => void): Promise<Server> {
  const server = createServer((s) => { s.on('error', () => {}); if (handler !== undefined) handler(s); else s.destroy() })
  await new Promise<void>((resolve) => server.listen(0, host, resolve))
  return server
}

function echoOnce (host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host, port })
    let got = ''
    const timer = setTimeout(() => { s.destroy(); resolve(got) }, 3000)
    s.on('error', () => { clearTimeout(timer); resolve('error') })
    s.on('connect', () => s.write('heal'))
    s.on('data', (d) => { got += d.toString(); if (got.length >= 4) { clearTimeout(timer); s.destroy(); resolve(got) } })
  })
}

async function waitForStatus (gw: Gateway, id: string, status: string, timeoutMs: number): Promise<{ ms: number, body: any }> {
  const start = Date.now()
  for (;;) {
    const res = await api(gw, 'GET', `/v1/endpoints/${id}`, TOKEN)
    if (res.body?.status === status) return { ms: Date.now() - start, body: res.body }
    if (Date.now() - start > timeoutMs) throw new Error(`endpoint ${id} not ${status} within ${timeoutMs} ms (is ${res.body?.status})`)
    await sleep(100)
  }
}

async function endpointGauge (gw: Gateway, status: string): Promise<number> {
  return sampleSum(await (await fetch(`${gw.apiUrl}/metrics`)).text(), 'linkgate_endpoints', { status })
}

async function setUp (t: Test, net: number): Promise<{ configFile: string, squatter: Server, port: number, ip: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-bindheal-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const ip = `127.72.${net}.10`
  const echo = await listen(`127.72.${net}.20`, (s) => s.pipe(s))
  t.teardown(() => echo.close())
  // The squatter holds the endpoint's terminal port (taken with port 0, then used as terminalPort).
  const squatter = await listen(ip)
  t.teardown(() => squatter.close())
  const port = (squatter.address() as AddressInfo).port
  const svc = `vpcesvc-0000000072${net}0`
  const configFile = await writeConfig(dir, {
    listen: { api: `127.72.${net}.1:0`, dns: `127.72.${net}.1:0` },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: `127.72.${net}.0/24`, zone: 'zone-a' }],
    log: { level: 'warn' },
    services: [{
      id: svc,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: (echo.address() as AddressInfo).port, terminalPort: port }],
      backends: [{ id: `be-000072${net}0`, address: `127.72.${net}.20`, zone: 'zone-a' }],
      healthCheck: { enabled: false }
    }],
    endpoints: [{ id: `vpce-0000000072${net}0`, ownerAccountId: '100000000001', serviceId: svc, subnetId: 'subnet-a', ip }]
  })
  return { configFile, squatter, port, ip }
}

t.test('a bind failure heals by itself once the port is freed', async (t) => {
  const { configFile, squatter, port, ip } = await setUp(t, 2)
  const id = 'vpce-000000007220'
  const gw = await startGateway(t, configFile)
  const failed = await waitForStatus(gw, id, 'failed', 3000)
  t.match(failed.body.statusReason, new RegExp(`^bind 127\\.72\\.2\\.10:${port}: EADDRINUSE`), 'statusReason names the bind error')
  t.same(failed.body.dnsNames, [], 'no DNS names while failed')
  t.equal(await endpointGauge(gw, 'failed'), 1, 'linkgate_endpoints{status="failed"} 1')
  t.equal(await endpointGauge(gw, 'accepted'), 0)
  const accept = await api(gw, 'POST', `/v1/endpoint-services/vpcesvc-000000007220/connections/${id}/accept`, TOKEN)
  t.equal(accept.status, 409, 'the provider cannot accept a failed endpoint; only the data plane heals it')

  await new Promise<void>((resolve) => squatter.close(() => resolve()))
  const healed = await waitForStatus(gw, id, 'accepted', 8000)
  t.ok(healed.ms <= 6500, `accepted again ${healed.ms} ms after the port was freed (first retry after 5 s)`)
  t.notOk('statusReason' in healed.body, 'statusReason gone')
  t.ok(healed.body.dnsNames.length > 0, 'DNS names back')
  t.equal(await echoOnce(ip, port), 'heal', 'the endpoint serves')
  t.equal(await endpointGauge(gw, 'accepted'), 1, 'linkgate_endpoints{status="accepted"} 1')
  t.equal(await endpointGauge(gw, 'failed'), 0)
})

t.test('an endpoint failed by a bind is retried after a restart', async (t) => {
  const { configFile, squatter, port, ip } = await setUp(t, 3)
  const id = 'vpce-000000007230'
  let gw = await startGateway(t, configFile)
  await waitForStatus(gw, id, 'failed', 3000)
  gw.proc.kill('SIGTERM')
  await gw.exited
  await new Promise<void>((resolve) => squatter.close(() => resolve()))
  gw = await startGateway(t, configFile)
  const healed = await waitForStatus(gw, id, 'accepted', 3000)
  t.ok(healed.ms < 3000, 'accepted at start, without waiting for a retry')
  t.equal(await echoOnce(ip, port), 'heal', 'the endpoint serves')
})
