// The control plane's rules without HTTP (SPEC §3, §4, §10): PATCH merges, quotas, the status
// table, authentication, and the declared-resources dry run that check-config shares with start.
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { buildConfig } from '../../src/config/load-config.ts'
import { ControlPlane, type Caller } from '../../src/control/control-plane.ts'
import { endpointTransitions, type EndpointStatus } from '../../src/control/model.ts'
import type { Store } from '../../src/control/store.ts'
import { SqliteStore } from '../../src/control/store-sqlite.ts'

const provider: Caller = { id: '100000000001', name: 'provider' }
const consumer: Caller = { id: '100000000002', name: 'consumer' }
const service = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 8080 }],
  backends: [{ address: '127.0.0.1', zone: 'zone-a' }],
  ...extra
})

async function plane (t: Test, partial: Record<string, unknown> = {}): Promise<{ control: ControlPlane, store: Store, dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-cp-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const config = buildConfig({ stateDir: dir, subnets: [{ id: 'subnet-a', cidr: '127.70.16.0/24', zone: 'zone-a' }], ...partial })
  const store = await SqliteStore.open(dir)
  t.teardown(() => store.close())
  return { control: new ControlPlane(config, store, { backendHealth: () => 'unknown' }), store, dir }
}

t.test('patchService: {healthCheck: {unhealthyThreshold: 4}} keeps every other healthCheck field', async (t) => {
  const { control } = await plane(t)
  const hc = { enabled: false, protocol: 'HTTP', port: 81, path: '/h', intervalSeconds: 10, timeoutSeconds: 5, healthyThreshold: 7, unhealthyThreshold: 9 }
  const svc = await control.createService(provider, service({ healthCheck: hc }))
  const patched = await control.patchService(provider, svc.id, { healthCheck: { unhealthyThreshold: 4 } })
  t.same(patched.healthCheck, { ...hc, unhealthyThreshold: 4 })
})

t.test('patchService checks timeout < interval on the merged result and names the field', async (t) => {
  const { control, store } = await plane(t)
  const svc = await control.createService(provider, service({ healthCheck: { intervalSeconds: 10, timeoutSeconds: 5 } }))
  const before = JSON.stringify(store.state)
  let commits = 0
  store.subscribe(() => { commits++ })
  await t.rejects(control.patchService(provider, svc.id, { healthCheck: { intervalSeconds: 5 } }),
    { code: 'InvalidParameter', message: /^healthCheck\.timeoutSeconds: must be less than intervalSeconds \(5 >= 5\)/ })
  t.equal(JSON.stringify(store.state), before, 'the state is unchanged')
  t.equal(commits, 0, 'nothing was written')
})

t.test('a PATCH that changes nothing writes nothing', async (t) => {
  const { control, store } = await plane(t)
  const svc = await control.createService(provider, service())
  const before = JSON.stringify(store.state)
  let commits = 0
  store.subscribe(() => { commits++ })
  await control.patchService(provider, svc.id, { acceptanceRequired: false })
  await control.patchService(provider, svc.id, {})
  t.equal(JSON.stringify(store.state), before)
  t.equal(commits, 0, 'no change was committed')
})

t.test('deleteService fails pending and rejected endpoints, each change allowed by the status table', async (t) => {
  const { control, store } = await plane(t)
  const svc = await control.createService(provider, service({ acceptanceRequired: true, allowedAccounts: [consumer.id] }))
  const pending = await control.createEndpoint(consumer, { serviceId: svc.id, subnetId: 'subnet-a' })
  const rejected = await control.createEndpoint(consumer, { serviceId: svc.id, subnetId: 'subnet-a' })
  await control.decideConnection(provider, svc.id, rejected.id, 'rejected')
  const seen: Array<[EndpointStatus, EndpointStatus]> = []
  let last = new Map(Object.values(store.state.endpoints).map((e) => [e.id, e.status]))
  store.subscribe(() => {
    const state = store.state
    for (const ep of Object.values(state.endpoints)) {
      const was = last.get(ep.id)
      if (was !== undefined && was !== ep.status) seen.push([was, ep.status])
    }
    last = new Map(Object.values(state.endpoints).map((e) => [e.id, e.status]))
  })
  await control.deleteService(provider, svc.id)
  t.match(store.state.endpoints[pending.id], { status: 'failed', statusReason: `endpoint service ${svc.id} was deleted` })
  t.match(store.state.endpoints[rejected.id], { status: 'failed' })
  t.same(seen.sort(), [['pendingAcceptance', 'failed'], ['rejected', 'failed']])
  for (const [from, to] of seen) t.ok(endpointTransitions[from].includes(to), `${from} → ${to} is in the table`)
})

t.test('the status table: deleting is final, failed only leads to deleting, accept/reject both ways', async (t) => {
  t.same(endpointTransitions.deleting, [])
  t.ok(endpointTransitions.failed.includes('deleting'))
  t.ok(endpointTransitions.rejected.includes('accepted'))
  t.ok(endpointTransitions.accepted.includes('rejected'))
  for (const [from, tos] of Object.entries(endpointTransitions)) t.notOk(tos.includes(from as EndpointStatus), `${from} does not list itself`)
})

