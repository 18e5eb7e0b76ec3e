// SPEC §11 with `workers: 2` (worker threads, real sockets): what the workers share. Weights hold
// over both workers (2:1 overall within README's bound, and within one pick per worker); UDP
// flows count against maxConnectionsPerEndpoint exactly over both workers; a health verdict and
// a backend removal reach every worker within a second (measured and reported). Every check also
// proves, from the access log's `worker` field, that both workers served.
// Addresses: 127.81.1.0/24 - 127.81.9.0/24, every listener on port 0.
import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { readFile } from 'node:fs/promises'
import { createServer, type AddressInfo, type Server } from 'node:net'
import t, { type Test } from 'tap'
import { buildApp, type App } from '../../src/app.ts'
import { buildConfig } from '../../src/config/load-config.ts'
import type { HealthTransition } from '../../src/dataplane/upstream/upstream-state.ts'
import { fetchId, startIdServer, tempDir, waitFor } from '../helpers/dataplane-fixtures.ts'
import { sampleSum } from '../helpers/prom-text.ts'

const SVC = 'vpcesvc-0000000081a1'
const EP = 'vpce-0000000081e1'
const PROVIDER_TOKEN = 'provider-dev-token'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

interface Started { app: App, apiUrl: string, accessLog: string }

async function startApp (t: Test, n: number, extra: Record<string, unknown>): Promise<Started> {
  const dir = await tempDir(t, 'linkgate-workers-shared-')
  const accessLog = `${dir}/access.log`
  const config = buildConfig({
    listen: { api: `127.81.${n}.1:0`, dns: `127.81.${n}.1:0` },
    stateDir: `${dir}/state`,
    subnets: [{ id: 'subnet-a', cidr: `127.81.${n}.0/24`, zone: 'zone-a' }],
    zones: ['zone-a'],
    log: { level: 'warn', access: accessLog },
    workers: 2,
    ...extra
  })
  const app = buildApp(config, { workers: true })
  t.teardown(() => app.close())
  const addresses = await app.start()
  t.equal(app.workers?.size, 2, 'two data-plane workers')
  return { app, apiUrl: `http://127.81.${n}.1:${addresses.api.port}`, accessLog }
}

interface AccessLine { worker?: number, backendId: string | null, protocol: string, client: string }

async function accessLines (s: Started): Promise<AccessLine[]> {
  let text = ''
  try { text = await readFile(s.accessLog, 'utf8') } catch {}
  return text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as AccessLine)
}

async function metricsText (s: Started): Promise<string> {
  return await (await fetch(`${s.apiUrl}/metrics`)).text()
}

function listenTcp (t: Test, host: string, port = 0): Promise<Server> {
  const server = createServer((c) => { c.on('error', () => {}); c.destroy() })
  t.teardown(() => { server.close() })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host, port }, () => { resolve(server) })
  })
}

t.test('2:1 weights give 2:1 over both workers (each worker within one pick)', async (t) => {
  const a = await startIdServer(t, '127.81.1.201', 'A')
  await startIdServer(t, '127.81.1.202', 'B', a.port)
  const s = await startApp(t, 1, {
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: a.port, terminalPort: 8101 }],
      backends: [{ id: 'be-0000810a', address: '127.81.1.201', zone: 'zone-a', weight: 2 }, { id: 'be-0000810b', address: '127.81.1.202', zone: 'zone-a', weight: 1 }]
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: '127.81.1.10' }]
  })
  const N = 300
  const counts = { A: 0, B: 0 }
  for (let i = 0; i < N; i++) counts[await fetchId('127.81.1.10', 8101) as 'A' | 'B']++
  await waitFor(async () => (await accessLines(s)).length === N, 5000, 'one access-log line per connection')
  const lines = await accessLines(s)
  const perWorker = new Map<number, { A: number, B: number }>()
  for (const l of lines) {
    const w = perWorker.get(l.worker as number) ?? { A: 0, B: 0 }
    w[l.backendId === 'be-0000810a' ? 'A' : 'B']++
    perWorker.set(l.worker as number, w)
  }
  t.same([...perWorker.keys()].sort(), [0, 1], 'both workers served connections')
  for (const [w, c] of perWorker) {
    const n = c.A + c.B
    t.comment(`worker ${w}: ${c.A} A, ${c.B} B`)
    // SWRR 2:1 repeats A, B, A: after n picks A has ceil(2n/3) or floor(2n/3) (never more than one off).
    t.ok(Math.abs(c.A - 2 * n / 3) < 1, `worker ${w}: ${c.A} of ${n} to A, within one pick of 2:1`)
  }
  t.equal(counts.A + counts.B, N)
  // README's bound: workers × (sum(weights) − 1) = 2 × 2 picks.
  const deviation = Math.abs(counts.A - 2 * N / 3)
  t.comment(`overall ${counts.A} A : ${counts.B} B over ${N} connections (deviation from 2:1: ${deviation.toFixed(2)} picks)`)
  t.ok(deviation <= 2 * (3 - 1), `overall ${counts.A}:${counts.B} is 2:1 within ${2 * (3 - 1)} picks`)
  const text = await metricsText(s)
  t.equal(sampleSum(text, 'linkgate_backend_connections_total', { backend_id: 'be-0000810a' }), counts.A, '/metrics agrees for A')
  t.equal(sampleSum(text, 'linkgate_backend_connections_total', { backend_id: 'be-0000810b' }), counts.B, '/metrics agrees for B')
})

