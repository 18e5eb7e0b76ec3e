// PATCH bodies are JSON merge patches (RFC 7396, SPEC §10): fields not sent keep their stored
// value (every healthCheck field included), `null` removes an optional field (its default comes
// back) and is a 400 on a required one, and validation applies to the merged result.
import t from 'tap'
import { CONSUMER, startApi, tcpService } from '../helpers/api-harness.ts'

const custom = {
  enabled: false, protocol: 'HTTP', port: 9000, path: '/ready', intervalSeconds: 7, timeoutSeconds: 3, healthyThreshold: 5, unhealthyThreshold: 6
}
const defaults = { enabled: true, protocol: 'TCP', path: '/', intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 3 }

t.test('service PATCH: one healthCheck field at a time, the others keep their value', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ healthCheck: custom, acceptanceRequired: true, sameZonePreferred: false }) })).body
  const changes: Record<string, unknown> = {
    enabled: true, protocol: 'TCP', port: 9001, path: '/live', intervalSeconds: 9, timeoutSeconds: 4, healthyThreshold: 1, unhealthyThreshold: 4
  }
  let expected: Record<string, unknown> = { ...custom }
  for (const [field, value] of Object.entries(changes)) {
    const res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { healthCheck: { [field]: value } } })
    t.equal(res.status, 200, `${field}: 200`)
    expected = { ...expected, [field]: value }
    t.same(res.body.healthCheck, expected, `healthCheck.${field} changed, every other field kept`)
    t.equal(res.body.acceptanceRequired, true, 'acceptanceRequired kept')
    t.equal(res.body.sameZonePreferred, false, 'sameZonePreferred kept')
    t.same(api.store.state.services[svc.id]?.healthCheck, expected, 'and stored so')
  }
})

t.test('service PATCH: top-level fields one at a time', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ healthCheck: custom }) })).body
  let res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { acceptanceRequired: true } })
  t.match(res.body, { acceptanceRequired: true, sameZonePreferred: true, healthCheck: custom })
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { sameZonePreferred: false } })
  t.match(res.body, { acceptanceRequired: true, sameZonePreferred: false, healthCheck: custom })
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: {} })
  t.equal(res.status, 200, 'an empty patch changes nothing')
  t.match(res.body, { acceptanceRequired: true, sameZonePreferred: false, healthCheck: custom })
  t.same(res.body.backends.map((b: any) => b.address), ['127.0.0.1'], 'backends untouched')
})

t.test('service PATCH: null removes an optional field and its default comes back', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ healthCheck: custom, acceptanceRequired: true, sameZonePreferred: false }) })).body
  let res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { healthCheck: { port: null } } })
  t.equal(res.status, 200)
  t.notOk('port' in res.body.healthCheck, 'healthCheck.port removed: the first TCP servicePort is probed')
  t.equal(res.body.healthCheck.path, '/ready', 'the rest kept')
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { healthCheck: { path: null, unhealthyThreshold: null } } })
  t.equal(res.body.healthCheck.path, '/', 'path back to its default')
  t.equal(res.body.healthCheck.unhealthyThreshold, 3, 'unhealthyThreshold back to its default')
  t.equal(res.body.healthCheck.intervalSeconds, 7, 'interval kept')
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { acceptanceRequired: null, sameZonePreferred: null } })
  t.equal(res.body.acceptanceRequired, false, 'acceptanceRequired default')
  t.equal(res.body.sameZonePreferred, true, 'sameZonePreferred default')
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { healthCheck: null } })
  t.same(res.body.healthCheck, defaults, 'healthCheck: null → every default')
})

t.test('service PATCH: validation applies to the merged result, and a refusal changes nothing', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ healthCheck: { intervalSeconds: 5, timeoutSeconds: 4 } }) })).body
  const before = JSON.stringify(api.store.state)
  let res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { healthCheck: { intervalSeconds: 3 } } })
  t.equal(res.status, 400, 'interval 3 with the stored timeout 4 is refused')
  t.match(res.body.error.message, /^healthCheck\.timeoutSeconds: must be less than intervalSeconds \(4 >= 3\)/)
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { healthCheck: { intervalSeconds: null } } })
  t.equal(res.status, 400, 'interval back to its default 2 with the stored timeout 4 is refused')
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { healthCheck: { protocol: 'ICMP' } } })
  t.equal(res.status, 400)
  t.match(res.body.error.message, /^healthCheck\.protocol: /)
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { portMappings: null } })
  t.equal(res.status, 409, 'portMappings cannot be removed either')
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { healthCheck: 'off' } })
  t.equal(res.status, 400)
  t.equal(JSON.stringify(api.store.state), before, 'nothing changed')
  res = await api.call('PATCH', `/v1/endpoint-services/${svc.id}`, { body: { healthCheck: { intervalSeconds: 3, timeoutSeconds: 2 } } })
  t.equal(res.status, 200, 'both in one patch: fine')
})

