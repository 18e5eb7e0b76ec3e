// Property-based tests of the control API (SPEC §4, §10) with fast-check: thousands of generated
// requests — routes × methods × bodies × path spellings × tokens — against a real API. Every
// answer is a documented status with the error envelope, never a 500; a request without a valid
// token never gets past 401 on anything that reads as /v1; and a refused request changes
// nothing, in memory or on disk.
import { readFile } from 'node:fs/promises'
import fc from 'fast-check'
import t from 'tap'
import { isUnderV1 } from '../../src/api/request-path.ts'
import { CONSUMER, OTHER, PROVIDER, startApi, tcpService, type ApiHarness } from '../helpers/api-harness.ts'
import { rawCall } from '../helpers/raw-http.ts'

/** The database and its write-ahead log, byte for byte: a commit changes one or the other. */
async function onDisk (file: string): Promise<string> {
  const [db, wal] = await Promise.all([readFile(file, 'latin1').catch(() => ''), readFile(`${file}-wal`, 'latin1').catch(() => '')])
  return db + '\0' + wal
}

const DOCUMENTED = new Set([200, 201, 204, 400, 401, 403, 404, 408, 409, 413])
const CODE_STATUS: Record<string, number> = {
  InvalidParameter: 400, Unauthorized: 401, Forbidden: 403, NotFound: 404, Conflict: 409, QuotaExceeded: 409, PayloadTooLarge: 413
}

// ---- ids, resolved against the state at the time of the request ----
type IdRef = 'svc' | 'foreignSvc' | 'ep' | 'foreignEp' | 'backend' | 'account' | 'randomSvc' | 'randomEp' | 'garbage'
const idRef = fc.constantFrom<IdRef>('svc', 'svc', 'svc', 'foreignSvc', 'ep', 'ep', 'foreignEp', 'backend', 'backend', 'account', 'randomSvc', 'randomEp', 'garbage')

function resolveId (api: ApiHarness, ref: IdRef, n: number): string {
  const services = Object.values(api.store.state.services)
  const endpoints = Object.values(api.store.state.endpoints)
  const pick = <T>(list: T[]): T | undefined => list.length === 0 ? undefined : list[n % list.length]
  switch (ref) {
    case 'svc': return pick(services.filter((s) => s.ownerAccountId === PROVIDER.id))?.id ?? 'vpcesvc-000000000000'
    case 'foreignSvc': return pick(services.filter((s) => s.ownerAccountId !== PROVIDER.id))?.id ?? 'vpcesvc-ffffffffffff'
    case 'ep': return pick(endpoints.filter((e) => e.ownerAccountId === CONSUMER.id))?.id ?? 'vpce-000000000000'
    case 'foreignEp': return pick(endpoints.filter((e) => e.ownerAccountId !== CONSUMER.id))?.id ?? 'vpce-ffffffffffff'
    case 'backend': return pick(services.flatMap((s) => s.backends))?.id ?? 'be-00000000'
    case 'account': return [CONSUMER.id, OTHER.id, '*', '999999999999'][n % 4] as string
    case 'randomSvc': return `vpcesvc-${n.toString(16).padStart(12, '0').slice(-12)}`
    case 'randomEp': return `vpce-${n.toString(16).padStart(12, '0').slice(-12)}`
    case 'garbage': return ['x', '..', '%00', 'vpcesvc-', 'VPCESVC-000000000000', '%zz', '%F0%9F%99%82'][n % 7] as string
  }
}

