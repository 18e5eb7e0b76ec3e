// SPEC §11 data-plane workers: the app with `workers: 2` in worker threads (real sockets, real
// DNS packets). Limits exact over both workers, /metrics summed, UDP flows sticky, DNS answered,
// a backend taken down gets nothing from any worker, a killed worker is replaced while the
// other's connections carry on. Addresses: 127.77.0.0/16.
import { createSocket } from 'node:dgram'
import { Resolver } from 'node:dns/promises'
import { connect, type AddressInfo, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { buildApp, type App } from '../../src/app.ts'
import { buildConfig } from '../../src/config/load-config.ts'
import { closed, connectTo, fetchId, roundTrip, startEchoServer, startIdServer, tempDir, waitFor } from '../helpers/dataplane-fixtures.ts'
import { sampleSum } from '../helpers/prom-text.ts'

const SVC = 'vpcesvc-0000000077a1'
const EP = 'vpce-0000000077e1'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

interface Started { app: App, apiUrl: string, dnsPort: number }

async function startApp (t: Test, n: number, extra: Record<string, unknown>): Promise<Started> {
  const dir = await tempDir(t, 'linkgate-workers-')
  const config = buildConfig({
    listen: { api: `127.77.${n}.1:0`, dns: `127.77.${n}.1:0` },
    stateDir: `${dir}/state`,
    subnets: [{ id: 'subnet-a', cidr: `127.77.${n}.0/24`, zone: 'zone-a' }],
    zones: ['zone-a'],
    log: { level: 'warn' },
    workers: 2,
    ...extra
  })
  const app = buildApp(config, { workers: true })
  t.teardown(() => app.close())
  const addresses = await app.start()
  t.equal(app.workers?.size, 2, 'two data-plane workers')
  return { app, apiUrl: `http://127.77.${n}.1:${addresses.api.port}`, dnsPort: addresses.dns.udp.port }
}

async function metricsText (s: Started): Promise<string> {
  return await (await fetch(`${s.apiUrl}/metrics`)).text()
}

/** Connect and exchange one byte; true when echoed, false when the connection ends first. */
function openEchoing (host: string, port: number, sockets: Socket[]): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port })
    sockets.push(s)
    const timer = setTimeout(() => { resolve(false) }, 5000)
    s.on('error', () => {})
    s.on('connect', () => s.write('x'))
    s.once('data', () => { clearTimeout(timer); resolve(true) })
    s.on('close', () => { clearTimeout(timer); resolve(false) })
  })
}

t.test('maxConnectionsPerEndpoint is exact over two workers; /metrics sums them; DNS answers', async (t) => {
  const echo = await startEchoServer(t, '127.77.1.200')
  const s = await startApp(t, 1, {
    limits: { maxConnectionsPerEndpoint: 40 },
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: echo.port, terminalPort: 7701 }],
      backends: [{ id: 'be-00007701', address: '127.77.1.200', zone: 'zone-a' }]
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: '127.77.1.10' }]
  })
  const sockets: Socket[] = []
  t.teardown(() => { for (const c of sockets) c.destroy() })
  const results = await Promise.all(Array.from({ length: 60 }, () => openEchoing('127.77.1.10', 7701, sockets)))
  t.equal(results.filter(Boolean).length, 40, '60 tried, 40 admitted')
  const text = await metricsText(s)
  t.equal(sampleSum(text, 'linkgate_connections_refused_total', { endpoint_id: EP, reason: 'limit' }), 20, 'each refusal counted once')
  t.equal(sampleSum(text, 'linkgate_connections_total', { endpoint_id: EP }), 40, 'admitted connections summed over workers')
  t.equal(sampleSum(text, 'linkgate_active_connections', { endpoint_id: EP, protocol: 'TCP' }), 40)
  t.equal(sampleSum(text, 'linkgate_bytes_total', { endpoint_id: EP, direction: 'client_to_backend' }), 40, 'one byte per admitted connection')
  t.equal(sampleSum(text, 'linkgate_worker_restarts_total'), 0)
  t.ok(text.includes('process_cpu_user_seconds_total'), 'the main thread\'s process metrics are still there')
  for (const c of sockets) c.destroy()
  await waitFor(() => s.app.workers?.active === 0, 2000, 'every unit given back')
  const again: Socket[] = []
  t.teardown(() => { for (const c of again) c.destroy() })
  const second = await Promise.all(Array.from({ length: 40 }, () => openEchoing('127.77.1.10', 7701, again)))
  t.equal(second.filter(Boolean).length, 40, 'the whole limit is free again once connections end')

  const dnsName = s.app.store.state.endpoints[EP]?.dnsNames[0] as string
  const resolver = new Resolver({ timeout: 2000, tries: 1 })
  resolver.setServers([`127.77.1.1:${s.dnsPort}`])
  for (let i = 0; i < 6; i++) t.same(await resolver.resolve4(dnsName), ['127.77.1.10'], 'DNS answered by a worker')
  const after = await metricsText(s)
  t.ok(sampleSum(after, 'linkgate_dns_queries_total') >= 6, 'DNS queries counted in the one /metrics')
})

