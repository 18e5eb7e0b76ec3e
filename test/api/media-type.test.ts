// Request bodies are JSON: another content type is a 415 in the error envelope and changes
// nothing; application/json with a UTF-8 charset works, and PATCH also takes
// application/merge-patch+json (RFC 7396 §4). A number beyond a double's range (1e400) is a 400
// that names its field and says "out of range". Addresses: 127.84.0.0/16, ports 0.
import t from 'tap'
import { CONSUMER, startApi, tcpService } from '../helpers/api-harness.ts'
import { readStateOnDisk } from '../helpers/state-on-disk.ts'

const HOST = '127.84.0.10'
const service = JSON.stringify(tcpService())

t.test('a body that is not JSON by its content type is refused with 415 and changes nothing', async (t) => {
  const api = await startApi(t, {}, HOST)
  const created = await api.call('POST', '/v1/endpoint-services', { body: tcpService({ name: 'first' }) })
  t.equal(created.status, 201)
  const id = created.body.id as string
  const cases: Array<{ name: string, method: string, path: string, type: string | undefined, body: string, message: RegExp }> = [
    { name: 'text/plain (fetch\'s default for a string)', method: 'POST', path: '/v1/endpoint-services', type: 'text/plain;charset=UTF-8', body: service, message: /^content-type: "text\/plain" is not supported; send application\/json$/ },
    { name: 'form encoding (curl -d without -H)', method: 'POST', path: '/v1/endpoint-services', type: 'application/x-www-form-urlencoded', body: service, message: /^content-type: "application\/x-www-form-urlencoded" is not supported/ },
    { name: 'no content-type at all', method: 'POST', path: '/v1/endpoint-services', type: undefined, body: service, message: /^content-type: missing; send application\/json$/ },
    { name: 'a JSON-looking type that is not JSON', method: 'POST', path: '/v1/endpoint-services', type: 'application/jsonx', body: service, message: /^content-type: "application\/jsonx"/ },
    { name: 'merge-patch on POST', method: 'POST', path: '/v1/endpoint-services', type: 'application/merge-patch+json', body: service, message: /send application\/json$/ },
    { name: 'JSON in latin1', method: 'PATCH', path: `/v1/endpoint-services/${id}`, type: 'application/json; charset=iso-8859-1', body: '{"acceptanceRequired":true}', message: /^content-type: charset "iso-8859-1" is not supported; JSON is UTF-8$/ },
    { name: 'text/plain on PATCH names both types', method: 'PATCH', path: `/v1/endpoint-services/${id}`, type: 'text/plain', body: '{"acceptanceRequired":true}', message: /send application\/json or application\/merge-patch\+json$/ }
  ]
  for (const c of cases) {
    const before = JSON.stringify(readStateOnDisk(api.store.file))
    // Raw fetch: the harness would add application/json.
    const res = await fetch(api.url + c.path, {
      method: c.method,
      headers: { authorization: 'Bearer provider-dev-token', ...(c.type === undefined ? {} : { 'content-type': c.type }) },
      body: c.type === undefined ? new Blob([c.body]) : c.body // a Blob without a type: no content-type header
    })
    const body = await res.json() as { error?: { code?: string, message?: string } }
    t.equal(res.status, 415, `${c.name}: 415`)
    t.equal(body.error?.code, 'UnsupportedMediaType', `${c.name}: code`)
    t.match(body.error?.message, c.message, `${c.name}: ${body.error?.message}`)
    t.equal(JSON.stringify(readStateOnDisk(api.store.file)), before, `${c.name}: nothing changed`)
  }
  // Authentication still comes first: no token, no hint about the body.
  const anonymous = await fetch(api.url + '/v1/endpoint-services', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: service })
  t.equal(anonymous.status, 401)
})

