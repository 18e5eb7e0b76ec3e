// Passive health (3 failed connects seen by the proxies) and how active checks clear it, on 127.24.4.x.
import t from 'tap'
import { PASSIVE_FAILURE_THRESHOLD } from '../../../src/dataplane/upstream/upstream-state.ts'
import { backendOf, eventually, harness, putService, serviceId, serviceOf, sleep, startBackends, waitForHealth, FAST_CHECK, TestBackend } from './health-helpers.ts'

const intervalMs = FAST_CHECK.intervalSeconds * 1000
const timeoutMs = FAST_CHECK.timeoutSeconds * 1000

t.test('3 failed connects mark a backend unhealthy; the next passing active check clears it', async (t) => {
  const [server] = await startBackends(t, ['127.24.4.1'], { kind: 'tcp' }) as [TestBackend]
  const h = await harness(t)
  const id = serviceId()
  // healthyThreshold 5: had the passive verdict needed a full rise, one probe would not clear it.
  await putService(h.store, serviceOf(id, { port: server.port, backends: [backendOf('be-00000401', server.host)], healthCheck: { healthyThreshold: 5 } }))
  const rec = h.upstream.record(id, 'be-00000401')
  for (let i = 0; i < PASSIVE_FAILURE_THRESHOLD; i++) h.upstream.connectFailed(rec, 'refused')
  t.equal(h.upstream.backendHealth(id, 'be-00000401'), 'unhealthy', 'passive verdict after 3 failed connects')

  h.checker.start()
  const up = await waitForHealth(h.upstream, id, 'be-00000401', 'healthy', intervalMs + timeoutMs + 1000)
  t.match(up.transition?.reason, /check passed after passive failures/)
  await sleep(50)
  t.equal(server.accepted.length, 1, 'one passing probe was enough')
})

t.test('a backend the active check declared unhealthy needs healthyThreshold passes to recover', async (t) => {
  const [server] = await startBackends(t, ['127.24.4.2'], { kind: 'tcp' }) as [TestBackend]
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: server.port, backends: [backendOf('be-00000402', server.host)], healthCheck: { healthyThreshold: 3 } }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-00000402', 'healthy', intervalMs * 4 + 1000)
  await server.stop()
  await waitForHealth(h.upstream, id, 'be-00000402', 'unhealthy', intervalMs * FAST_CHECK.unhealthyThreshold + timeoutMs + 1000)
  // Passive failures on top of the active verdict must not shorten the way back.
  const rec = h.upstream.record(id, 'be-00000402')
  for (let i = 0; i < PASSIVE_FAILURE_THRESHOLD; i++) h.upstream.connectFailed(rec, 'refused')

  await server.start()
  await waitForHealth(h.upstream, id, 'be-00000402', 'healthy', intervalMs * 3 + 1000)
  t.ok(await eventually(() => server.accepted.length >= 3, 200), 'the three passing probes reached the server')
  t.equal(server.accepted.length, 3, 'healthy on the third pass, not before')
})

t.test('a passive verdict on a backend without active checks expires after passiveEjectionSeconds', async (t) => {
  const h = await harness(t, { passiveEjectionSeconds: 0.3 })
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: 9, backends: [backendOf('be-00000403', '127.24.4.3')], healthCheck: { enabled: false } }))
  h.checker.start()
  const rec = h.upstream.record(id, 'be-00000403')
  for (let i = 0; i < PASSIVE_FAILURE_THRESHOLD; i++) h.upstream.connectFailed(rec, 'refused')
  t.equal(h.upstream.backendHealth(id, 'be-00000403'), 'unhealthy')
  const up = await waitForHealth(h.upstream, id, 'be-00000403', 'healthy', 300 + 1000)
  t.match(up.transition?.reason, /passive verdict expired after 0.3 s/)
  t.ok(up.elapsedMs >= 250, `not before the ejection time (${Math.round(up.elapsedMs)} ms)`)
})

t.test('linkgate_backend_up follows passive verdicts', async (t) => {
  const h = await harness(t, { passiveEjectionSeconds: 60 })
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: 9, backends: [backendOf('be-00000404', '127.24.4.4')], healthCheck: { enabled: false } }))
  h.checker.start()
  const value = async (): Promise<number | undefined> =>
    (await h.metrics.backendUp.get()).values.find((v) => v.labels.backend_id === 'be-00000404')?.value
  t.equal(await value(), 1, 'unknown counts as up')
  const rec = h.upstream.record(id, 'be-00000404')
  for (let i = 0; i < PASSIVE_FAILURE_THRESHOLD; i++) h.upstream.connectFailed(rec, 'refused')
  t.equal(await value(), 0, 'unhealthy by passive verdict is down')
})
