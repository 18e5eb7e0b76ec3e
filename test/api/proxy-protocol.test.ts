// The service field `proxyProtocol` (SPEC §13) through the real API and the config file: default
// `off`, set on create, changed by PATCH without touching other fields, a bad value refused with
// the field named and nothing changed, declared services in the config file carry it.
import t from 'tap'
import { parseConfig } from '../../src/config/load-config.ts'
import { PROVIDER, startApi, tcpService } from '../helpers/api-harness.ts'

t.test('a service is created with proxyProtocol off unless it asks for v1 or v2', async (t) => {
  const api = await startApi(t)
  const plain = await api.call('POST', '/v1/endpoint-services', { body: tcpService() })
  t.equal(plain.status, 201)
  t.equal(plain.body.proxyProtocol, 'off')
  const v2 = await api.call('POST', '/v1/endpoint-services', { body: tcpService({ name: 'pp', proxyProtocol: 'v2' }) })
  t.equal(v2.status, 201)
  t.equal(v2.body.proxyProtocol, 'v2')
  t.equal((await api.call('GET', `/v1/endpoint-services/${v2.body.id as string}`)).body.proxyProtocol, 'v2')
  t.equal(api.store.state.services[v2.body.id]?.proxyProtocol, 'v2', 'stored')
})

t.test('PATCH changes proxyProtocol and keeps every other field', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ acceptanceRequired: true }) })).body
  const patched = await api.call('PATCH', `/v1/endpoint-services/${svc.id as string}`, { body: { proxyProtocol: 'v1' } })
  t.equal(patched.status, 200)
  t.equal(patched.body.proxyProtocol, 'v1')
  t.same({ ...patched.body, proxyProtocol: svc.proxyProtocol }, svc, 'nothing else changed')
  const other = await api.call('PATCH', `/v1/endpoint-services/${svc.id as string}`, { body: { sameZonePreferred: false } })
  t.equal(other.body.proxyProtocol, 'v1', 'a PATCH of another field keeps it')
  const off = await api.call('PATCH', `/v1/endpoint-services/${svc.id as string}`, { body: { proxyProtocol: 'off' } })
  t.equal(off.body.proxyProtocol, 'off')
})

t.test('a bad proxyProtocol is a 400 naming the field, and changes nothing', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ proxyProtocol: 'v2' }) })).body
  const before = JSON.stringify(api.store.state)
  for (const bad of ['v3', 'V2', 2, true, null, '']) {
    const created = await api.call('POST', '/v1/endpoint-services', { body: tcpService({ name: 'x', proxyProtocol: bad }) })
    t.equal(created.status, 400, `create ${JSON.stringify(bad)}`)
    t.equal(created.body.error.code, 'InvalidParameter')
    t.match(created.body.error.message, /^proxyProtocol: /)
    if (bad === null) continue // a merge patch's null resets the field (next test)
    const patched = await api.call('PATCH', `/v1/endpoint-services/${svc.id as string}`, { body: { proxyProtocol: bad } })
    t.equal(patched.status, 400, `patch ${JSON.stringify(bad)}`)
    t.match(patched.body.error.message, /^proxyProtocol: /)
  }
  t.equal(JSON.stringify(api.store.state), before, 'state unchanged')
})

t.test('PATCH {proxyProtocol: null} is a merge patch: the field goes back to its default, off', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ proxyProtocol: 'v1' }) })).body
  const patched = await api.call('PATCH', `/v1/endpoint-services/${svc.id as string}`, { body: { proxyProtocol: null } })
  t.equal(patched.status, 200)
  t.equal(patched.body.proxyProtocol, 'off')
  t.equal((await api.call('GET', `/v1/endpoint-services/${svc.id as string}`)).body.proxyProtocol, 'off')
})

t.test('a declared service in the config file carries proxyProtocol; a bad value names its path', async (t) => {
  const yaml = (value: string): string => [
    'services:',
    '  - id: vpcesvc-0000000000aa',
    `    ownerAccountId: "${PROVIDER.id}"`,
    '    portMappings: [{ protocol: TCP, servicePort: 5432, terminalPort: 15432 }]',
    '    backends: [{ address: 127.74.3.30, zone: zone-a }]',
    `    proxyProtocol: ${value}`,
    ''
  ].join('\n')
  const config = parseConfig(yaml('v2'), 'pp.yaml')
  t.equal(config.services[0]?.proxyProtocol, 'v2')
  t.equal(parseConfig(yaml('off'), 'pp.yaml').services[0]?.proxyProtocol, 'off')
  t.throws(() => parseConfig(yaml('v9'), 'pp.yaml'), /services\[0\]\.proxyProtocol/)

  const api = await startApi(t)
  await api.control.applyDeclared(config.services, [])
  t.equal(api.store.state.services['vpcesvc-0000000000aa']?.proxyProtocol, 'v2', 'applied to the store')
})