t.test('application/json with a charset, and merge-patch on PATCH, are taken', async (t) => {
  const api = await startApi(t, {}, HOST)
  const res = await api.call('POST', '/v1/endpoint-services', { raw: service, headers: { 'content-type': 'Application/JSON; charset="UTF-8"' } })
  t.equal(res.status, 201, JSON.stringify(res.body))
  const id = res.body.id as string
  const patched = await api.call('PATCH', `/v1/endpoint-services/${id}`, { raw: '{"acceptanceRequired":true}', headers: { 'content-type': 'application/merge-patch+json' } })
  t.equal(patched.status, 200, JSON.stringify(patched.body))
  t.equal(patched.body.acceptanceRequired, true)
  const backend = patched.body.backends[0].id as string
  const weight = await api.call('PATCH', `/v1/endpoint-services/${id}/backends/${backend}`, { raw: '{"weight":7}', headers: { 'content-type': 'application/merge-patch+json; charset=utf-8' } })
  t.equal(weight.status, 200, JSON.stringify(weight.body))
  t.equal(weight.body.weight, 7)
  const ep = await api.call('POST', '/v1/endpoints', { token: CONSUMER.token, body: { serviceId: id, subnetId: 'subnet-a' } })
  t.equal(ep.status, 403, 'the consumer is not allowed (a JSON body reached the rules)')
  // A route without a body takes any type with an empty body (curl -X POST -H 'content-type: text/plain').
  const own = await api.call('POST', '/v1/endpoints', { body: { serviceId: id, subnetId: 'subnet-a' } })
  t.equal(own.status, 201)
  const accept = await api.call('POST', `/v1/endpoint-services/${id}/connections/${own.body.id as string}/accept`, { raw: '', headers: { 'content-type': 'text/plain' } })
  t.equal(accept.status, 200, JSON.stringify(accept.body))
})

t.test('a number out of a double\'s range is named with its field, not printed as null', async (t) => {
  const api = await startApi(t, {}, HOST)
  const created = await api.call('POST', '/v1/endpoint-services', { body: tcpService() })
  const id = created.body.id as string
  const before = JSON.stringify(readStateOnDisk(api.store.file))
  const cases = [
    { method: 'POST', path: '/v1/endpoint-services', raw: '{"portMappings":[{"protocol":"TCP","servicePort":80,"terminalPort":80}],"backends":[{"address":"127.0.0.1","zone":"zone-a","weight":1e400}]}', message: /^backends\[0\]\.weight: 1e400 is out of range/ },
    { method: 'POST', path: `/v1/endpoint-services/${id}/backends`, raw: '{"address":"127.0.0.2","zone":"zone-a","weight":-1E+999}', message: /^weight: -1E\+999 is out of range/ },
    { method: 'PUT', path: `/v1/endpoint-services/${id}/backends`, raw: '[{"address":"127.0.0.2","zone":"zone-a"},{"address":"127.0.0.3","zone":"zone-a","weight":9e999}]', message: /^backends\[1\]\.weight: 9e999 is out of range/ },
    { method: 'PATCH', path: `/v1/endpoint-services/${id}`, raw: '{"healthCheck":{"intervalSeconds":1e309}}', message: /^healthCheck\.intervalSeconds: 1e309 is out of range/ }
  ]
  for (const c of cases) {
    const res = await api.call(c.method, c.path, { raw: c.raw })
    t.equal(res.status, 400, `${c.method} ${c.path}`)
    t.equal(res.body.error.code, 'InvalidParameter')
    t.match(res.body.error.message, c.message, res.body.error.message)
    t.notMatch(res.body.error.message, /null/)
  }
  t.equal(JSON.stringify(readStateOnDisk(api.store.file)), before, 'nothing changed')
  // The largest finite double is still a number (and then out of the field's range).
  const big = await api.call('POST', `/v1/endpoint-services/${id}/backends`, { raw: '{"address":"127.0.0.2","zone":"zone-a","weight":1e308}' })
  t.equal(big.status, 400)
  t.match(big.body.error.message, /^weight: must be <= 100 \(got 1e\+308\)/)
})
