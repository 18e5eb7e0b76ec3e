// Zone failover driven by active health checks: a ServiceBalancer for an endpoint in zone-a,
// backends in zone-a and zone-b on 127.24.3.x.
import t from 'tap'
import type { EndpointService } from '../../../src/control/model.ts'
import { ServiceBalancer } from '../../../src/dataplane/upstream/balancer.ts'
import { backendOf, harness, putService, serviceId, serviceOf, startBackends, waitForHealth, FAST_CHECK, TestBackend } from './health-helpers.ts'

const intervalMs = FAST_CHECK.intervalSeconds * 1000
const timeoutMs = FAST_CHECK.timeoutSeconds * 1000

/** Zones of `n` picks for an endpoint in zone-a. */
function zonesOfPicks (balancer: ServiceBalancer, n: number): string[] {
  const zones: string[] = []
  for (let i = 0; i < n; i++) zones.push(balancer.pick('zone-a')?.backend.zone ?? 'none')
  return zones
}

t.test('picks follow zone-a while its backend is healthy, move to zone-b when it fails, and come back when it recovers', async (t) => {
  const [a, b] = await startBackends(t, ['127.24.3.1', '127.24.3.2'], { kind: 'tcp' }) as [TestBackend, TestBackend]
  const h = await harness(t)
  const id = serviceId()
  const service = serviceOf(id, {
    port: a.port,
    backends: [backendOf('be-000003a1', a.host, 'zone-a'), backendOf('be-000003b1', b.host, 'zone-b')]
  })
  await putService(h.store, service)
  const balancer = new ServiceBalancer(h.store.state.services[id] as EndpointService, h.upstream)
  h.checker.start()
  await waitForHealth(h.upstream, id, 'be-000003a1', 'healthy', intervalMs * 3 + 1000)
  await waitForHealth(h.upstream, id, 'be-000003b1', 'healthy', intervalMs * 3 + 1000)
  t.same(zonesOfPicks(balancer, 10), Array(10).fill('zone-a'), 'healthy same-zone backend takes every pick')

  await a.stop()
  await waitForHealth(h.upstream, id, 'be-000003a1', 'unhealthy', intervalMs * FAST_CHECK.unhealthyThreshold + timeoutMs + 1000)
  t.same(zonesOfPicks(balancer, 10), Array(10).fill('zone-b'), 'with zone-a unhealthy every pick fails over to zone-b')

  await a.start()
  await waitForHealth(h.upstream, id, 'be-000003a1', 'healthy', intervalMs * FAST_CHECK.healthyThreshold + 1000)
  t.same(zonesOfPicks(balancer, 10), Array(10).fill('zone-a'), 'picks return to zone-a once it is healthy again')
})

t.test('with every backend unhealthy the service fails open: picks go on as if all were healthy (SPEC §10)', async (t) => {
  const [a, b] = await startBackends(t, ['127.24.3.3', '127.24.3.4'], { kind: 'tcp' }) as [TestBackend, TestBackend]
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, {
    port: a.port,
    backends: [backendOf('be-000003a3', a.host, 'zone-a'), backendOf('be-000003b3', b.host, 'zone-b')]
  }))
  const balancer = new ServiceBalancer(h.store.state.services[id] as EndpointService, h.upstream)
  h.checker.start()
  await a.stop()
  await b.stop()
  const within = intervalMs * (FAST_CHECK.unhealthyThreshold + 1) + timeoutMs + 1000
  await waitForHealth(h.upstream, id, 'be-000003a3', 'unhealthy', within)
  await waitForHealth(h.upstream, id, 'be-000003b3', 'unhealthy', within)
  t.ok(balancer.failOpen, 'failing open')
  t.same(zonesOfPicks(balancer, 4), Array(4).fill('zone-a'), 'as if healthy: the same-zone backend is picked')
})