// ---- routes: every documented one, and some that are not ----
const ROUTES = [
  '/v1/endpoint-services', '/v1/endpoint-services/{svc}', '/v1/endpoint-services/{svc}/backends',
  '/v1/endpoint-services/{svc}/backends/{backend}', '/v1/endpoint-services/{svc}/allowed-accounts',
  '/v1/endpoint-services/{svc}/allowed-accounts/{account}', '/v1/endpoint-services/{svc}/connections',
  '/v1/endpoint-services/{svc}/connections/{ep}/accept', '/v1/endpoint-services/{svc}/connections/{ep}/reject',
  '/v1/available-services', '/v1/available-services?name=db', '/v1/endpoints', '/v1/endpoints/{ep}',
  '/v1/cluster', '/v1', '/v1/', '/v1/load-balancers', '/healthz', '/metrics', '/', '/v2/endpoints'
]
const METHODS = ['GET', 'GET', 'POST', 'POST', 'PUT', 'PATCH', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS']

// ---- how the path is spelled ----
const SPELLINGS: Array<[string, (p: string, n: number) => string]> = [
  ['plain', (p) => p], ['plain', (p) => p], ['plain', (p) => p],
  ['encoded letter', (p, n) => {
    const letters = [...p.matchAll(/[a-z0-9]/g)].filter((m) => (m.index ?? 0) < (p.indexOf('?') < 0 ? p.length : p.indexOf('?')))
    const m = letters[n % Math.max(1, letters.length)]
    if (m === undefined) return p
    const i = m.index ?? 0
    return p.slice(0, i) + '%' + (p.charCodeAt(i).toString(16)) + p.slice(i + 1)
  }],
  ['double slash', (p) => '/' + p],
  ['inner double slash', (p) => p.replace('/', '//').replace(/^\/\/(.)/, '/$1').replace('/v1/', '/v1//')],
  ['dot segment', (p) => p.replace('/v1/', '/v1/./')],
  ['dot-dot segment', (p) => p.replace('/v1/', '/v1/x/../')],
  ['encoded dot', (p) => p.replace('/v1/', '/v1/%2e/')],
  ['encoded slash', (p) => p.replace('/v1/', '/v1%2f')],
  ['trailing slash', (p) => p.includes('?') ? p : p + '/'],
  ['upper case', (p) => p.toUpperCase()],
  ['double-encoded', (p) => p.replace('/v1', '/%2576%31')],
  ['broken escape', (p) => p + '%']
]

const TOKENS: Array<[string, string | undefined]> = [
  ['provider', `Bearer ${PROVIDER.token}`], ['provider', `Bearer ${PROVIDER.token}`], ['consumer', `Bearer ${CONSUMER.token}`],
  ['consumer lower-case scheme', `bearer ${CONSUMER.token}`], ['other', `Bearer ${OTHER.token}`],
  ['none', undefined], ['unknown', 'Bearer nobody-knows-me'], ['basic', `Basic ${PROVIDER.token}`], ['empty', 'Bearer ']
]
const VALID_TOKEN = new Set([`Bearer ${PROVIDER.token}`, `Bearer ${CONSUMER.token}`, `bearer ${CONSUMER.token}`, `Bearer ${OTHER.token}`])

// ---- bodies ----
const weird = fc.oneof(fc.constant(null), fc.boolean(), fc.integer({ min: -70000, max: 70000 }), fc.double({ noNaN: true }),
  fc.string({ maxLength: 12 }), fc.constant('127.0.0.1'), fc.constant('zone-a'), fc.constant('::1'), fc.constant([]), fc.constant({}))
const mapping = fc.record({
  protocol: fc.constantFrom('TCP', 'UDP', 'tcp', 'SCTP'),
  servicePort: fc.oneof(fc.integer({ min: 1, max: 65535 }), weird),
  terminalPort: fc.oneof(fc.integer({ min: 1, max: 65535 }), weird)
}, { requiredKeys: ['protocol'] })
const backend = fc.record({
  address: fc.oneof(fc.ipV4(), fc.ipV6(), weird), zone: fc.constantFrom('zone-a', 'zone-b', 'zone-q', 'Zone A'),
  weight: fc.oneof(fc.integer({ min: -5, max: 120 }), weird)
}, { requiredKeys: [] })
const healthCheck = fc.record({
  enabled: fc.oneof(fc.boolean(), weird), protocol: fc.constantFrom('TCP', 'HTTP', 'UDP', null), port: fc.oneof(fc.integer({ min: 0, max: 70000 }), weird),
  path: fc.constantFrom('/', '/h', 'h', null), intervalSeconds: fc.oneof(fc.double({ min: 0, max: 400, noNaN: true }), weird),
  timeoutSeconds: fc.oneof(fc.double({ min: 0, max: 130, noNaN: true }), weird), healthyThreshold: fc.oneof(fc.integer({ min: 0, max: 11 }), weird),
  unhealthyThreshold: fc.oneof(fc.integer({ min: 0, max: 11 }), weird)
}, { requiredKeys: [] })
const serviceBody = fc.record({
  name: fc.oneof(fc.constantFrom('db', 'web', 'a.b', ''), weird), portMappings: fc.array(mapping, { maxLength: 3 }),
  backends: fc.array(backend, { maxLength: 3 }), acceptanceRequired: fc.oneof(fc.boolean(), weird), sameZonePreferred: fc.oneof(fc.boolean(), weird),
  healthCheck: fc.oneof(healthCheck, weird), allowedAccounts: fc.array(fc.constantFrom(CONSUMER.id, OTHER.id, '*', 'abc'), { maxLength: 2 }),
  colour: weird
}, { requiredKeys: [] })
const endpointBody = fc.record({
  serviceId: fc.constantFrom('$svc', '$foreignSvc', 'vpcesvc-000000000000', 'svc-1'), serviceName: fc.constantFrom('local-1.db', 'nope'),
  subnetId: fc.constantFrom('subnet-a', 'subnet-b', 'subnet-z'), ip: fc.oneof(fc.constantFrom('127.10.1.0', '127.10.1.1', '127.10.1.2', '127.10.1.77', '127.10.2.9', '127.10.1.255'), weird),
  privateDns: fc.oneof(fc.boolean(), weird), allowedSources: fc.oneof(fc.constant(['10.0.0.0/8']), fc.constant(['x']), weird)
}, { requiredKeys: [] })
const patchBody = fc.record({
  acceptanceRequired: fc.oneof(fc.boolean(), weird), sameZonePreferred: fc.oneof(fc.boolean(), weird), healthCheck: fc.oneof(healthCheck, weird),
  portMappings: weird, name: weird, weight: fc.oneof(fc.integer({ min: -1, max: 101 }), weird), zone: fc.constantFrom('zone-a', 'zone-b', 'zone-q', null),
  allowedSources: fc.oneof(fc.constant(['192.0.2.0/24']), weird), privateDns: fc.oneof(fc.boolean(), weird)
}, { requiredKeys: [] })
type Body = { kind: 'none' } | { kind: 'json', value: unknown } | { kind: 'raw', text: string }
const body: fc.Arbitrary<Body> = fc.oneof(
  fc.constant<Body>({ kind: 'none' }),
  fc.oneof(serviceBody, endpointBody, patchBody, fc.array(backend, { maxLength: 4 }), backend,
    fc.record({ accountId: fc.oneof(fc.constantFrom(CONSUMER.id, OTHER.id, '*', '12'), weird) }, { requiredKeys: [] }),
    fc.jsonValue({ maxDepth: 3 })).map((value): Body => ({ kind: 'json', value })),
  fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom('{"a":', '{}}', 'null', '[', '\u0000', '{"portMappings": [{}]}'))
    .map((text): Body => ({ kind: 'raw', text }))
)

