import t from 'tap'
import type { Backend, EndpointService } from '../../src/control/model.ts'
import { ServiceBalancer, type Peer } from '../../src/dataplane/upstream/balancer.ts'
import { UpstreamState } from '../../src/dataplane/upstream/upstream-state.ts'
import { makeBackend, makeService } from '../helpers/dataplane-fixtures.ts'

const mappings = [{ protocol: 'TCP' as const, servicePort: 80, terminalPort: 80 }]

function service (backends: Backend[], sameZonePreferred = true): EndpointService {
  return makeService({ id: 'vpcesvc-000000000001', portMappings: mappings, backends, sameZonePreferred })
}

function picks (balancer: ServiceBalancer, zone: string, n: number): string[] {
  const out: string[] = []
  for (let i = 0; i < n; i++) out.push(balancer.pick(zone)?.backend.id ?? '-')
  return out
}

t.test('weights 5,1,1 give the smooth sequence a,a,b,a,c,a,a', async (t) => {
  const b = new ServiceBalancer(service([
    makeBackend('127.0.0.1', 'zone-a', 5, 'a'), makeBackend('127.0.0.2', 'zone-a', 1, 'b'), makeBackend('127.0.0.3', 'zone-a', 1, 'c')
  ]), new UpstreamState())
  t.same(picks(b, 'zone-a', 7), ['a', 'a', 'b', 'a', 'c', 'a', 'a'])
  t.same(picks(b, 'zone-a', 7), ['a', 'a', 'b', 'a', 'c', 'a', 'a'], 'the cycle repeats')
})

t.test('same zone preferred: only the caller zone while one is eligible', async (t) => {
  const b = new ServiceBalancer(service([
    makeBackend('127.0.0.1', 'zone-a', 10, 'a1'), makeBackend('127.0.0.2', 'zone-b', 100, 'b1'), makeBackend('127.0.0.3', 'zone-a', 10, 'a2')
  ]), new UpstreamState())
  t.same(new Set(picks(b, 'zone-a', 20)), new Set(['a1', 'a2']))
  t.same(new Set(picks(b, 'zone-b', 5)), new Set(['b1']))
})

t.test('same zone preferred: every zone when the caller zone has no eligible backend', async (t) => {
  const upstream = new UpstreamState()
  const b = new ServiceBalancer(service([
    makeBackend('127.0.0.1', 'zone-a', 0, 'a0'), makeBackend('127.0.0.2', 'zone-a', 50, 'aSick'), makeBackend('127.0.0.3', 'zone-b', 50, 'b1')
  ]), upstream)
  upstream.setHealth(upstream.record('vpcesvc-000000000001', 'aSick'), 'unhealthy', 'test')
  t.same(picks(b, 'zone-a', 4), ['b1', 'b1', 'b1', 'b1'])
})

t.test('sameZonePreferred false spreads over every zone by weight', async (t) => {
  const b = new ServiceBalancer(service([makeBackend('127.0.0.1', 'zone-a', 1, 'a'), makeBackend('127.0.0.2', 'zone-b', 1, 'b')], false),
    new UpstreamState())
  t.same(picks(b, 'zone-a', 4).sort(), ['a', 'a', 'b', 'b'])
})

t.test('weight 0 and unhealthy backends are never picked; unknown counts as healthy', async (t) => {
  const upstream = new UpstreamState()
  const b = new ServiceBalancer(service([
    makeBackend('127.0.0.1', 'zone-a', 0, 'zero'), makeBackend('127.0.0.2', 'zone-a', 100, 'sick'), makeBackend('127.0.0.3', 'zone-a', 1, 'ok')
  ]), upstream)
  upstream.setHealth(upstream.record('vpcesvc-000000000001', 'sick'), 'unhealthy', 'test')
  t.same(picks(b, 'zone-a', 5), ['ok', 'ok', 'ok', 'ok', 'ok'])
  upstream.setHealth(upstream.record('vpcesvc-000000000001', 'sick'), 'healthy', 'test')
  t.ok(picks(b, 'zone-a', 5).includes('sick'), 'healthy again: picked again')
})

t.test('no eligible backend: pick returns undefined', async (t) => {
  const b = new ServiceBalancer(service([makeBackend('127.0.0.1', 'zone-a', 0, 'zero')]), new UpstreamState())
  t.equal(b.pick('zone-a'), undefined)
  const empty = new ServiceBalancer(service([]), new UpstreamState())
  t.equal(empty.pick('zone-a'), undefined)
})

t.test('exclude skips peers already tried', async (t) => {
  const b = new ServiceBalancer(service([makeBackend('127.0.0.1', 'zone-a', 100, 'a'), makeBackend('127.0.0.2', 'zone-b', 1, 'b')]),
    new UpstreamState())
  const first = b.pick('zone-a') as Peer
  t.equal(first.backend.id, 'a')
  t.equal(b.pick('zone-a', new Set([first]))?.backend.id, 'b', 'zone-a exhausted by exclusion: falls over to zone-b')
  t.equal(b.pick('zone-a', new Set(b.peers)), undefined)
})

t.test('update keeps the smoothing of backends that stay and drops removed ones', async (t) => {
  const a = makeBackend('127.0.0.1', 'zone-a', 2, 'a')
  const c = makeBackend('127.0.0.3', 'zone-a', 1, 'c')
  const b = new ServiceBalancer(service([a, makeBackend('127.0.0.2', 'zone-a', 1, 'b'), c]), new UpstreamState())
  t.same(picks(b, 'zone-a', 4), ['a', 'b', 'c', 'a'])
  b.update(service([a, c]))
  t.same(b.peers.map((p) => p.backend.id), ['a', 'c'])
  t.same(picks(b, 'zone-a', 6).filter((id) => id === 'a').length, 4, '2:1 after removal')
  b.update(service([{ ...a, weight: 0 }, c]))
  t.same(picks(b, 'zone-a', 3), ['c', 'c', 'c'], 'weight set to 0: no new picks')
})