t.test('limits.maxConnections is exact over two workers', async (t) => {
  const echo = await startEchoServer(t, '127.77.2.200')
  const s = await startApp(t, 2, {
    limits: { maxConnections: 70 },
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: echo.port, terminalPort: 7702 }],
      backends: [{ id: 'be-00007702', address: '127.77.2.200', zone: 'zone-a' }]
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: '127.77.2.10' }]
  })
  const sockets: Socket[] = []
  t.teardown(() => { for (const c of sockets) c.destroy() })
  const results = await Promise.all(Array.from({ length: 100 }, () => openEchoing('127.77.2.10', 7702, sockets)))
  t.equal(results.filter(Boolean).length, 70, '100 tried, 70 admitted')
  t.equal(sampleSum(await metricsText(s), 'linkgate_connections_refused_total', { endpoint_id: EP, reason: 'overload' }), 30)
})

t.test('UDP flows stay on one backend; a backend taken down gets no traffic from any worker', async (t) => {
  const a = await startIdServer(t, '127.77.3.201', 'A')
  const b = await startIdServer(t, '127.77.3.202', 'B', a.port)
  const udpServers = ['A', 'B'].map((id, i) => {
    const u = createSocket('udp4')
    u.on('message', (_m, r) => { u.send(id, r.port, r.address) })
    t.teardown(() => { u.close() })
    return { u, host: `127.77.3.20${i + 1}` }
  })
  await new Promise<void>((resolve) => { udpServers[0]?.u.bind(0, '127.77.3.201', resolve) })
  const udpPort = (udpServers[0]?.u.address() as AddressInfo).port
  await new Promise<void>((resolve) => { udpServers[1]?.u.bind(udpPort, '127.77.3.202', resolve) })
  const s = await startApp(t, 3, {
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: a.port, terminalPort: 7703 }, { protocol: 'UDP', servicePort: udpPort, terminalPort: 7704 }],
      backends: [{ id: 'be-0000770a', address: '127.77.3.201', zone: 'zone-a' }, { id: 'be-0000770b', address: '127.77.3.202', zone: 'zone-a' }],
      healthCheck: { enabled: true, protocol: 'TCP', port: a.port, intervalSeconds: 0.2, timeoutSeconds: 0.1, healthyThreshold: 1, unhealthyThreshold: 1 }
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: '127.77.3.10' }]
  })
  // UDP: each client's datagrams all reach one backend, whichever worker the kernel gave it.
  const clients = Array.from({ length: 8 }, () => createSocket('udp4'))
  t.teardown(() => { for (const c of clients) c.close() })
  const seen = new Set<string>()
  for (const c of clients) {
    await new Promise<void>((resolve) => { c.bind(0, '127.77.3.100', resolve) })
    const answers: string[] = []
    c.on('message', (m) => { answers.push(m.toString()) })
    for (let i = 0; i < 5; i++) {
      c.send('q', 7704, '127.77.3.10')
      await waitFor(() => answers.length === i + 1, 2000, 'udp answer')
    }
    t.equal(new Set(answers).size, 1, `flow from port ${c.address().port} stays on ${answers[0]}`)
    seen.add(answers[0] as string)
  }
  t.same([...seen].sort(), ['A', 'B'], 'flows are spread over both backends')

  // Take B down: the main thread's health checker decides; no worker sends it anything after.
  b.server.close()
  for (const c of b.sockets ?? []) c.destroy()
  await waitFor(async () => {
    const r = await fetch(`${s.apiUrl}/v1/endpoint-services/${SVC}`, { headers: { authorization: 'Bearer provider-dev-token' } })
    const body = await r.json() as { backends: Array<{ id: string, health: string }> }
    return body.backends.find((x) => x.id === 'be-0000770b')?.health === 'unhealthy'
  }, 3000, 'B unhealthy')
  const ids: string[] = []
  for (let i = 0; i < 30; i++) ids.push(await fetchId('127.77.3.10', 7703))
  t.same([...new Set(ids)], ['A'], '30 connections over both workers: all to A')
})

