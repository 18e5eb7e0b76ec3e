// Table-driven bad input for the control API: each case must get the right status and error
// code, a message that names the field, and leave the state (memory and disk) untouched.
import t from 'tap'
import { CONSUMER, OTHER, PROVIDER, startApi, tcpService } from '../helpers/api-harness.ts'
import { readStateOnDisk } from '../helpers/state-on-disk.ts'

interface Fixture { svc: any, hidden: any, ep: any, epB: any }

interface Case {
  name: string
  method: string
  path: string | ((f: Fixture) => string)
  token?: string | null
  body?: unknown | ((f: Fixture) => unknown)
  raw?: string
  status: number
  code: string
  field: RegExp
}

const mapping = (servicePort: number, terminalPort: number, protocol = 'TCP') => ({ protocol, servicePort, terminalPort })
const svcPath = (f: Fixture) => `/v1/endpoint-services/${f.svc.id}`
const withMappings = (portMappings: unknown) => tcpService({ portMappings })
const withBackends = (backends: unknown) => tcpService({ backends })
const withHealth = (healthCheck: unknown) => tcpService({ healthCheck })
const S = '/v1/endpoint-services'
const E = '/v1/endpoints'
const epBody = (extra: Record<string, unknown>) => (f: Fixture) => ({ serviceId: f.svc.id, subnetId: 'subnet-a', ...extra })