function fill (api: ApiHarness, value: unknown, n: number): unknown {
  if (typeof value === 'string' && value.startsWith('$')) return resolveId(api, value.slice(1) as IdRef, n)
  if (Array.isArray(value)) return value.map((v) => fill(api, v, n))
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fill(api, v, n)]))
  return value
}

// The documented (method, route) pairs, with a body that often passes: most requests should
// get past validation so that the success paths and the rules behind them are exercised too.
const validService = fc.record({
  name: fc.constantFrom('db', 'web', 'cache'),
  portMappings: fc.integer({ min: 1000, max: 60000 }).map((p) => [{ protocol: 'TCP', servicePort: 80, terminalPort: p }]),
  backends: fc.array(fc.record({ address: fc.ipV4(), zone: fc.constantFrom('zone-a', 'zone-b') }), { maxLength: 5 }),
  acceptanceRequired: fc.boolean(),
  allowedAccounts: fc.constantFrom([], [CONSUMER.id], ['*'])
}, { requiredKeys: ['portMappings'] })
const validPatch = fc.oneof(
  fc.record({ acceptanceRequired: fc.boolean(), sameZonePreferred: fc.oneof(fc.boolean(), fc.constant(null)) }, { requiredKeys: [] }),
  fc.record({ healthCheck: fc.record({ unhealthyThreshold: fc.integer({ min: 1, max: 10 }), path: fc.constantFrom('/', '/h', null), port: fc.constantFrom(80, null) }, { requiredKeys: [] }) }),
  fc.record({ weight: fc.oneof(fc.integer({ min: 0, max: 100 }), fc.constant(null)), zone: fc.constantFrom('zone-a', 'zone-b') }, { requiredKeys: [] }),
  fc.record({ privateDns: fc.boolean(), allowedSources: fc.constantFrom(['10.0.0.0/8'], null) }, { requiredKeys: [] })
)
const validEndpoint = fc.record({ serviceId: fc.constant('$svc'), subnetId: fc.constantFrom('subnet-a', 'subnet-b') })
const DOCUMENTED_PAIRS: Array<[string, string, fc.Arbitrary<unknown> | undefined]> = [
  ['POST', '/v1/endpoint-services', validService], ['GET', '/v1/endpoint-services', undefined],
  ['GET', '/v1/endpoint-services/{svc}', undefined], ['PATCH', '/v1/endpoint-services/{svc}', validPatch],
  ['DELETE', '/v1/endpoint-services/{svc}', undefined],
  ['PUT', '/v1/endpoint-services/{svc}/backends', fc.array(fc.record({ address: fc.ipV4(), zone: fc.constantFrom('zone-a', 'zone-b') }), { maxLength: 5 })],
  ['POST', '/v1/endpoint-services/{svc}/backends', fc.record({ address: fc.ipV4(), zone: fc.constantFrom('zone-a', 'zone-b'), weight: fc.integer({ min: 0, max: 100 }) })],
  ['PATCH', '/v1/endpoint-services/{svc}/backends/{backend}', validPatch],
  ['DELETE', '/v1/endpoint-services/{svc}/backends/{backend}', undefined],
  ['GET', '/v1/endpoint-services/{svc}/allowed-accounts', undefined],
  ['POST', '/v1/endpoint-services/{svc}/allowed-accounts', fc.record({ accountId: fc.constantFrom(CONSUMER.id, OTHER.id, '*') })],
  ['DELETE', '/v1/endpoint-services/{svc}/allowed-accounts/{account}', undefined],
  ['GET', '/v1/endpoint-services/{svc}/connections', undefined],
  ['POST', '/v1/endpoint-services/{svc}/connections/{ep}/accept', undefined],
  ['POST', '/v1/endpoint-services/{svc}/connections/{ep}/reject', undefined],
  ['GET', '/v1/available-services', undefined], ['POST', '/v1/endpoints', validEndpoint], ['GET', '/v1/endpoints', undefined],
  ['GET', '/v1/endpoints/{ep}', undefined], ['PATCH', '/v1/endpoints/{ep}', validPatch], ['DELETE', '/v1/endpoints/{ep}', undefined],
  ['GET', '/v1/cluster', undefined]
]
const documentedIds = fc.record({
  svc: fc.constantFrom<IdRef>('svc', 'svc', 'svc', 'svc', 'foreignSvc', 'randomSvc'),
  ep: fc.constantFrom<IdRef>('ep', 'ep', 'ep', 'ep', 'foreignEp', 'randomEp'),
  backend: fc.constantFrom<IdRef>('backend', 'backend', 'garbage'),
  account: fc.constantFrom<IdRef>('account'),
  n: fc.nat()
})