t.test('a worker that dies is replaced; the other worker\'s connections carry on', async (t) => {
  const echo = await startEchoServer(t, '127.77.4.200')
  const s = await startApp(t, 4, {
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: echo.port, terminalPort: 7705 }],
      backends: [{ id: 'be-00007705', address: '127.77.4.200', zone: 'zone-a' }]
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: '127.77.4.10' }]
  })
  const pool = s.app.workers
  if (pool === undefined) throw new Error('no workers')
  const live: Socket[] = []
  for (let i = 0; i < 20; i++) {
    const c = await connectTo(t, '127.77.4.10', 7705)
    t.equal((await roundTrip(c, 'hi')).toString(), 'hi')
    live.push(c)
  }
  const before = pool.threadIds()
  const ended = new Set<Socket>()
  for (const c of live) c.on('close', () => { ended.add(c) })
  // The replacement is a pre-warmed spare (modules loaded, nothing bound), started after the pool.
  await waitFor(() => pool.hasSpare, 10_000, 'a spare waits, its modules loaded')
  const killedAt = Date.now()
  await pool.kill(0)
  // SPEC §11: restarted within 1 s. A cold thread took 0.26–0.9 s on this loaded 2-core machine
  // (module loading); taking over the spare measured 28–65 ms, so the 1 s bound has a wide margin.
  await waitFor(() => pool.threadIds()[0] !== undefined && pool.threadIds()[0] !== before[0] && pool.serving === 2, 5000, 'worker 0 replaced')
  const restartMs = Date.now() - killedAt
  t.comment(`worker 0 replaced and listening again after ${restartMs} ms`)
  t.ok(restartMs <= 1000, `replaced and listening again within 1 s (${restartMs} ms)`)
  await waitFor(() => pool.hasSpare, 5000, 'a new spare is started after the restart')
  await sleep(200)
  const survivors = live.filter((c) => !ended.has(c))
  t.ok(ended.size > 0 && survivors.length > 0, `the dead worker's connections ended (${ended.size}), the other's did not (${survivors.length})`)
  for (const c of survivors) t.equal((await roundTrip(c, 'still')).toString(), 'still', 'a connection of the other worker carries on')
  // The listener is back in the new worker: new connections work, and the dead worker's units were given back.
  await waitFor(() => pool.active === survivors.length, 1000, 'shared count = live connections')
  for (let i = 0; i < 10; i++) {
    const c = await connectTo(t, '127.77.4.10', 7705)
    t.equal((await roundTrip(c, 'new')).toString(), 'new')
    c.destroy()
    await closed(c)
  }
  t.equal(sampleSum(await metricsText(s), 'linkgate_worker_restarts_total'), 1, 'linkgate_worker_restarts_total counts it')
})