const cases: Case[] = [
  // service create: body shape
  { name: 'bad JSON', method: 'POST', path: S, raw: '{"name":', status: 400, code: 'InvalidParameter', field: /^body: not valid JSON/ },
  { name: 'body is an array', method: 'POST', path: S, body: [], status: 400, code: 'InvalidParameter', field: /^body: must be object/ },
  { name: 'body is a string', method: 'POST', path: S, body: 'db', status: 400, code: 'InvalidParameter', field: /^body: must be object/ },
  { name: 'empty body', method: 'POST', path: S, status: 400, code: 'InvalidParameter', field: /^body: is required/ },
  { name: 'unknown field', method: 'POST', path: S, body: tcpService({ colour: 'red' }), status: 400, code: 'InvalidParameter', field: /colour: unknown field/ },
  { name: 'name of 17 chars', method: 'POST', path: S, body: tcpService({ name: 'a'.repeat(17) }), status: 400, code: 'InvalidParameter', field: /^name: must match/ },
  { name: 'name with a dot', method: 'POST', path: S, body: tcpService({ name: 'db.prod' }), status: 400, code: 'InvalidParameter', field: /^name: / },
  { name: 'empty name', method: 'POST', path: S, body: tcpService({ name: '' }), status: 400, code: 'InvalidParameter', field: /^name: / },
  { name: 'name of wrong type', method: 'POST', path: S, body: tcpService({ name: 5 }), status: 400, code: 'InvalidParameter', field: /^name: must be string/ },
  { name: 'acceptanceRequired not boolean', method: 'POST', path: S, body: tcpService({ acceptanceRequired: 'yes' }), status: 400, code: 'InvalidParameter', field: /^acceptanceRequired: must be boolean/ },
  { name: 'sameZonePreferred null', method: 'POST', path: S, body: tcpService({ sameZonePreferred: null }), status: 400, code: 'InvalidParameter', field: /^sameZonePreferred: / },
  // port mappings
  { name: 'portMappings missing', method: 'POST', path: S, body: { name: 'x' }, status: 400, code: 'InvalidParameter', field: /^portMappings: is required/ },
  { name: 'portMappings empty', method: 'POST', path: S, body: withMappings([]), status: 400, code: 'InvalidParameter', field: /^portMappings: must NOT have fewer than 1/ },
  { name: 'servicePort 0', method: 'POST', path: S, body: withMappings([mapping(0, 80)]), status: 400, code: 'InvalidParameter', field: /^portMappings\[0\]\.servicePort: must be >= 1/ },
  { name: 'terminalPort 65536', method: 'POST', path: S, body: withMappings([mapping(80, 65536)]), status: 400, code: 'InvalidParameter', field: /^portMappings\[0\]\.terminalPort: must be <= 65535/ },
  { name: 'negative port', method: 'POST', path: S, body: withMappings([mapping(-80, 80)]), status: 400, code: 'InvalidParameter', field: /^portMappings\[0\]\.servicePort/ },
  { name: 'fractional port', method: 'POST', path: S, body: withMappings([mapping(80.5, 80)]), status: 400, code: 'InvalidParameter', field: /^portMappings\[0\]\.servicePort: must be integer/ },
  { name: 'port as string', method: 'POST', path: S, body: withMappings([mapping('80' as never, 80)]), status: 400, code: 'InvalidParameter', field: /^portMappings\[0\]\.servicePort: must be integer/ },
  { name: 'protocol SCTP', method: 'POST', path: S, body: withMappings([mapping(80, 80, 'SCTP')]), status: 400, code: 'InvalidParameter', field: /^portMappings\[0\]\.protocol: must be one of TCP, UDP/ },
  { name: 'protocol lowercase', method: 'POST', path: S, body: withMappings([mapping(80, 80, 'tcp')]), status: 400, code: 'InvalidParameter', field: /^portMappings\[0\]\.protocol/ },
  { name: '51 port mappings', method: 'POST', path: S, body: withMappings(Array.from({ length: 51 }, (_, i) => mapping(80, 1000 + i))), status: 400, code: 'InvalidParameter', field: /^portMappings: at most 50/ },
  { name: 'duplicate terminal port', method: 'POST', path: S, body: withMappings([mapping(80, 8080), mapping(81, 8080)]), status: 400, code: 'InvalidParameter', field: /^portMappings\[1\]\.terminalPort: TCP 8080 is already mapped/ },
  { name: 'mapping with unknown field', method: 'POST', path: S, body: withMappings([{ ...mapping(80, 80), sticky: true }]), status: 400, code: 'InvalidParameter', field: /^portMappings\[0\]\.sticky: unknown field/ },
  { name: 'mapping missing terminalPort', method: 'POST', path: S, body: withMappings([{ protocol: 'TCP', servicePort: 80 }]), status: 400, code: 'InvalidParameter', field: /^portMappings\[0\]\.terminalPort: is required/ },
  // backends
  { name: 'backend address is a host name', method: 'POST', path: S, body: withBackends([{ address: 'db.local', zone: 'zone-a' }]), status: 400, code: 'InvalidParameter', field: /^backends\[0\]\.address: must be an IPv4 or IPv6 address/ },
  { name: 'backend address out of range', method: 'POST', path: S, body: withBackends([{ address: '999.1.1.1', zone: 'zone-a' }]), status: 400, code: 'InvalidParameter', field: /^backends\[0\]\.address/ },
  { name: 'backend unknown zone', method: 'POST', path: S, body: withBackends([{ address: '127.0.0.1', zone: 'zone-x' }]), status: 400, code: 'InvalidParameter', field: /^backends\[0\]\.zone: unknown zone "zone-x"/ },
  { name: 'backend weight 101', method: 'POST', path: S, body: withBackends([{ address: '127.0.0.1', zone: 'zone-a', weight: 101 }]), status: 400, code: 'InvalidParameter', field: /^backends\[0\]\.weight: must be <= 100/ },
  { name: 'backend weight -1', method: 'POST', path: S, body: withBackends([{ address: '127.0.0.1', zone: 'zone-a', weight: -1 }]), status: 400, code: 'InvalidParameter', field: /^backends\[0\]\.weight: must be >= 0/ },
  { name: 'backend weight as word', method: 'POST', path: S, body: withBackends([{ address: '127.0.0.1', zone: 'zone-a', weight: 'high' }]), status: 400, code: 'InvalidParameter', field: /^backends\[0\]\.weight: must be integer/ },
  { name: 'duplicate backend address', method: 'POST', path: S, body: withBackends([{ address: '127.0.0.1', zone: 'zone-a' }, { address: '127.0.0.1', zone: 'zone-b' }]), status: 400, code: 'InvalidParameter', field: /^backends\[1\]\.address: 127\.0\.0\.1 is already backend/ },
  { name: 'malformed backend id', method: 'POST', path: S, body: withBackends([{ id: 'be-xyz', address: '127.0.0.1', zone: 'zone-a' }]), status: 400, code: 'InvalidParameter', field: /^backends\[0\]\.id: must match/ },
  { name: 'backends not a list', method: 'POST', path: S, body: withBackends({ address: '127.0.0.1' }), status: 400, code: 'InvalidParameter', field: /^backends: must be array/ },
  // health check
  { name: 'health timeout not below interval', method: 'POST', path: S, body: withHealth({ intervalSeconds: 2, timeoutSeconds: 2 }), status: 400, code: 'InvalidParameter', field: /^healthCheck\.timeoutSeconds: must be less than intervalSeconds/ },
  { name: 'health protocol UDP', method: 'POST', path: S, body: withHealth({ protocol: 'UDP' }), status: 400, code: 'InvalidParameter', field: /^healthCheck\.protocol: must be one of TCP, HTTP/ },
  { name: 'health interval negative', method: 'POST', path: S, body: withHealth({ intervalSeconds: -1 }), status: 400, code: 'InvalidParameter', field: /^healthCheck\.intervalSeconds: must be >= / },
  { name: 'health threshold 0', method: 'POST', path: S, body: withHealth({ unhealthyThreshold: 0 }), status: 400, code: 'InvalidParameter', field: /^healthCheck\.unhealthyThreshold: must be >= 1/ },
  { name: 'health path without slash', method: 'POST', path: S, body: withHealth({ path: 'health' }), status: 400, code: 'InvalidParameter', field: /^healthCheck\.path: must match/ },
  { name: 'health port 70000', method: 'POST', path: S, body: withHealth({ port: 70000 }), status: 400, code: 'InvalidParameter', field: /^healthCheck\.port: must be <= 65535/ },
  { name: 'health unknown field', method: 'POST', path: S, body: withHealth({ retries: 3 }), status: 400, code: 'InvalidParameter', field: /^healthCheck\.retries: unknown field/ },
  { name: 'allowed account malformed', method: 'POST', path: S, body: tcpService({ allowedAccounts: ['abc'] }), status: 400, code: 'InvalidParameter', field: /^allowedAccounts\[0\]: must match/ },
  // auth and size
  { name: 'no token', method: 'POST', path: S, token: null, body: tcpService(), status: 401, code: 'Unauthorized', field: /Authorization/ },
  { name: 'wrong token', method: 'GET', path: S, token: 'not-a-token', status: 401, code: 'Unauthorized', field: /^Authorization: unknown bearer token/ },
  { name: 'token of a prefix', method: 'GET', path: S, token: PROVIDER.token.slice(0, -1), status: 401, code: 'Unauthorized', field: /^Authorization/ },
  { name: 'service quota exceeded', method: 'POST', path: S, body: tcpService(), status: 409, code: 'QuotaExceeded', field: /^servicesPerAccount: / },
  { name: 'body over 1 MiB', method: 'POST', path: S, token: CONSUMER.token, raw: JSON.stringify({ name: 'x', pad: 'x'.repeat(1024 * 1024) }), status: 413, code: 'PayloadTooLarge', field: /^body: / },
  // other account's resources are 404
  { name: "get another account's service", method: 'GET', path: svcPath, token: CONSUMER.token, status: 404, code: 'NotFound', field: /^id: endpoint service vpcesvc-/ },
  { name: "patch another account's service", method: 'PATCH', path: svcPath, token: CONSUMER.token, body: { acceptanceRequired: true }, status: 404, code: 'NotFound', field: /^id: / },
  { name: "delete another account's service", method: 'DELETE', path: svcPath, token: OTHER.token, status: 404, code: 'NotFound', field: /^id: / },
  { name: 'unknown service id', method: 'GET', path: `${S}/vpcesvc-000000000000`, status: 404, code: 'NotFound', field: /^id: / },
  // service patch
  { name: 'patch portMappings', method: 'PATCH', path: svcPath, body: { portMappings: [mapping(1, 2)] }, status: 409, code: 'Conflict', field: /^portMappings: immutable/ },
  { name: 'patch name', method: 'PATCH', path: svcPath, body: { name: 'other' }, status: 409, code: 'Conflict', field: /^name: immutable/ },
  { name: 'patch unknown field', method: 'PATCH', path: svcPath, body: { backendsz: [] }, status: 400, code: 'InvalidParameter', field: /^backendsz: unknown field/ },
  { name: 'patch health timeout equal to interval', method: 'PATCH', path: svcPath, body: { healthCheck: { intervalSeconds: 1 } }, status: 400, code: 'InvalidParameter', field: /^healthCheck\.timeoutSeconds: must be less than/ },
  { name: 'patch health unknown field', method: 'PATCH', path: svcPath, body: { healthCheck: { bogus: 1 } }, status: 400, code: 'InvalidParameter', field: /^healthCheck\.bogus: unknown field/ },
  { name: 'delete a service with an accepted endpoint', method: 'DELETE', path: svcPath, status: 409, code: 'Conflict', field: /^id: endpoint service .* accepted endpoint/ },
  // backend routes
  { name: 'add backend weight 101', method: 'POST', path: (f: Fixture) => `${svcPath(f)}/backends`, body: { address: '127.0.0.9', zone: 'zone-a', weight: 101 }, status: 400, code: 'InvalidParameter', field: /^weight: must be <= 100/ },
  { name: 'add backend without address', method: 'POST', path: (f: Fixture) => `${svcPath(f)}/backends`, body: { zone: 'zone-a' }, status: 400, code: 'InvalidParameter', field: /^address: is required/ },
  { name: 'add backend in unknown zone', method: 'POST', path: (f: Fixture) => `${svcPath(f)}/backends`, body: { address: '127.0.0.9', zone: 'mars' }, status: 400, code: 'InvalidParameter', field: /^zone: unknown zone/ },
  { name: 'add backend with an address in use', method: 'POST', path: (f: Fixture) => `${svcPath(f)}/backends`, body: { address: '127.0.0.1', zone: 'zone-a' }, status: 400, code: 'InvalidParameter', field: /^address: 127\.0\.0\.1 is already backend/ },
  { name: 'patch unknown backend', method: 'PATCH', path: (f: Fixture) => `${svcPath(f)}/backends/be-00000000`, body: { weight: 1 }, status: 404, code: 'NotFound', field: /^backendId: / },
  { name: 'patch backend weight negative', method: 'PATCH', path: (f: Fixture) => `${svcPath(f)}/backends/${f.svc.backends[0].id}`, body: { weight: -5 }, status: 400, code: 'InvalidParameter', field: /^weight: must be >= 0/ },
  { name: 'patch backend address', method: 'PATCH', path: (f: Fixture) => `${svcPath(f)}/backends/${f.svc.backends[0].id}`, body: { address: '127.0.0.5' }, status: 400, code: 'InvalidParameter', field: /^address: unknown field/ },
  { name: 'replace backends with an object', method: 'PUT', path: (f: Fixture) => `${svcPath(f)}/backends`, body: { address: '127.0.0.1' }, status: 400, code: 'InvalidParameter', field: /^backends: must be array/ },
  { name: 'replace backends, second in unknown zone', method: 'PUT', path: (f: Fixture) => `${svcPath(f)}/backends`, body: [{ address: '127.0.0.1', zone: 'zone-a' }, { address: '127.0.0.2', zone: 'zone-q' }], status: 400, code: 'InvalidParameter', field: /^backends\[1\]\.zone: unknown zone/ },
  { name: 'delete unknown backend', method: 'DELETE', path: (f: Fixture) => `${svcPath(f)}/backends/be-00000000`, status: 404, code: 'NotFound', field: /^backendId: / },
  // allowed accounts
  { name: 'allow a malformed account', method: 'POST', path: (f: Fixture) => `${svcPath(f)}/allowed-accounts`, body: { accountId: '12' }, status: 400, code: 'InvalidParameter', field: /^accountId: must match/ },
  { name: 'allow without accountId', method: 'POST', path: (f: Fixture) => `${svcPath(f)}/allowed-accounts`, body: {}, status: 400, code: 'InvalidParameter', field: /^accountId: is required/ },
  { name: 'remove an account not allowed', method: 'DELETE', path: (f: Fixture) => `${svcPath(f)}/allowed-accounts/${OTHER.id}`, status: 404, code: 'NotFound', field: /^accountId: / },
  // connections
  { name: 'accept an unknown endpoint', method: 'POST', path: (f: Fixture) => `${svcPath(f)}/connections/vpce-000000000000/accept`, status: 404, code: 'NotFound', field: /^endpointId: / },
  { name: 'accept on a service of another account', method: 'POST', path: (f: Fixture) => `${svcPath(f)}/connections/${f.ep.id}/accept`, token: CONSUMER.token, status: 404, code: 'NotFound', field: /^id: / },
  { name: 'connections of another account', method: 'GET', path: (f: Fixture) => `${svcPath(f)}/connections`, token: OTHER.token, status: 404, code: 'NotFound', field: /^id: / },
  // endpoints
  { name: 'endpoint without subnetId', method: 'POST', path: E, token: CONSUMER.token, body: (f: Fixture) => ({ serviceId: f.svc.id }), status: 400, code: 'InvalidParameter', field: /^subnetId: is required/ },
  { name: 'endpoint without a service', method: 'POST', path: E, token: CONSUMER.token, body: { subnetId: 'subnet-a' }, status: 400, code: 'InvalidParameter', field: /^serviceId: one of serviceId or serviceName is required/ },
  { name: 'endpoint to an unknown service', method: 'POST', path: E, token: CONSUMER.token, body: { serviceId: 'vpcesvc-000000000000', subnetId: 'subnet-a' }, status: 404, code: 'NotFound', field: /^serviceId: / },
  { name: 'endpoint with a malformed serviceId', method: 'POST', path: E, token: CONSUMER.token, body: { serviceId: 'svc-1', subnetId: 'subnet-a' }, status: 400, code: 'InvalidParameter', field: /^serviceId: must match/ },
  { name: 'endpoint to an unknown serviceName', method: 'POST', path: E, token: CONSUMER.token, body: { serviceName: 'local-1.nope.vpcesvc-000000000000', subnetId: 'subnet-a' }, status: 404, code: 'NotFound', field: /^serviceName: / },
  { name: 'endpoint with serviceId and another serviceName', method: 'POST', path: E, token: CONSUMER.token, body: (f: Fixture) => ({ serviceId: f.svc.id, serviceName: f.hidden.serviceName, subnetId: 'subnet-a' }), status: 400, code: 'InvalidParameter', field: /^serviceName: / },
  { name: 'endpoint to a service not allowed', method: 'POST', path: E, token: CONSUMER.token, body: (f: Fixture) => ({ serviceId: f.hidden.id, subnetId: 'subnet-a' }), status: 403, code: 'Forbidden', field: /^serviceId: account 100000000002 is not allowed/ },
  { name: 'endpoint in an unknown subnet', method: 'POST', path: E, token: CONSUMER.token, body: epBody({ subnetId: 'subnet-z' }), status: 400, code: 'InvalidParameter', field: /^subnetId: unknown subnet "subnet-z"/ },
  { name: 'endpoint IP outside its subnet', method: 'POST', path: E, token: CONSUMER.token, body: epBody({ ip: '127.10.2.5' }), status: 400, code: 'InvalidParameter', field: /^ip: 127\.10\.2\.5 is not inside subnet-a/ },
  { name: 'endpoint IP in use', method: 'POST', path: E, token: CONSUMER.token, body: epBody({ ip: '127.10.1.2' }), status: 409, code: 'Conflict', field: /^ip: 127\.10\.1\.2 is already used/ },
  { name: 'endpoint IP malformed', method: 'POST', path: E, token: CONSUMER.token, body: epBody({ ip: '127.10.1' }), status: 400, code: 'InvalidParameter', field: /^ip: must be an IPv4 or IPv6 address/ },
  { name: 'endpoint IP is the network address', method: 'POST', path: E, token: CONSUMER.token, body: epBody({ ip: '127.10.1.0' }), status: 400, code: 'InvalidParameter', field: /^ip: 127\.10\.1\.0 is the network address/ },
  { name: 'endpoint IPv6 in an IPv4 subnet', method: 'POST', path: E, token: CONSUMER.token, body: epBody({ ip: '::1' }), status: 400, code: 'InvalidParameter', field: /^ip: ::1 is not inside/ },
  { name: 'allowedSources with a bad CIDR', method: 'POST', path: E, token: CONSUMER.token, body: epBody({ allowedSources: ['10.0.0.0/33'] }), status: 400, code: 'InvalidParameter', field: /^allowedSources\[0\]: must be a CIDR/ },
  { name: 'allowedSources not a list', method: 'POST', path: E, token: CONSUMER.token, body: epBody({ allowedSources: '0.0.0.0/0' }), status: 400, code: 'InvalidParameter', field: /^allowedSources: must be array/ },
  { name: 'privateDns as a string', method: 'POST', path: E, token: CONSUMER.token, body: epBody({ privateDns: 'yes' }), status: 400, code: 'InvalidParameter', field: /^privateDns: must be boolean/ },
  { name: 'endpoint quota exceeded', method: 'POST', path: E, body: epBody({}), status: 409, code: 'QuotaExceeded', field: /^endpointsPerAccount: / },
  { name: "get another account's endpoint", method: 'GET', path: (f: Fixture) => `${E}/${f.ep.id}`, token: CONSUMER.token, status: 404, code: 'NotFound', field: /^id: endpoint vpce-/ },
  { name: 'patch endpoint ip', method: 'PATCH', path: (f: Fixture) => `${E}/${f.ep.id}`, body: { ip: '127.10.1.9' }, status: 400, code: 'InvalidParameter', field: /^ip: unknown field/ },
  { name: 'patch endpoint with a bad CIDR', method: 'PATCH', path: (f: Fixture) => `${E}/${f.ep.id}`, body: { allowedSources: ['not-a-cidr'] }, status: 400, code: 'InvalidParameter', field: /^allowedSources\[0\]: must be a CIDR/ },
  { name: "delete another account's endpoint", method: 'DELETE', path: (f: Fixture) => `${E}/${f.ep.id}`, token: OTHER.token, status: 404, code: 'NotFound', field: /^id: / },
  { name: 'unknown route', method: 'GET', path: '/v1/load-balancers', status: 404, code: 'NotFound', field: /^route: / }
]

