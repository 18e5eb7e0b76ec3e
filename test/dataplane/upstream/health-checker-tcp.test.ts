// Active TCP health checks against real servers on 127.24.1.x.
import { Writable } from 'node:stream'
import pino from 'pino'
import t from 'tap'
import { probeHttp } from '../../../src/dataplane/upstream/health-check-http.ts'
import { probeTcp } from '../../../src/dataplane/upstream/health-check-tcp.ts'
import { backendOf, closedPort, eventually, harness, putService, serviceId, serviceOf, startBackends, waitForHealth, FAST_CHECK, TestBackend } from './health-helpers.ts'

const intervalMs = FAST_CHECK.intervalSeconds * 1000
const timeoutMs = FAST_CHECK.timeoutSeconds * 1000

t.test('a stopped backend becomes unhealthy within interval × fall + timeout, and healthy within interval × rise of its restart', async (t) => {
  const [server] = await startBackends(t, ['127.24.1.1'], { kind: 'tcp' }) as [TestBackend]
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: server.port, backends: [backendOf('be-00000001', server.host)] }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-00000001', 'healthy', intervalMs * (FAST_CHECK.healthyThreshold + 1) + 1000)

  await server.stop()
  const down = await waitForHealth(h.upstream, id, 'be-00000001', 'unhealthy', intervalMs * FAST_CHECK.unhealthyThreshold + timeoutMs + 1000)
  t.equal(down.transition?.from, 'healthy')
  t.match(down.transition?.reason, /^refused \(TCP check failed 3 time\(s\) in a row\)$/, 'the reason names the refused connect')

  await server.start()
  const up = await waitForHealth(h.upstream, id, 'be-00000001', 'healthy', intervalMs * FAST_CHECK.healthyThreshold + 1000)
  t.equal(up.transition?.from, 'unhealthy')
  t.ok(server.accepted.length >= FAST_CHECK.healthyThreshold, `the restarted server saw the ${FAST_CHECK.healthyThreshold} passing probes`)
})

t.test('the first verdict from unknown follows the unhealthy threshold', async (t) => {
  const h = await harness(t)
  const id = serviceId()
  const port = await closedPort('127.24.1.2')
  await putService(h.store, serviceOf(id, { port, backends: [backendOf('be-00000002', '127.24.1.2')] }))
  h.checker.start()
  const down = await waitForHealth(h.upstream, id, 'be-00000002', 'unhealthy', intervalMs * 4 + 1000)
  t.equal(down.transition?.from, 'unknown')
  t.match(down.transition?.reason, /failed 3 time\(s\) in a row/, 'three failures were needed, not one')
})

t.test('a backend that is never reached stays unknown until its threshold is met', async (t) => {
  const [server] = await startBackends(t, ['127.24.1.3'], { kind: 'tcp' }) as [TestBackend]
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: server.port, backends: [backendOf('be-00000003', server.host)], healthCheck: { healthyThreshold: 3 } }))
  h.checker.start()
  const up = await waitForHealth(h.upstream, id, 'be-00000003', 'healthy', intervalMs * 4 + 1000)
  t.equal(up.transition?.from, 'unknown')
  t.match(up.transition?.reason, /passed 3 time\(s\) in a row/)
  t.ok(server.accepted.length >= 3, `three probes reached the server (saw ${server.accepted.length})`)
})

t.test('probeTcp reports a refused connect as "refused"', async (t) => {
  const port = await closedPort('127.24.1.4')
  t.same(await probeTcp({ host: '127.24.1.4', port, timeoutMs: 500 }), { ok: false, reason: 'refused' })
})

t.test('probeTcp passes when the backend accepts', async (t) => {
  const [server] = await startBackends(t, ['127.24.1.5'], { kind: 'tcp' }) as [TestBackend]
  t.same(await probeTcp({ host: server.host, port: server.port, timeoutMs: 500 }), { ok: true })
})

t.test('an aborted probe resolves "aborted" and closes its connection', async (t) => {
  const [server] = await startBackends(t, ['127.24.1.6'], { kind: 'hang' }) as [TestBackend]
  const abort = new AbortController()
  // An HTTP probe against a server that never answers stays in flight until aborted.
  const probe = probeHttp({ host: server.host, port: server.port, path: '/', timeoutMs: 60_000 }, abort.signal)
  t.ok(await eventually(() => server.openConnections === 1, 2000), 'the probe connected and waits')
  abort.abort()
  t.same(await probe, { ok: false, reason: 'aborted' })
  t.ok(await eventually(() => server.openConnections === 0, 2000), 'the backend saw the probe connection close')
})

t.test('each transition is logged at info with serviceId, backendId, from, to and reason', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
      cb()
    }
  })
  const port = await closedPort('127.24.1.7')
  const h = await harness(t, { logger: pino({ level: 'info' }, sink) })
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port, backends: [backendOf('be-00000007', '127.24.1.7')] }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-00000007', 'unhealthy', intervalMs * 4 + 1000)
  const logged = lines.filter((l) => l.msg === 'backend health changed')
  t.equal(logged.length, 1)
  t.match(logged[0], { level: 30, serviceId: id, backendId: 'be-00000007', from: 'unknown', to: 'unhealthy', reason: /^refused/ })
})