t.test('UDP: maxConnectionsPerEndpoint is exact over two workers, each refusal counted once', async (t) => {
  const LIMIT = 20
  const TRIED = 50
  const backend = createSocket('udp4')
  backend.on('message', (m, r) => { backend.send(m, r.port, r.address) })
  t.teardown(() => { backend.close() })
  await new Promise<void>((resolve) => { backend.bind(0, '127.81.2.200', resolve) })
  const udpPort = (backend.address() as AddressInfo).port
  const s = await startApp(t, 2, {
    limits: { maxConnectionsPerEndpoint: LIMIT, udpIdleTimeoutSeconds: 1.5 },
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'UDP', servicePort: udpPort, terminalPort: 8102 }],
      backends: [{ id: 'be-00008102', address: '127.81.2.200', zone: 'zone-a' }]
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: '127.81.2.10' }]
  })
  const tryFlows = async (count: number): Promise<number> => {
    const clients: UdpSocket[] = []
    t.teardown(() => { for (const c of clients) { try { c.close() } catch {} } })
    let answered = 0
    for (let i = 0; i < count; i++) {
      const c = createSocket('udp4')
      clients.push(c)
      // Distinct source ports: each client is its own flow, spread over the workers by the kernel's hash.
      await new Promise<void>((resolve) => { c.bind(0, '127.81.2.100', resolve) })
      c.once('message', () => { answered++ })
    }
    // All at once, so the two workers admit concurrently.
    for (const [i, c] of clients.entries()) c.send(`flow ${i}`, 8102, '127.81.2.10')
    await sleep(1000)
    for (const c of clients) c.close()
    clients.length = 0
    return answered
  }
  t.equal(await tryFlows(TRIED), LIMIT, `${TRIED} flows tried, ${LIMIT} admitted`)
  const text = await metricsText(s)
  t.equal(sampleSum(text, 'linkgate_connections_refused_total', { endpoint_id: EP, reason: 'limit' }), TRIED - LIMIT, 'each refusal counted once')
  t.equal(sampleSum(text, 'linkgate_connections_total', { endpoint_id: EP, protocol: 'UDP' }), LIMIT, 'admitted flows summed over workers')
  t.equal(sampleSum(text, 'linkgate_active_connections', { endpoint_id: EP, protocol: 'UDP' }), LIMIT, 'live flows summed over workers')
  t.equal(s.app.workers?.active, LIMIT, 'the shared count holds the limit')
  // The flows expire (udpIdleTimeoutSeconds 1.5): their lines show which worker held each.
  await waitFor(async () => (await accessLines(s)).length === LIMIT, 5000, 'a line per expired flow')
  await waitFor(() => s.app.workers?.active === 0, 2000, 'expired flows give their units back')
  t.equal(await tryFlows(LIMIT), LIMIT, 'the whole limit is free again once the flows expire')
  // Which workers admitted: in the first round a worker that ran first may take every unit (the
  // other refused all it got: a clean-clone run saw that); in this round all 20 are admitted, so
  // the kernel's hash puts flows on both.
  await waitFor(async () => (await accessLines(s)).length === 2 * LIMIT, 5000, 'a line per expired flow of the second round')
  const workers = new Set((await accessLines(s)).map((l) => l.worker))
  t.same([...workers].sort(), [0, 1], 'flows were admitted by both workers')
})

/** Sequential connections until `stop()`; each remembered with when it was started and who answered. */
async function connectLoop (host: string, port: number, stop: () => boolean): Promise<Array<{ at: number, id: string }>> {
  const seen: Array<{ at: number, id: string }> = []
  for (let i = 0; i < 5000 && !stop(); i++) {
    const at = Date.now()
    seen.push({ at, id: await fetchId(host, port).catch(() => 'error') })
  }
  return seen
}