t.test('bad input is refused with a named field and changes nothing', async (t) => {
  t.ok(cases.length >= 60, `${cases.length} cases`)
  const api = await startApi(t, { quotas: { servicesPerAccount: 2, endpointsPerAccount: 2 } })
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ allowedAccounts: [CONSUMER.id] }) })).body
  const hidden = (await api.call('POST', '/v1/endpoint-services', { body: tcpService({ name: 'hidden' }) })).body
  const ep = (await api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-a' } })).body
  const epB = (await api.call('POST', '/v1/endpoints', { body: { serviceId: hidden.id, subnetId: 'subnet-b' } })).body
  t.equal(ep.ip, '127.10.1.2')
  const f: Fixture = { svc, hidden, ep, epB }

  for (const c of cases) {
    const beforeMemory = JSON.stringify(api.store.state)
    const beforeDisk = JSON.stringify(readStateOnDisk(api.store.file))
    const path = typeof c.path === 'function' ? c.path(f) : c.path
    const body = typeof c.body === 'function' ? (c.body as (f: Fixture) => unknown)(f) : c.body
    const res = await api.call(c.method, path, { token: c.token, body, raw: c.raw })
    t.equal(res.status, c.status, `${c.name}: status`)
    t.equal(res.body?.error?.code, c.code, `${c.name}: code`)
    t.match(res.body?.error?.message, c.field, `${c.name}: message names the field (${String(res.body?.error?.message)})`)
    t.equal(JSON.stringify(api.store.state), beforeMemory, `${c.name}: state unchanged`)
    t.equal(JSON.stringify(readStateOnDisk(api.store.file)), beforeDisk, `${c.name}: state on disk unchanged`)
  }
})
