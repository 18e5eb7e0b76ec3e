// The checker follows the store: healthCheck changes, backends and services coming and going,
// and keeps linkgate_backend_up current. Real servers on 127.24.6.x.
import t from 'tap'
import type { EndpointService } from '../../../src/control/model.ts'
import {
  backendOf, backendUpSeries, closedPort, deleteService, eventually, harness, putService, serviceId, serviceOf, sleep,
  startBackends, updateService, waitForHealth, FAST_CHECK, TestBackend
} from './health-helpers.ts'

const intervalMs = FAST_CHECK.intervalSeconds * 1000
const timeoutMs = FAST_CHECK.timeoutSeconds * 1000
const riseMs = intervalMs * (FAST_CHECK.healthyThreshold + 1) + 1000
const fallMs = intervalMs * FAST_CHECK.unhealthyThreshold + timeoutMs + 1000

t.test('a healthCheck change through the store restarts probing with the new port', async (t) => {
  const [server] = await startBackends(t, ['127.24.6.1'], { kind: 'tcp' }) as [TestBackend]
  const closed = await closedPort('127.24.6.1')
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: server.port, backends: [backendOf('be-00000601', server.host)] }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-00000601', 'healthy', riseMs)

  await updateService(h.store, id, (s) => ({ ...s, healthCheck: { ...s.healthCheck, port: closed } }))
  const down = await waitForHealth(h.upstream, id, 'be-00000601', 'unhealthy', fallMs)
  t.match(down.transition?.reason, /^refused/, 'the new port is probed and refuses')
  const probesBefore = server.accepted.length
  await sleep(intervalMs * 2)
  t.equal(server.accepted.length, probesBefore, 'the old port is no longer probed')
})

t.test('a protocol change from TCP to HTTP takes effect without restart', async (t) => {
  const [server] = await startBackends(t, ['127.24.6.2'], { kind: 'hang' }) as [TestBackend]
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: server.port, backends: [backendOf('be-00000602', server.host)] }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-00000602', 'healthy', riseMs)
  await updateService(h.store, id, (s) => ({ ...s, healthCheck: { ...s.healthCheck, protocol: 'HTTP' } }))
  const down = await waitForHealth(h.upstream, id, 'be-00000602', 'unhealthy', fallMs)
  t.match(down.transition?.reason, /^timeout \(HTTP check/, 'a server that never answers HTTP now fails as a timeout')
})

t.test('healthCheck.port overrides the first TCP servicePort', async (t) => {
  const [server] = await startBackends(t, ['127.24.6.3'], { kind: 'tcp' }) as [TestBackend]
  const closed = await closedPort('127.24.6.3')
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: closed, backends: [backendOf('be-00000603', server.host)], healthCheck: { port: server.port } }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-00000603', 'healthy', riseMs)
  t.ok(server.accepted.length >= FAST_CHECK.healthyThreshold)
})

t.test('turning checks off stops probing and releases the checker\'s unhealthy verdict', async (t) => {
  const [server] = await startBackends(t, ['127.24.6.4'], { kind: 'hang' }) as [TestBackend]
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: server.port, backends: [backendOf('be-00000604', server.host)], healthCheck: { protocol: 'HTTP' } }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-00000604', 'unhealthy', fallMs)
  const up = waitForHealth(h.upstream, id, 'be-00000604', 'healthy', 1000)
  await updateService(h.store, id, (s) => ({ ...s, healthCheck: { ...s.healthCheck, enabled: false } }))
  t.match((await up).transition?.reason, /turned off/)
  t.ok(await eventually(() => server.openConnections === 0, 1000), 'no probe connection is left open')
  const probes = server.accepted.length
  await sleep(intervalMs * 2)
  t.equal(server.accepted.length, probes, 'no probe after the change')
})

t.test('a UDP-only service without healthCheck.port is not probed and its backends stay unknown', async (t) => {
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, {
    portMappings: [{ protocol: 'UDP', servicePort: 5300, terminalPort: 53 }],
    backends: [backendOf('be-00000605', '127.24.6.5')]
  }))
  h.checker.start()
  await sleep(intervalMs * (FAST_CHECK.unhealthyThreshold + 1))
  t.equal(h.upstream.backendHealth(id, 'be-00000605'), 'unknown')
  t.equal((await backendUpSeries(h.metrics)).get(`${id}/be-00000605`)?.value, 1, 'unknown is reported up')
})

