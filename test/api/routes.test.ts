import t from 'tap'
import { CONSUMER, OTHER, PROVIDER, startApi, tcpService } from '../helpers/api-harness.ts'
import { readStateOnDisk } from '../helpers/state-on-disk.ts'

t.test('healthz answers without a token', async (t) => {
  const api = await startApi(t)
  const res = await api.call('GET', '/healthz', { token: null })
  t.equal(res.status, 200)
  t.same(res.body, { status: 'ok' })
})

t.test('metrics are served without a token and count API requests by route template', async (t) => {
  const api = await startApi(t)
  await api.call('GET', '/v1/endpoint-services')
  const res = await fetch(api.url + '/metrics')
  t.equal(res.status, 200)
  const text = await res.text()
  t.match(text, /linkgate_api_requests_total\{method="GET",route="\/v1\/endpoint-services",status="200"\} 1/)
})

t.test('the seed flow: provider publishes, allows, consumer finds by name, endpoint pending, provider accepts', async (t) => {
  const api = await startApi(t)
  const created = await api.call('POST', '/v1/endpoint-services', {
    body: tcpService({ acceptanceRequired: true })
  })
  t.equal(created.status, 201)
  const svc = created.body
  t.match(svc.id, /^vpcesvc-[0-9a-f]{12}$/)
  t.equal(svc.serviceName, `local-1.db.${svc.id}`)
  t.equal(svc.ownerAccountId, PROVIDER.id)
  t.equal(svc.status, 'available')
  t.equal(svc.sameZonePreferred, true)
  t.match(svc.backends[0], { address: '127.0.0.1', zone: 'zone-a', weight: 100, health: 'unknown' })
  t.match(svc.backends[0].id, /^be-[0-9a-f]{8}$/)
  t.same(svc.healthCheck, {
    enabled: true, protocol: 'TCP', path: '/', intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 3
  })
  t.match(svc.createdAt, /^\d{4}-\d\d-\d\dT/)

  // Not yet allowed: the consumer cannot see it, and creating an endpoint is 403.
  const hidden = await api.call('GET', '/v1/available-services?name=db', { token: CONSUMER.token })
  t.same(hidden.body.items, [])
  const refused = await api.call('POST', '/v1/endpoints', { token: CONSUMER.token, body: { serviceId: svc.id, subnetId: 'subnet-a' } })
  t.equal(refused.status, 403)
  t.equal(refused.body.error.code, 'Forbidden')

  const allowed = await api.call('POST', `/v1/endpoint-services/${svc.id}/allowed-accounts`, { body: { accountId: CONSUMER.id } })
  t.equal(allowed.status, 201)
  t.same(allowed.body.items, [CONSUMER.id])
  const list = await api.call('GET', `/v1/endpoint-services/${svc.id}/allowed-accounts`)
  t.same(list.body, { items: [CONSUMER.id] })

  const found = await api.call('GET', '/v1/available-services?name=db', { token: CONSUMER.token })
  t.equal(found.body.items.length, 1)
  t.match(found.body.items[0], { id: svc.id, serviceName: svc.serviceName, acceptanceRequired: true, zones: ['zone-a'] })
  t.notOk('backends' in found.body.items[0], 'a consumer does not see the provider backends')

  const ep = await api.call('POST', '/v1/endpoints', {
    token: CONSUMER.token, body: { serviceName: svc.serviceName, subnetId: 'subnet-a' }
  })
  t.equal(ep.status, 201)
  t.match(ep.body, { serviceId: svc.id, ownerAccountId: CONSUMER.id, status: 'pendingAcceptance', ip: '127.10.1.2', zone: 'zone-a', privateDns: true })
  t.same(ep.body.dnsNames, [], 'no DNS names before acceptance')
  t.same(ep.body.allowedSources, ['0.0.0.0/0', '::/0'])

  const conns = await api.call('GET', `/v1/endpoint-services/${svc.id}/connections`)
  t.equal(conns.body.items.length, 1)
  t.match(conns.body.items[0], { id: ep.body.id, ownerAccountId: CONSUMER.id, status: 'pendingAcceptance', ip: '127.10.1.2' })

  const accepted = await api.call('POST', `/v1/endpoint-services/${svc.id}/connections/${ep.body.id}/accept`)
  t.equal(accepted.status, 200)
  t.equal(accepted.body.status, 'accepted')

  const seen = await api.call('GET', `/v1/endpoints/${ep.body.id}`, { token: CONSUMER.token })
  t.equal(seen.body.status, 'accepted')
  t.equal(seen.body.ip, '127.10.1.2')
  t.same(seen.body.dnsNames, [
    `${ep.body.id}.${svc.id}.local-1.privatelink.internal`,
    `${ep.body.id}-zone-a.${svc.id}.local-1.privatelink.internal`
  ])
  const providerView = await api.call('GET', `/v1/endpoint-services/${svc.id}/connections`)
  t.equal(providerView.body.items[0].status, 'accepted')
  // The provider does not see the consumer's endpoint through the consumer routes.
  const notMine = await api.call('GET', `/v1/endpoints/${ep.body.id}`)
  t.equal(notMine.status, 404)
})