t.test('a health verdict and a backend removal reach every worker within a second', async (t) => {
  const a = await startIdServer(t, '127.81.3.201', 'A')
  await startIdServer(t, '127.81.3.202', 'B', a.port)
  // Health checks go to another port, so B can be judged down while its data port still answers:
  // any connection B gets after the verdict is one a worker sent it late.
  const hA = await listenTcp(t, '127.81.3.201')
  const checkPort = (hA.address() as AddressInfo).port
  const hB = await listenTcp(t, '127.81.3.202', checkPort)
  const s = await startApp(t, 3, {
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: a.port, terminalPort: 8103 }],
      backends: [{ id: 'be-0000810a', address: '127.81.3.201', zone: 'zone-a' }, { id: 'be-0000810b', address: '127.81.3.202', zone: 'zone-a' }],
      healthCheck: { enabled: true, protocol: 'TCP', port: checkPort, intervalSeconds: 0.2, timeoutSeconds: 0.1, healthyThreshold: 1, unhealthyThreshold: 1 }
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: '127.81.3.10' }]
  })
  await waitFor(() => s.app.upstream.backendHealth(SVC, 'be-0000810b') === 'healthy', 3000, 'B healthy')

  const lastB = (seen: Array<{ at: number, id: string }>): number => Math.max(-Infinity, ...seen.filter((x) => x.id === 'B').map((x) => x.at))
  const workersAfter = async (from: number): Promise<Set<number | undefined>> => {
    await sleep(300)
    const lines = await accessLines(s)
    return new Set(lines.filter((l) => (l as unknown as { time: string }).time > new Date(from).toISOString()).map((l) => l.worker))
  }

  // 1. The verdict: B's health-check port closes; the main thread decides; both workers stop.
  let verdictAt = 0
  const onTransition = (tr: HealthTransition): void => {
    if (tr.backendId === 'be-0000810b' && tr.to === 'unhealthy' && verdictAt === 0) verdictAt = Date.now()
  }
  s.app.upstream.on('transition', onTransition)
  t.teardown(() => { s.app.upstream.off('transition', onTransition) })
  const loopStart = Date.now()
  const loop = connectLoop('127.81.3.10', 8103, () => (verdictAt !== 0 && Date.now() - verdictAt > 1500) || Date.now() - loopStart > 10_000)
  await sleep(300)
  hB.close()
  const seen = await loop
  t.ok(verdictAt > 0, 'B judged unhealthy by the main thread')
  t.ok(seen.some((x) => x.id === 'B' && x.at < verdictAt), 'B had traffic before the verdict')
  const lagVerdict = lastB(seen) - verdictAt
  t.comment(`verdict: last connection B got started ${lagVerdict} ms after the verdict (negative: before); ${seen.filter((x) => x.at > verdictAt).length} connections after it`)
  t.ok(lagVerdict <= 1000, `no worker sends B traffic more than 1 s after the verdict (${lagVerdict} ms)`)
  t.same([...await workersAfter(verdictAt)].sort(), [0, 1], 'both workers served (A only) after the verdict')
  t.notOk(seen.some((x) => x.id === 'error'), 'no connection failed')

  // 2. The backend set: B healthy again, then removed through the API.
  await new Promise<void>((resolve) => { hB.listen({ host: '127.81.3.202', port: checkPort }, resolve) })
  await waitFor(() => s.app.upstream.backendHealth(SVC, 'be-0000810b') === 'healthy', 3000, 'B healthy again')
  let removedAt = 0
  const loopStart2 = Date.now()
  const loop2 = connectLoop('127.81.3.10', 8103, () => (removedAt !== 0 && Date.now() - removedAt > 1500) || Date.now() - loopStart2 > 10_000)
  await sleep(300)
  const sentAt = Date.now()
  const res = await fetch(`${s.apiUrl}/v1/endpoint-services/${SVC}/backends/be-0000810b`, { method: 'DELETE', headers: { authorization: `Bearer ${PROVIDER_TOKEN}` } })
  removedAt = Date.now()
  t.ok(res.status >= 200 && res.status < 300, `backend removed (HTTP ${res.status})`)
  const seen2 = await loop2
  t.ok(seen2.some((x) => x.id === 'B' && x.at < sentAt), 'B had traffic before the removal')
  const lagRemoval = lastB(seen2) - removedAt
  t.comment(`removal: last connection B got started ${lagRemoval} ms after the API answered (request took ${removedAt - sentAt} ms); ${seen2.filter((x) => x.at > removedAt).length} connections after it`)
  t.ok(lagRemoval <= 1000, `no worker sends B traffic more than 1 s after the removal (${lagRemoval} ms)`)
  t.same([...await workersAfter(removedAt)].sort(), [0, 1], 'both workers served (A only) after the removal')
  t.notOk(seen2.some((x) => x.id === 'error'), 'no connection failed')
})