t.test('decideConnection refuses a move the table does not allow', async (t) => {
  const { control, store } = await plane(t)
  const svc = await control.createService(provider, service({ allowedAccounts: [consumer.id] }))
  const ep = await control.createEndpoint(consumer, { serviceId: svc.id, subnetId: 'subnet-a' })
  await control.markEndpointFailed(ep.id, 'bind: EADDRNOTAVAIL')
  t.equal(store.state.endpoints[ep.id]?.status, 'failed')
  await t.rejects(control.decideConnection(provider, svc.id, ep.id, 'rejected'), { code: 'Conflict', message: /^status: endpoint .* is failed and cannot become rejected/ })
})

t.test('backendsPerService bounds create, add and replace with QuotaExceeded', async (t) => {
  const { control, store } = await plane(t, { quotas: { backendsPerService: 2 } })
  const b = (i: number) => ({ address: `127.0.0.${i}`, zone: 'zone-a' })
  await t.rejects(control.createService(provider, service({ backends: [b(1), b(2), b(3)] })), { code: 'QuotaExceeded', statusCode: 409 })
  const svc = await control.createService(provider, service({ backends: [b(1), b(2)] }))
  await t.rejects(control.addBackend(provider, svc.id, b(3)), { code: 'QuotaExceeded', message: /^backends: at most 2/ })
  await t.rejects(control.replaceBackends(provider, svc.id, [b(1), b(2), b(3)]), { code: 'QuotaExceeded', message: /^backends: at most 2/ })
  t.equal(store.state.services[svc.id]?.backends.length, 2)
})

t.test('authenticate: Bearer in any case, unknown tokens and other schemes refused', async (t) => {
  const { control } = await plane(t)
  for (const header of ['Bearer provider-dev-token', 'bearer provider-dev-token', 'BEARER  provider-dev-token']) {
    t.same(control.authenticate(header), provider, header)
  }
  for (const header of [undefined, '', 'Bearer', 'Bearer ', 'Basic provider-dev-token', 'Bearer provider-dev-tokenX', 'Bearerprovider-dev-token', 'Bearer provider dev']) {
    t.throws(() => control.authenticate(header), { code: 'Unauthorized', statusCode: 401 }, String(header))
  }
})

t.test('checkDeclared runs the declared rules on an empty state, names each problem, writes nothing', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-cp-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const good = buildConfig({ stateDir: join(dir, 'never') })
  const config = {
    ...good,
    services: [
      { id: 'vpcesvc-aaaaaaaaaaaa', ownerAccountId: provider.id, ...service({ backends: [{ address: '127.0.0.1', zone: 'zone-q', weight: 1 }] }), acceptanceRequired: false, sameZonePreferred: true, healthCheck: { enabled: true, protocol: 'TCP', path: '/', intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 3 }, allowedAccounts: [] }
    ],
    endpoints: [
      { id: 'vpce-000000000001', ownerAccountId: provider.id, serviceId: 'vpcesvc-aaaaaaaaaaaa', subnetId: 'subnet-a', privateDns: true, allowedSources: [] },
      { id: 'vpce-000000000002', ownerAccountId: provider.id, serviceId: 'vpcesvc-bbbbbbbbbbbb', subnetId: 'subnet-a', privateDns: true, allowedSources: [] }
    ]
  } as unknown as typeof good
  const errors = ControlPlane.checkDeclared(config)
  t.same(errors, [
    'services[0].backends[0].zone: unknown zone "zone-q" (configured: zone-a, zone-b)',
    'endpoints[1].serviceId: endpoint service vpcesvc-bbbbbbbbbbbb not found'
  ], 'the endpoint of the refused service is not reported twice')
  t.same(await readdir(dir), [], 'nothing was written')
})

t.test('applyDeclared is all or nothing: one bad resource, and nothing is stored', async (t) => {
  const { control, store } = await plane(t)
  const decl = (id: string, zone: string) => ({
    id, ownerAccountId: provider.id, ...service({ backends: [{ address: '127.0.0.1', zone, weight: 1 }] }),
    acceptanceRequired: false, sameZonePreferred: true, allowedAccounts: [],
    healthCheck: { enabled: true, protocol: 'TCP', path: '/', intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 3 }
  }) as never
  await t.rejects(control.applyDeclared([decl('vpcesvc-aaaaaaaaaaaa', 'zone-a'), decl('vpcesvc-bbbbbbbbbbbb', 'zone-x')], []),
    { code: 'InvalidConfig', errors: ['services[1].backends[0].zone: unknown zone "zone-x" (configured: zone-a, zone-b)'] })
  t.same(store.state.services, {})
  await control.applyDeclared([decl('vpcesvc-aaaaaaaaaaaa', 'zone-a')], [])
  const once = store.state
  await control.applyDeclared([decl('vpcesvc-aaaaaaaaaaaa', 'zone-a')], [])
  t.equal(store.state, once, 'applying the same again writes nothing')
})