t.test('an endpoint of the owner account is accepted at once, and the lowest free address is used', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ acceptanceRequired: true }) })).body
  const a = await api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-b' } })
  t.equal(a.body.status, 'accepted')
  t.equal(a.body.ip, '127.10.2.2')
  t.equal(a.body.zone, 'zone-b')
  const b = await api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-b', ip: '127.10.2.9' } })
  t.equal(b.body.ip, '127.10.2.9')
  const c = await api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-b' } })
  t.equal(c.body.ip, '127.10.2.3')
})

t.test('an allow-listed account without acceptanceRequired is accepted; "*" allows everyone', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ allowedAccounts: ['*'] }) })).body
  const ep = await api.call('POST', '/v1/endpoints', { token: OTHER.token, body: { serviceId: svc.id, subnetId: 'subnet-a' } })
  t.equal(ep.status, 201)
  t.equal(ep.body.status, 'accepted')
})

t.test('list, get, patch and delete a service', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService() })).body
  const list = await api.call('GET', '/v1/endpoint-services')
  t.same(list.body.items.map((s: { id: string }) => s.id), [svc.id])
  const other = await api.call('GET', '/v1/endpoint-services', { token: CONSUMER.token })
  t.same(other.body.items, [], 'another account sees none of them')
  const got = await api.call('GET', `/v1/endpoint-services/${svc.id}`)
  t.equal(got.body.id, svc.id)
  const patched = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, {
    body: { acceptanceRequired: true, sameZonePreferred: false, healthCheck: { protocol: 'HTTP', path: '/health', intervalSeconds: 5 } }
  })
  t.equal(patched.status, 200)
  t.match(patched.body, { acceptanceRequired: true, sameZonePreferred: false })
  t.match(patched.body.healthCheck, { protocol: 'HTTP', path: '/health', intervalSeconds: 5, timeoutSeconds: 1 })
  const immutable = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, {
    body: { portMappings: [{ protocol: 'TCP', servicePort: 1, terminalPort: 2 }] }
  })
  t.equal(immutable.status, 409)
  t.equal(immutable.body.error.code, 'Conflict')
  t.match(immutable.body.error.message, /^portMappings: /)
  const del = await api.call('DELETE', `/v1/endpoint-services/${svc.id}`)
  t.equal(del.status, 204)
  t.equal((await api.call('GET', `/v1/endpoint-services/${svc.id}`)).status, 404)
})

t.test('a service with an accepted endpoint cannot be deleted; after the endpoint goes it can', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService() })).body
  const ep = (await api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-a' } })).body
  const refused = await api.call('DELETE', `/v1/endpoint-services/${svc.id}`)
  t.equal(refused.status, 409)
  t.match(refused.body.error.message, ep.id)
  t.equal((await api.call('DELETE', `/v1/endpoints/${ep.id}`)).status, 204)
  t.equal((await api.call('GET', `/v1/endpoints/${ep.id}`)).status, 404)
  t.equal((await api.call('DELETE', `/v1/endpoint-services/${svc.id}`)).status, 204)
})