const request = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: DOCUMENTED_PAIRS.length - 1 }).chain((i) => {
    const [method, route, good] = DOCUMENTED_PAIRS[i] as [string, string, fc.Arbitrary<unknown> | undefined]
    return fc.record({
      route: fc.constant(route),
      ids: documentedIds,
      method: fc.constant(method),
      spelling: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: SPELLINGS.length - 1 }) }),
      token: fc.oneof({ weight: 5, arbitrary: fc.constantFrom(0, 2, 3) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: TOKENS.length - 1 }) }),
      body: good === undefined ? body : fc.oneof({ weight: 3, arbitrary: good.map((value): Body => ({ kind: 'json', value })) }, { weight: 1, arbitrary: body })
    })
  }) },
  { weight: 1, arbitrary: fc.record({
    route: fc.constantFrom(...ROUTES),
    ids: fc.record({ svc: idRef, ep: idRef, backend: idRef, account: idRef, n: fc.nat() }),
    method: fc.constantFrom(...METHODS),
    spelling: fc.integer({ min: 0, max: SPELLINGS.length - 1 }),
    token: fc.integer({ min: 0, max: TOKENS.length - 1 }),
    body
  }) }
)

t.test('generated requests: documented statuses, the error envelope, never 500, refusals change nothing', async (t) => {
  const api = await startApi(t, { quotas: { servicesPerAccount: 6, endpointsPerAccount: 6, backendsPerService: 4 } })
  // A fixture with something to hit on every route.
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ allowedAccounts: [CONSUMER.id], acceptanceRequired: true }) })).body
  await api.call('POST', '/v1/endpoint-services', { token: OTHER.token, body: tcpService({ name: 'theirs' }) })
  await api.call('POST', '/v1/endpoints', { token: CONSUMER.token, body: { serviceId: svc.id, subnetId: 'subnet-a' } })

  const statuses = new Map<number, number>()
  let requests = 0
  await fc.assert(fc.asyncProperty(request, async (r) => {
    const path = SPELLINGS[r.spelling]?.[1](r.route
      .replace('{svc}', resolveId(api, r.ids.svc === 'ep' ? 'svc' : r.ids.svc, r.ids.n))
      .replace('{ep}', resolveId(api, r.ids.ep === 'svc' ? 'ep' : r.ids.ep, r.ids.n))
      .replace('{backend}', resolveId(api, r.ids.backend, r.ids.n))
      .replace('{account}', resolveId(api, r.ids.account, r.ids.n)), r.ids.n) as string
    const [, authorization] = TOKENS[r.token] as [string, string | undefined]
    const headers: Record<string, string> = authorization === undefined ? {} : { authorization }
    const text = r.body.kind === 'none' || r.method === 'GET' || r.method === 'HEAD'
      ? undefined
      : r.body.kind === 'raw' ? r.body.text : JSON.stringify(fill(api, r.body.value, r.ids.n))
    const beforeMemory = JSON.stringify(api.store.state)
    const beforeDisk = await onDisk(api.store.file)
    const res = await rawCall(api.url, r.method, path, headers, text)
    requests++
    statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
    const what = `${r.method} ${path} [${TOKENS[r.token]?.[0]}] ${text?.slice(0, 80) ?? ''} → ${res.status} ${JSON.stringify(res.body)?.slice(0, 200)}`
    if (!DOCUMENTED.has(res.status)) throw new Error(`undocumented status: ${what}`)
    if (res.status >= 400) {
      if (r.method !== 'HEAD') {
        const err = res.body?.error
        if (typeof err?.code !== 'string' || typeof err?.message !== 'string') throw new Error(`no error envelope: ${what}`)
        if (CODE_STATUS[err.code] !== res.status) throw new Error(`code ${err.code} with status ${res.status}: ${what}`)
        if (/\n\s+at /.test(err.message)) throw new Error(`a stack in the body: ${what}`)
      }
      if (JSON.stringify(api.store.state) !== beforeMemory) throw new Error(`refused, but the state changed: ${what}`)
      if (await onDisk(api.store.file) !== beforeDisk) throw new Error(`refused, but the file changed: ${what}`)
    }
    if (r.method === 'GET' && path === '/v1/cluster' && res.status === 200 && !Array.isArray(res.body?.items)) {
      throw new Error(`GET /v1/cluster without an items list: ${what}`)
    }
    if (!VALID_TOKEN.has(authorization ?? '') && isUnderV1(path) && res.status !== 401) {
      throw new Error(`a /v1 path answered without a valid token: ${what}`)
    }
  }), { numRuns: 2500, endOnFailure: true })
  t.ok(requests >= 2000, `${requests} generated requests`)
  t.comment('statuses', JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0]))))
  for (const status of [200, 201, 204, 400, 401, 404, 409]) t.ok((statuses.get(status) ?? 0) > 0, `some answers were ${status}`)
})
