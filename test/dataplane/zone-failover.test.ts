// Zone failover through a real DataPlane: an endpoint in zone-a (127.24.9.1), one backend per
// zone (127.24.8.1 zone-a, 127.24.8.2 zone-b), active TCP checks. Clients connect in a loop and
// must never be refused while zone-b is healthy, whatever zone-a does.
import { connect } from 'node:net'
import { performance } from 'node:perf_hooks'
import pino from 'pino'
import t from 'tap'
import { HealthChecker } from '../../src/dataplane/upstream/health-checker.ts'
import { freePort, makeEndpoint, openStore, putEndpoint, startDataPlane } from '../helpers/dataplane-fixtures.ts'
import { backendOf, putService, serviceId, serviceOf, sleep, startBackends, waitForHealth, FAST_CHECK, TestBackend } from './upstream/health-helpers.ts'

const intervalMs = FAST_CHECK.intervalSeconds * 1000
const timeoutMs = FAST_CHECK.timeoutSeconds * 1000
const ENDPOINT_IP = '127.24.9.1'

/** One client connection through the proxy: the zone the backend wrote, or how it failed. */
function fetchZone (port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: ENDPOINT_IP, port })
    let data = ''
    let error = ''
    socket.setEncoding('utf8')
    socket.on('data', (s: string) => { data += s })
    socket.on('error', (err: NodeJS.ErrnoException) => { error = err.code ?? err.message })
    socket.on('close', () => { resolve(error !== '' ? `error ${error}` : data === '' ? 'error empty' : data) })
  })
}

/** Connect one client after another until `done()` (bounded by `maxMs` and 1000 connections). */
async function clientLoop (port: number, done: () => boolean, maxMs: number): Promise<string[]> {
  const outcomes: string[] = []
  const deadline = performance.now() + maxMs
  while (!done() && performance.now() < deadline && outcomes.length < 1000) {
    outcomes.push(await fetchZone(port))
    await sleep(10)
  }
  return outcomes
}

async function picks (port: number, n: number): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i++) out.push(await fetchZone(port))
  return out
}

t.test('clients see no refused connection while zone-a fails and recovers, and go back to zone-a', async (t) => {
  const [a, b] = await startBackends(t, ['127.24.8.1', '127.24.8.2'], (i) => ({ kind: 'reply', text: i === 0 ? 'zone-a' : 'zone-b' })) as [TestBackend, TestBackend]
  const store = await openStore(t)
  const terminalPort = await freePort(ENDPOINT_IP)
  const id = serviceId()
  const service = serviceOf(id, {
    portMappings: [{ protocol: 'TCP', servicePort: a.port, terminalPort }],
    backends: [backendOf('be-000008a1', a.host, 'zone-a'), backendOf('be-000008b1', b.host, 'zone-b')]
  })
  await putService(store, service)
  await putEndpoint(store, makeEndpoint(service, { ip: ENDPOINT_IP, zone: 'zone-a' }))
  const fx = await startDataPlane(t, { store })
  t.same(fx.failures, [], 'the endpoint listens')
  const checker = new HealthChecker({ store, upstream: fx.upstream, metrics: fx.metrics, logger: pino({ level: 'silent' }) })
  t.teardown(() => checker.close())
  checker.start()
  await waitForHealth(fx.upstream, id, 'be-000008a1', 'healthy', intervalMs * 3 + 1000)
  await waitForHealth(fx.upstream, id, 'be-000008b1', 'healthy', intervalMs * 3 + 1000)
  t.same(await picks(terminalPort, 10), Array(10).fill('zone-a'), 'same-zone backend serves while healthy')

  await a.stop()
  // Passive failures (3 refused connects) usually mark zone-a down first; keep the clients going
  // for the active checks' whole fall window too.
  const fallMs = intervalMs * FAST_CHECK.unhealthyThreshold + timeoutMs
  const stoppedAt = performance.now()
  const isDown = (): boolean => fx.upstream.backendHealth(id, 'be-000008a1') === 'unhealthy'
  const during = await clientLoop(terminalPort, () => isDown() && performance.now() - stoppedAt > fallMs, fallMs + 1000)
  t.ok(isDown(), 'zone-a backend became unhealthy')
  t.same(during.filter((o) => o !== 'zone-b'), [], `every connection while zone-a failed reached zone-b (${during.length} connections)`)
  t.same(await picks(terminalPort, 10), Array(10).fill('zone-b'), 'with zone-a unhealthy, zone-b serves')

  await a.start()
  const isUp = (): boolean => fx.upstream.backendHealth(id, 'be-000008a1') === 'healthy'
  const recovering = await clientLoop(terminalPort, isUp, intervalMs * FAST_CHECK.healthyThreshold + 1000)
  t.ok(isUp(), 'zone-a backend is healthy again')
  t.same(recovering.filter((o) => o !== 'zone-a' && o !== 'zone-b'), [], `no failed connection during recovery (${recovering.length} connections)`)
  t.same(await picks(terminalPort, 10), Array(10).fill('zone-a'), 'picks return to zone-a')
})
