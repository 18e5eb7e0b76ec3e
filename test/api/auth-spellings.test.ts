// Authentication by route, not by URL text (SPEC §10): however a /v1 path is spelled, a request
// without a valid token never reaches a handler — it is 401 and changes nothing — and with a
// token the same spelling reaches the same handler or a plain 404.
import t from 'tap'
import { CONSUMER, PROVIDER, startApi, tcpService } from '../helpers/api-harness.ts'
import { rawCall } from '../helpers/raw-http.ts'

const spellings = (id: string): Array<[string, string]> => [
  ['percent-encoded v', '/%761/endpoints'],
  ['percent-encoded V upper hex', '/%561/endpoints'],
  ['percent-encoded 1', '/v%31/endpoints'],
  ['percent-encoded slash', '/v1%2fendpoints'],
  ['percent-encoded e', '/v1/%65ndpoints'],
  ['double-encoded v', '/%2576%31/endpoints'],
  ['double slash at start', '//v1/endpoints'],
  ['double slash inside', '/v1//endpoints'],
  ['dot segment', '/v1/./endpoints'],
  ['dot-dot segment', '/v1/x/../endpoints'],
  ['encoded dot', '/v1/%2e/endpoints'],
  ['encoded dot-dot', '/v1/x/%2e%2e/endpoints'],
  ['leading dot-dot', '/../v1/endpoints'],
  ['backslash', '/v1\\endpoints'],
  ['upper case V1', '/V1/endpoints'],
  ['trailing slash', '/v1/endpoints/'],
  ['query string', '/v1/endpoints?x=1'],
  ['matrix parameter', '/v1;x=1/endpoints'],
  ['service by id, encoded', `/%76%31/endpoint-services/${id}`],
  ['service by id, double slash', `/v1/endpoint-services//${id}`],
  ['bare /v1', '/v1'],
  ['unknown route under /v1', '/v1/load-balancers'],
  ['unknown route, encoded', '/%761/load-balancers'],
  ['broken escape', '/v1/endpoints%'],
  ['broken escape inside', '/v1/%zz/endpoints']
]

t.test('no spelling of a /v1 path reaches a handler without a token', async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService() })).body
  const before = JSON.stringify(api.store.state)
  const methods = ['GET', 'POST', 'PATCH', 'PUT', 'DELETE']
  const tokens: Array<[string, Record<string, string>]> = [
    ['no header', {}],
    ['unknown token', { authorization: 'Bearer not-a-real-token' }],
    ['Basic scheme', { authorization: `Basic ${PROVIDER.token}` }],
    ['empty bearer', { authorization: 'Bearer ' }]
  ]
  for (const [name, path] of spellings(svc.id)) {
    for (const method of methods) {
      for (const [how, headers] of tokens) {
        const res = await rawCall(api.url, method, path, headers, method === 'GET' || method === 'DELETE' ? undefined : '{}')
        t.equal(res.status, 401, `${name} ${method} ${path} (${how}): 401`)
        t.equal(res.body?.error?.code, 'Unauthorized', `${name} ${method} (${how}): code`)
      }
    }
  }
  t.equal(JSON.stringify(api.store.state), before, 'nothing changed')
})

t.test('with a token, an encoded spelling reaches the same handler (never a 500)', async (t) => {
  const api = await startApi(t)
  const auth = { authorization: `Bearer ${CONSUMER.token}` }
  for (const path of ['/%761/endpoints', '/v%31/endpoints', '/v1/%65ndpoints']) {
    const res = await rawCall(api.url, 'GET', path, auth)
    t.equal(res.status, 200, `${path}: 200`)
    t.same(res.body?.items, [], `${path}: the caller's (empty) list`)
  }
  for (const path of ['//v1/endpoints', '/v1/./endpoints', '/v1/%2e/endpoints', '/V1/endpoints', '/v1/load-balancers']) {
    const res = await rawCall(api.url, 'GET', path, auth)
    t.ok(res.status === 200 || res.status === 404, `${path}: ${res.status} is 200 or 404`)
    t.ok(res.status < 500)
  }
})

t.test("a DELETE on another account's service id by any spelling reveals nothing", async (t) => {
  const api = await startApi(t)
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService() })).body
  const missing = 'vpcesvc-000000000000'
  for (const path of [`/%761/endpoint-services/${svc.id}`, `/v1/endpoint-services/${svc.id}`]) {
    const exists = await rawCall(api.url, 'DELETE', path)
    const absent = await rawCall(api.url, 'DELETE', path.replace(svc.id, missing))
    t.equal(exists.status, 401, `${path} without a token: 401`)
    t.same(exists.body, absent.body, 'the same answer for an existing and a missing id')
    const other = await rawCall(api.url, 'DELETE', path, { authorization: `Bearer ${CONSUMER.token}` })
    const otherMissing = await rawCall(api.url, 'DELETE', path.replace(svc.id, missing), { authorization: `Bearer ${CONSUMER.token}` })
    t.equal(other.status, 404, "another account's token: 404")
    t.equal(otherMissing.status, 404)
  }
  t.ok(api.store.state.services[svc.id], 'the service is still there')
})

t.test('a malformed escape: 401 without a token, 400 in the envelope with one', async (t) => {
  const api = await startApi(t)
  const res = await rawCall(api.url, 'GET', '/v1/endpoints%', { authorization: `Bearer ${CONSUMER.token}` })
  t.equal(res.status, 400)
  t.equal(res.body?.error?.code, 'InvalidParameter')
  t.match(res.body?.error?.message, /^path: /)
})

t.test('a request the HTTP parser refuses still gets the error envelope', async (t) => {
  const api = await startApi(t)
  const { connect } = await import('node:net')
  const { hostname, port } = new URL(api.url)
  const text = await new Promise<string>((resolve) => {
    const s = connect({ host: hostname, port: Number(port) }, () => s.write('GET /v1/endpoints HTTP/1.1\r\nhost x\r\n\r\n'))
    let out = ''
    s.setEncoding('utf8')
    s.on('data', (d: string) => { out += d })
    s.on('close', () => resolve(out))
    s.on('error', () => {})
  })
  t.match(text, /^HTTP\/1\.1 400/)
  t.match(text, /"code":"InvalidParameter"/)
})

t.test('the scheme word Bearer matches case-insensitively', async (t) => {
  const api = await startApi(t)
  for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) {
    const res = await rawCall(api.url, 'GET', '/v1/endpoints', { authorization: `${scheme} ${CONSUMER.token}` })
    t.equal(res.status, 200, `${scheme}: 200`)
  }
  const twoSpaces = await rawCall(api.url, 'GET', '/v1/endpoints', { authorization: `Bearer  ${CONSUMER.token}` })
  t.equal(twoSpaces.status, 200, 'several spaces before the token (RFC 9110 1*SP)')
})

t.test('paths outside /v1 stay public and unknown ones are a plain 404', async (t) => {
  const api = await startApi(t)
  t.equal((await rawCall(api.url, 'GET', '/healthz')).status, 200)
  t.equal((await rawCall(api.url, 'GET', '/%68ealthz')).status, 200, 'an encoded /healthz is still /healthz')
  t.equal((await rawCall(api.url, 'GET', '/metrics')).status, 200)
  const unknown = await rawCall(api.url, 'GET', '/v2/endpoints')
  t.equal(unknown.status, 404)
  t.equal(unknown.body?.error?.code, 'NotFound')
})
