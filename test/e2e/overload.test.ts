// SPEC §10 "A process-wide connection budget": a real `linkgate start` under
// `prlimit --nofile=1200` (budget max(64, floor((1200 - 1024) / 2)) = 88) is driven past its
// budget by TCP connections, then by UDP flows from many source ports. Past the budget new ones
// are refused and counted as reason="overload"; meanwhile /healthz, an API call and a dig query
// answer, and a healthy backend (active TCP checks every 200 ms) stays healthy.
// Addresses: 127.71.0.0/16.
import { execFile } from 'node:child_process'
import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { api, startGateway, writeConfig, type Gateway } from '../helpers/gateway-process.ts'
import { sampleSum } from '../helpers/prom-text.ts'
import { requireTools } from '../helpers/tools.ts'

const TOKEN = 'provider-dev-token'
const SVC = 'vpcesvc-0000000071a1'
const EP = 'vpce-0000000071e1'
const BE = 'be-000071b1'
const EP_IP = '127.71.1.10'
const BACKEND_IP = '127.71.0.10'
const NOFILE = 1200
const BUDGET = 88 // max(64, floor((1200 - 1024) / 2))
const CLIENTS = 130

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

function dig (port: number, name: string): Promise<string> {
  return new Promise((resolve) => {
    execFile('dig', [`@127.71.0.1`, '-p', String(port), '+short', '+time=2', '+tries=1', name, 'A'], { timeout: 5000 }, (err, stdout) => {
      resolve(err === null ? stdout.trim() : `error: ${err.message}`)
    })
  })
}

async function metrics (gw: Gateway): Promise<string> {
  return await (await fetch(`${gw.apiUrl}/metrics`)).text()
}

/** Connect and send one byte; resolves true when it comes back, false when the connection ends first. */
function openEchoing (port: number, sockets: Socket[]): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: EP_IP, port })
    sockets.push(s)
    const timer = setTimeout(() => resolve(false), 5000)
    s.on('error', () => {})
    s.on('connect', () => s.write('x'))
    s.once('data', () => { clearTimeout(timer); resolve(true) })
    s.on('close', () => { clearTimeout(timer); resolve(false) })
  })
}

/** One datagram from a fresh source port; resolves true when it is echoed within `ms`. */
function udpFlow (port: number, sockets: UdpSocket[], ms = 1500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createSocket('udp4')
    sockets.push(s)
    const timer = setTimeout(() => resolve(false), ms)
    s.on('error', () => {})
    s.once('message', () => { clearTimeout(timer); resolve(true) })
    s.bind(0, '127.71.0.100', () => s.send('u', port, EP_IP))
  })
}

async function stillServing (t: Test, gw: Gateway, dnsName: string, when: string): Promise<void> {
  const healthz = await fetch(`${gw.apiUrl.replace(/\/$/, '')}/healthz`)
  t.equal(healthz.status, 200, `${when}: /healthz answers`)
  const svc = await api(gw, 'GET', `/v1/endpoint-services/${SVC}`, TOKEN)
  t.equal(svc.status, 200, `${when}: the API answers`)
  t.equal(svc.body?.backends?.[0]?.health, 'healthy', `${when}: the healthy backend stays healthy`)
  t.equal(await dig(gw.dnsPort, dnsName), EP_IP, `${when}: dig gets the endpoint's A record`)
}