t.test('a backend added to a running service is probed and gets a backend_up series', async (t) => {
  const [a, b] = await startBackends(t, ['127.24.6.6', '127.24.6.7'], { kind: 'tcp' }) as [TestBackend, TestBackend]
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: a.port, backends: [backendOf('be-00000606', a.host)] }))
  h.checker.start()
  t.notOk((await backendUpSeries(h.metrics)).has(`${id}/be-00000607`))
  await updateService(h.store, id, (s) => ({ ...s, backends: [...s.backends, backendOf('be-00000607', b.host, 'zone-b')] }))
  t.same((await backendUpSeries(h.metrics)).get(`${id}/be-00000607`),
    { value: 1, labels: { service_id: id, backend_id: 'be-00000607', address: b.host, zone: 'zone-b' } })
  await waitForHealth(h.upstream, id, 'be-00000607', 'healthy', riseMs)
  t.ok(b.accepted.length >= FAST_CHECK.healthyThreshold, 'the new backend was probed')
})

t.test('a removed backend stops being probed and its backend_up series is removed', async (t) => {
  const [a, b] = await startBackends(t, ['127.24.6.8', '127.24.6.9'], { kind: 'tcp' }) as [TestBackend, TestBackend]
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: a.port, backends: [backendOf('be-00000608', a.host), backendOf('be-00000609', b.host)] }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-00000609', 'healthy', riseMs)
  await updateService(h.store, id, (s) => ({ ...s, backends: s.backends.filter((x) => x.id !== 'be-00000609') }))
  const series = await backendUpSeries(h.metrics)
  t.notOk(series.has(`${id}/be-00000609`), 'series of the removed backend is gone')
  t.ok(series.has(`${id}/be-00000608`), 'the other backend keeps its series')
  const probes = b.accepted.length
  await sleep(intervalMs * 2)
  t.equal(b.accepted.length, probes, 'no probe after removal')
  t.equal(h.upstream.backendHealth(id, 'be-00000609'), 'unknown', 'its health record is forgotten')
})

t.test('a deleted service stops being probed and leaves no backend_up series', async (t) => {
  const [a] = await startBackends(t, ['127.24.6.10'], { kind: 'tcp' }) as [TestBackend]
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, { port: a.port, backends: [backendOf('be-0000060a', a.host)] }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-0000060a', 'healthy', riseMs)
  await deleteService(h.store, id)
  t.equal([...(await backendUpSeries(h.metrics)).keys()].filter((k) => k.startsWith(id)).length, 0)
  const probes = a.accepted.length
  await sleep(intervalMs * 2)
  t.equal(a.accepted.length, probes, 'no probe after deletion')
  t.same(h.upstream.backendIds(id), [], 'its health records are forgotten')
})

t.test('backend_up is 0 for an unhealthy backend, 1 for a healthy one, and moves with a zone change', async (t) => {
  const [a] = await startBackends(t, ['127.24.6.11'], { kind: 'tcp' }) as [TestBackend]
  const h = await harness(t)
  const id = serviceId()
  // One port serves every backend of a service: the down backend is an address with no server.
  await putService(h.store, serviceOf(id, { port: a.port, backends: [backendOf('be-0000060b', a.host), backendOf('be-0000060c', '127.24.6.12')] }))
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-0000060b', 'healthy', riseMs)
  await waitForHealth(h.upstream, id, 'be-0000060c', 'unhealthy', fallMs + intervalMs)
  let series = await backendUpSeries(h.metrics)
  t.equal(series.get(`${id}/be-0000060b`)?.value, 1)
  t.equal(series.get(`${id}/be-0000060c`)?.value, 0)

  await updateService(h.store, id, (s) => ({ ...s, backends: s.backends.map((x) => x.id === 'be-0000060c' ? { ...x, zone: 'zone-b' } : x) }))
  series = await backendUpSeries(h.metrics)
  t.same(series.get(`${id}/be-0000060c`), { value: 0, labels: { service_id: id, backend_id: 'be-0000060c', address: '127.24.6.12', zone: 'zone-b' } },
    'one series, with the new zone and the same value')
  const all = (await h.metrics.backendUp.get()).values.filter((v) => v.labels.backend_id === 'be-0000060c')
  t.equal(all.length, 1, 'the old zone\'s series is gone')
  t.equal((h.store.state.services[id] as EndpointService).backends.length, 2)
})
