// SPEC §10 "Fail open": a real gateway whose service's health check probes a port where nothing
// listens marks every backend unhealthy; new connections are then spread over all of them as if
// healthy (AWS NLB), and linkgate_service_fail_open{service_id} is 1. When one backend passes
// again, only the healthy one takes connections and the gauge is 0. Addresses: 127.72.4.0/24.
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { api, startGateway, writeConfig, type Gateway } from '../helpers/gateway-process.ts'
import { sampleSum } from '../helpers/prom-text.ts'

const TOKEN = 'provider-dev-token'
const SVC = 'vpcesvc-0000000072f1'
const EP = 'vpce-0000000072f1'
const EP_IP = '127.72.4.10'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** A server answering every connection with its name, then closing. */
async function idServer (host: string, name: string, port = 0): Promise<Server> {
  const server = createServer((s) => { s.on('error', () => {}); s.end(name) })
  await new Promise<void>((resolve) => server.listen(port, host, resolve))
  return server
}

function fetchId (port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: EP_IP, port })
    let got = ''
    const timer = setTimeout(() => { s.destroy(); resolve(`timeout:${got}`) }, 3000)
    s.on('error', (err: NodeJS.ErrnoException) => { clearTimeout(timer); resolve(`error:${err.code ?? err.message}`) })
    s.on('data', (d) => { got += d.toString() })
    s.on('end', () => { clearTimeout(timer); resolve(got) })
  })
}

async function failOpenGauge (gw: Gateway): Promise<number> {
  return sampleSum(await (await fetch(`${gw.apiUrl}/metrics`)).text(), 'linkgate_service_fail_open', { service_id: SVC })
}

async function healthOf (gw: Gateway): Promise<string[]> {
  const svc = await api(gw, 'GET', `/v1/endpoint-services/${SVC}`, TOKEN)
  return (svc.body.backends as Array<{ health: string }>).map((b) => b.health)
}

async function waitUntil (what: string, check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const start = Date.now()
  while (!(await check())) {
    if (Date.now() - start > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(100)
  }
}

t.test('every backend unhealthy: connections go to all of them and linkgate_service_fail_open is 1', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-failopen-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const a = await idServer('127.72.4.20', 'a')
  t.teardown(() => a.close())
  const port = (a.address() as AddressInfo).port
  const b = await idServer('127.72.4.21', 'b', port)
  t.teardown(() => b.close())
  // The health-check port: free on both backend addresses (taken with port 0, then released).
  const probe = await idServer('127.72.4.20', 'probe')
  const checkPort = (probe.address() as AddressInfo).port
  await new Promise<void>((resolve) => probe.close(() => resolve()))

  const configFile = await writeConfig(dir, {
    listen: { api: '127.72.4.1:0', dns: '127.72.4.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.72.4.0/24', zone: 'zone-a' }],
    // One data-plane worker: the exact 5/5 below is one round robin's; with several workers
    // (SPEC §11) each runs its own and ten connections split unevenly between them.
    workers: 1,
    log: { level: 'warn' },
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort: 7204 }],
      backends: [
        { id: 'be-000072f1', address: '127.72.4.20', zone: 'zone-a' },
        { id: 'be-000072f2', address: '127.72.4.21', zone: 'zone-a' }
      ],
      healthCheck: { enabled: true, protocol: 'TCP', port: checkPort, intervalSeconds: 0.2, timeoutSeconds: 0.1, healthyThreshold: 1, unhealthyThreshold: 2 }
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: EP_IP }]
  })
  const gw = await startGateway(t, configFile)
  await waitUntil('both backends unhealthy', async () => (await healthOf(gw)).every((h) => h === 'unhealthy'))
  t.same(await healthOf(gw), ['unhealthy', 'unhealthy'], 'nothing listens on the health-check port: both unhealthy')
  t.equal(await failOpenGauge(gw), 1, 'linkgate_service_fail_open 1')

  const ids: string[] = []
  for (let i = 0; i < 10; i++) ids.push(await fetchId(7204))
  t.same(ids.sort(), ['a', 'a', 'a', 'a', 'a', 'b', 'b', 'b', 'b', 'b'], 'fail open: every connection served, spread over both')
  t.match(gw.output(), /failing open/, 'the gateway says it is failing open')

  // One backend passes its checks again: it alone takes connections, and fail-open ends.
  const check = await idServer('127.72.4.21', 'check', checkPort)
  t.teardown(() => check.close())
  await waitUntil('backend b healthy', async () => (await healthOf(gw))[1] === 'healthy')
  t.equal(await failOpenGauge(gw), 0, 'linkgate_service_fail_open 0')
  const after: string[] = []
  for (let i = 0; i < 6; i++) after.push(await fetchId(7204))
  t.same(after, ['b', 'b', 'b', 'b', 'b', 'b'], 'only the healthy backend is picked')
})