t.test('backend PATCH: weight and zone merge; zone is required, weight null → 100', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ backends: [{ address: '127.0.0.1', zone: 'zone-b', weight: 30 }] }) })).body
  const path = `/v1/endpoint-services/${svc.id}/backends/${svc.backends[0].id}`
  let res = await api.call('PATCH', path, { body: { weight: 7 } })
  t.match(res.body, { zone: 'zone-b', weight: 7, address: '127.0.0.1' })
  res = await api.call('PATCH', path, { body: { zone: 'zone-a' } })
  t.match(res.body, { zone: 'zone-a', weight: 7 })
  res = await api.call('PATCH', path, { body: { weight: null } })
  t.match(res.body, { zone: 'zone-a', weight: 100 }, 'weight back to its default')
  const before = JSON.stringify(api.store.state)
  res = await api.call('PATCH', path, { body: { zone: null } })
  t.equal(res.status, 400)
  t.match(res.body.error.message, /^zone: is required/)
  res = await api.call('PATCH', path, { body: { zone: 'zone-x' } })
  t.equal(res.status, 400)
  t.match(res.body.error.message, /^zone: unknown zone/)
  t.equal(JSON.stringify(api.store.state), before, 'refusals changed nothing')
})

t.test('endpoint PATCH: allowedSources and privateDns merge; null restores the default', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ allowedAccounts: [CONSUMER.id] }) })).body
  const ep = (await api.call('POST', '/v1/endpoints', { token: CONSUMER.token, body: { serviceId: svc.id, subnetId: 'subnet-a', privateDns: false, allowedSources: ['10.0.0.0/8'] } })).body
  const path = `/v1/endpoints/${ep.id}`
  let res = await api.call('PATCH', path, { token: CONSUMER.token, body: { privateDns: true } })
  t.match(res.body, { privateDns: true, allowedSources: ['10.0.0.0/8'] })
  t.equal(res.body.dnsNames.length, 2, 'names appear with privateDns')
  res = await api.call('PATCH', path, { token: CONSUMER.token, body: { allowedSources: ['192.0.2.0/24'] } })
  t.match(res.body, { privateDns: true, allowedSources: ['192.0.2.0/24'] })
  res = await api.call('PATCH', path, { token: CONSUMER.token, body: { allowedSources: null } })
  t.same(res.body.allowedSources, ['0.0.0.0/0', '::/0'], 'allowedSources back to its default')
  res = await api.call('PATCH', path, { token: CONSUMER.token, body: { privateDns: false } })
  t.same(res.body.dnsNames, [])
  res = await api.call('PATCH', path, { token: CONSUMER.token, body: { privateDns: null } })
  t.equal(res.body.privateDns, true, 'privateDns back to its default')
  const before = JSON.stringify(api.store.state)
  res = await api.call('PATCH', path, { token: CONSUMER.token, body: { allowedSources: ['nope'] } })
  t.equal(res.status, 400)
  res = await api.call('PATCH', path, { token: CONSUMER.token, body: { ip: null } })
  t.equal(res.status, 400, 'a field PATCH does not know is refused, null or not')
  t.equal(JSON.stringify(api.store.state), before)
})

t.test('backendsPerService: past the quota → 409 QuotaExceeded, nothing changes', async (t) => {
  const api = await startApi(t, { quotas: { backendsPerService: 3 } })
  const backends = (n: number) => Array.from({ length: n }, (_, i) => ({ address: `127.0.9.${i + 1}`, zone: 'zone-a' }))
  let res = await api.call('POST', '/v1/endpoint-services', { body: tcpService({ backends: backends(4) }) })
  t.equal(res.status, 409)
  t.equal(res.body.error.code, 'QuotaExceeded')
  t.match(res.body.error.message, /^backends: at most 3 backends per service \(quota backendsPerService\), got 4/)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ backends: backends(3) }) })).body
  const before = JSON.stringify(api.store.state)
  res = await api.call('POST', `/v1/endpoint-services/${svc.id}/backends`, { body: { address: '127.0.9.9', zone: 'zone-a' } })
  t.equal(res.status, 409)
  t.equal(res.body.error.code, 'QuotaExceeded')
  res = await api.call('PUT', `/v1/endpoint-services/${svc.id}/backends`, { body: backends(4) })
  t.equal(res.status, 409)
  t.equal(JSON.stringify(api.store.state), before, 'nothing changed')
  res = await api.call('PUT', `/v1/endpoint-services/${svc.id}/backends`, { body: backends(2) })
  t.equal(res.status, 200)
  res = await api.call('POST', `/v1/endpoint-services/${svc.id}/backends`, { body: { address: '127.0.9.9', zone: 'zone-a' } })
  t.equal(res.status, 201, 'room again')
})

t.test('backendsPerService defaults to 100: 5,000 backends in one POST are refused', async (t) => {
  const api = await startApi(t)
  const backends = Array.from({ length: 5000 }, (_, i) => ({ address: `10.${i >> 8}.${i & 255}.1`, zone: 'zone-a' }))
  const res = await api.call('POST', '/v1/endpoint-services', { body: tcpService({ backends }) })
  t.equal(res.status, 409)
  t.match(res.body.error.message, /at most 100 backends/)
  t.same(api.store.state.services, {})
})

t.test('a requested endpoint ip that is the network, broadcast or .1 address → 400', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService() })).body
  for (const [ip, what] of [['127.10.1.0', 'network'], ['127.10.1.255', 'broadcast'], ['127.10.1.1', 'first host']]) {
    const res = await api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-a', ip } })
    t.equal(res.status, 400, `${ip}: 400`)
    t.match(res.body.error.message, new RegExp(`^ip: ${ip.replace(/\./g, '\\.')} is the ${what}`))
  }
  const ok = await api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-a', ip: '127.10.1.254' } })
  t.equal(ok.status, 201)
})