t.test('past limits.maxConnections new TCP connections and UDP flows are refused as overload; API, DNS and health checks carry on', async (t) => {
  if (!requireTools(t, ['prlimit', 'dig'])) return
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-overload-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))

  const tcpEcho = createServer((s) => { s.on('error', () => {}); s.pipe(s) })
  await new Promise<void>((resolve) => tcpEcho.listen(0, BACKEND_IP, resolve))
  t.teardown(() => tcpEcho.close())
  const udpEcho = createSocket('udp4')
  udpEcho.on('message', (msg, rinfo) => udpEcho.send(msg, rinfo.port, rinfo.address))
  await new Promise<void>((resolve) => udpEcho.bind(0, BACKEND_IP, resolve))
  t.teardown(() => udpEcho.close())
  const tcpPort = (tcpEcho.address() as AddressInfo).port

  const configFile = await writeConfig(dir, {
    listen: { api: '127.71.0.1:0', dns: '127.71.0.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.71.1.0/24', zone: 'zone-a' }, { id: 'subnet-b', cidr: '127.71.2.0/24', zone: 'zone-b' }],
    limits: { udpIdleTimeoutSeconds: 1 },
    log: { level: 'warn' },
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [
        { protocol: 'TCP', servicePort: tcpPort, terminalPort: 7101 },
        { protocol: 'UDP', servicePort: (udpEcho.address() as AddressInfo).port, terminalPort: 7102 }
      ],
      backends: [{ id: BE, address: BACKEND_IP, zone: 'zone-a' }],
      healthCheck: { enabled: true, protocol: 'TCP', intervalSeconds: 0.2, timeoutSeconds: 0.1, healthyThreshold: 1, unhealthyThreshold: 2 }
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: EP_IP }]
  })

  const gw = await startGateway(t, configFile, { wrapper: ['prlimit', `--nofile=${NOFILE}:${NOFILE}`, '--'] })
  const ep = await api(gw, 'GET', `/v1/endpoints/${EP}`, TOKEN)
  const dnsName = ep.body.dnsNames[0] as string
  // The first verdict (healthyThreshold 1) arrives within one interval of a random offset.
  for (let i = 0; i < 50; i++) {
    if ((await api(gw, 'GET', `/v1/endpoint-services/${SVC}`, TOKEN)).body.backends[0].health === 'healthy') break
    await sleep(100)
  }
  await stillServing(t, gw, dnsName, 'before load')

  // ---- TCP: more connections than the budget, all held open ----
  const tcpClients: Socket[] = []
  t.teardown(() => { for (const s of tcpClients) s.destroy() })
  const echoed = await Promise.all(Array.from({ length: CLIENTS }, () => openEchoing(7101, tcpClients)))
  const served = echoed.filter(Boolean).length
  t.equal(served, BUDGET, `exactly the budget (${BUDGET}) of ${CLIENTS} connections is served`)
  let text = await metrics(gw)
  t.equal(sampleSum(text, 'linkgate_connections_refused_total', { endpoint_id: EP, reason: 'overload' }), CLIENTS - BUDGET,
    'the others count as reason="overload"')
  t.equal(sampleSum(text, 'linkgate_active_connections', { endpoint_id: EP, protocol: 'TCP' }), BUDGET)
  await sleep(1000) // five health-check intervals at full load
  await stillServing(t, gw, dnsName, 'TCP budget full')
  t.equal(await openEchoing(7101, tcpClients), false, 'a new connection is still refused')
  for (const s of tcpClients) s.destroy()
  await sleep(300)
  t.equal(await openEchoing(7101, tcpClients), true, 'once connections end, new ones are served again')
  for (const s of tcpClients) s.destroy()
  await sleep(300)

  // ---- UDP: one client opening flows from many source ports ----
  const udpClients: UdpSocket[] = []
  t.teardown(() => { for (const s of udpClients) { try { s.close() } catch {} } })
  const before = sampleSum(await metrics(gw), 'linkgate_connections_refused_total', { endpoint_id: EP, reason: 'overload' })
  const answered = await Promise.all(Array.from({ length: CLIENTS }, () => udpFlow(7102, udpClients)))
  t.equal(answered.filter(Boolean).length, BUDGET, `exactly the budget (${BUDGET}) of ${CLIENTS} flows is served`)
  text = await metrics(gw)
  t.equal(sampleSum(text, 'linkgate_connections_refused_total', { endpoint_id: EP, reason: 'overload' }) - before, CLIENTS - BUDGET,
    'the other flows count as reason="overload"')
  await stillServing(t, gw, dnsName, 'UDP budget full')
  text = await metrics(gw)
  t.equal(sampleSum(text, 'linkgate_backend_up', { backend_id: BE }), 1, 'linkgate_backend_up stays 1')
  t.equal(sampleSum(text, 'linkgate_service_fail_open', { service_id: SVC }), 0, 'not failing open')
  // Flows expire after 1 s of silence; then a new one is served.
  await sleep(2500)
  t.equal(await udpFlow(7102, udpClients), true, 'after the flows expired a new flow is served')
  t.equal(gw.proc.exitCode, null, 'the gateway is still running')
})

t.test('an explicit maxConnections that the open-file limit cannot carry is refused at start, naming both numbers', async (t) => {
  if (!requireTools(t, ['prlimit'])) return
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-overload-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const configFile = await writeConfig(dir, {
    listen: { api: '127.71.0.1:0', dns: '127.71.0.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.71.1.0/24', zone: 'zone-a' }],
    limits: { maxConnections: 100 }
  })
  await t.rejects(startGateway(t, configFile, { wrapper: ['prlimit', `--nofile=${NOFILE}:${NOFILE}`, '--'] }),
    /limits\.maxConnections: 100 needs 1224 open files.*RLIMIT_NOFILE soft\) is 1200/s)
  const state = await readdir(join(dir, 'state')).catch(() => [])
  t.same(state, [], 'nothing was written to the state directory')
})