t.test('backends: add, patch, replace, delete', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService() })).body
  const added = await api.call('POST', `/v1/endpoint-services/${svc.id}/backends`, { body: { address: '127.0.0.2', zone: 'zone-b', weight: 50 } })
  t.equal(added.status, 201)
  t.match(added.body, { address: '127.0.0.2', zone: 'zone-b', weight: 50, health: 'unknown' })
  const patched = await api.call('PATCH', `/v1/endpoint-services/${svc.id}/backends/${added.body.id}`, { body: { weight: 0, zone: 'zone-a' } })
  t.match(patched.body, { id: added.body.id, weight: 0, zone: 'zone-a' })
  const replaced = await api.call('PUT', `/v1/endpoint-services/${svc.id}/backends`, {
    body: [{ address: '127.0.0.1', zone: 'zone-a' }, { address: '::1', zone: 'zone-b', weight: 10 }]
  })
  t.equal(replaced.status, 200)
  t.equal(replaced.body.items.length, 2)
  t.equal(replaced.body.items[0].id, svc.backends[0].id, 'a backend kept by address keeps its id')
  t.match(replaced.body.items[1], { address: '::1', weight: 10 })
  const del = await api.call('DELETE', `/v1/endpoint-services/${svc.id}/backends/${replaced.body.items[1].id}`)
  t.equal(del.status, 204)
  const after = await api.call('GET', `/v1/endpoint-services/${svc.id}`)
  t.equal(after.body.backends.length, 1)
})

t.test('allowed accounts: remove', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ allowedAccounts: [CONSUMER.id, '*'] }) })).body
  t.equal((await api.call('DELETE', `/v1/endpoint-services/${svc.id}/allowed-accounts/*`)).status, 204)
  t.same((await api.call('GET', `/v1/endpoint-services/${svc.id}/allowed-accounts`)).body.items, [CONSUMER.id])
  t.equal((await api.call('DELETE', `/v1/endpoint-services/${svc.id}/allowed-accounts/${OTHER.id}`)).status, 404)
})

t.test('reject stops an accepted endpoint; its DNS names go', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ allowedAccounts: [CONSUMER.id] }) })).body
  const ep = (await api.call('POST', '/v1/endpoints', { token: CONSUMER.token, body: { serviceId: svc.id, subnetId: 'subnet-a' } })).body
  t.equal(ep.status, 'accepted')
  const rejected = await api.call('POST', `/v1/endpoint-services/${svc.id}/connections/${ep.id}/reject`)
  t.equal(rejected.body.status, 'rejected')
  const seen = (await api.call('GET', `/v1/endpoints/${ep.id}`, { token: CONSUMER.token })).body
  t.equal(seen.status, 'rejected')
  t.same(seen.dnsNames, [])
  // The consumer cannot accept its own connection to another account's service.
  const notProvider = await api.call('POST', `/v1/endpoint-services/${svc.id}/connections/${ep.id}/accept`, { token: CONSUMER.token })
  t.equal(notProvider.status, 404)
})

t.test('endpoints: list, patch allowedSources and privateDns', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService() })).body
  const ep = (await api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-a' } })).body
  t.same((await api.call('GET', '/v1/endpoints')).body.items.map((e: { id: string }) => e.id), [ep.id])
  t.same((await api.call('GET', '/v1/endpoints', { token: CONSUMER.token })).body.items, [])
  const patched = await api.call('PATCH', `/v1/endpoints/${ep.id}`, { body: { allowedSources: ['127.0.0.0/8'], privateDns: false } })
  t.equal(patched.status, 200)
  t.same(patched.body.allowedSources, ['127.0.0.0/8'])
  t.same(patched.body.dnsNames, [])
})

t.test('every acknowledged change is in the state database', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService() })).body
  const doc = readStateOnDisk(api.store.file)
  t.equal(doc.services[svc.id].serviceName, svc.serviceName)
})
