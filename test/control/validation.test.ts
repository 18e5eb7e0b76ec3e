// Validation at the edge (STYLE habit 2): messages name the field path, and the PATCH schemas
// carry no defaults — a default there would overwrite a stored value (the issue-13 PATCH bug).
import t from 'tap'
import {
  BackendMutable, BackendPatch, ConfigSchema, EndpointPatch, HealthCheckPatch, ServiceCreate, ServicePatch
} from '../../src/control/schemas.ts'
import { check, isCidr, jsonPointerToPath, parseHostPort, validate } from '../../src/control/validation.ts'

t.test('a patch body is left as sent: no field is filled in', async (t) => {
  const body = { healthCheck: { unhealthyThreshold: 4 } }
  t.same(check(ServicePatch, body), [])
  t.same(body, { healthCheck: { unhealthyThreshold: 4 } }, 'ServicePatch filled nothing')
  const hc = { unhealthyThreshold: 4 }
  t.same(check(HealthCheckPatch, hc), [])
  t.same(hc, { unhealthyThreshold: 4 })
  for (const [schema, sample] of [[BackendPatch, { weight: 5 }], [EndpointPatch, { privateDns: false }]] as const) {
    const copy = structuredClone(sample)
    t.same(check(schema, copy), [])
    t.same(copy, sample)
  }
})

t.test('null is accepted in a patch (remove the field), wrong types still are not', async (t) => {
  t.same(check(ServicePatch, { acceptanceRequired: null, healthCheck: { port: null, path: null } }), [])
  t.same(check(ServicePatch, { healthCheck: null }), [])
  t.same(check(BackendPatch, { zone: null, weight: null }), [])
  t.same(check(EndpointPatch, { allowedSources: null }), [])
  t.match(check(ServicePatch, { healthCheck: { protocol: 'ICMP' } }).join(), /^healthCheck\.protocol: must be one of TCP, HTTP/)
  t.match(check(ServicePatch, { healthCheck: { intervalSeconds: 0 } }).join(), /^healthCheck\.intervalSeconds: must be >= 0\.1/)
  t.match(check(BackendPatch, { weight: 101 }).join(), /^weight: must be <= 100/)
  t.match(check(ServicePatch, { healthCheck: 'off' }).join(), /^healthCheck: must be object,null/)
  t.match(check(ServicePatch, { backends: [] }).join(), /^backends: unknown field/)
})

t.test('the merged backend needs its zone; the default weight comes back', async (t) => {
  t.throws(() => validate(BackendMutable, { weight: 3 }), { code: 'InvalidParameter', message: /^zone: is required/ })
  const merged = { zone: 'zone-a' }
  validate(BackendMutable, merged)
  t.same(merged, { zone: 'zone-a', weight: 100 })
})

t.test('a create body gets its defaults, and every error is named at once', async (t) => {
  const body: Record<string, unknown> = { portMappings: [{ protocol: 'TCP', servicePort: 1, terminalPort: 2 }] }
  t.same(check(ServiceCreate, body), [])
  t.match(body, { acceptanceRequired: false, sameZonePreferred: true, backends: [], allowedAccounts: [], healthCheck: { unhealthyThreshold: 3 } })
  const errors = check(ServiceCreate, { name: 'a.b', portMappings: [{ protocol: 'SCTP', servicePort: 0, terminalPort: 70000 }], extra: 1 })
  t.equal(errors.length, 5, errors.join('\n'))
  t.match(errors.join('\n'), /extra: unknown field/)
  t.match(errors.join('\n'), /portMappings\[0\]\.terminalPort: must be <= 65535/)
})

t.test('the config schema: new limits have their defaults and their bounds', async (t) => {
  const config: Record<string, any> = {}
  t.same(check(ConfigSchema, config), [])
  t.equal(config.limits.apiMaxConnections, 256)
  t.equal(config.quotas.backendsPerService, 100)
  t.match(check(ConfigSchema, { limits: { apiMaxConnections: 0 } }).join(), /^limits\.apiMaxConnections: must be >= 1/)
  t.match(check(ConfigSchema, { quotas: { backendsPerService: 'many' } }).join(), /^quotas\.backendsPerService: must be integer/)
})

t.test('validate: a missing body names "body"; an error list joins every problem', async (t) => {
  t.throws(() => validate(ServicePatch, undefined), { message: /^body: is required/ })
  t.throws(() => validate(ServicePatch, null), { message: /^body: is required/ })
  t.throws(() => validate(ServicePatch, { a: 1, b: 2 }), { message: /^a: unknown field; b: unknown field$/ })
})

t.test('helpers: JSON pointers, CIDRs, host:port', async (t) => {
  t.equal(jsonPointerToPath('', '/portMappings/2/terminalPort'), 'portMappings[2].terminalPort')
  t.equal(jsonPointerToPath('services[1]', '/a~1b/c~0d'), 'services[1].a/b.c~d')
  t.equal(jsonPointerToPath('', ''), '')
  for (const ok of ['10.0.0.0/8', '0.0.0.0/0', '::/0', 'fd00::/64', '1.2.3.4/32']) t.ok(isCidr(ok), ok)
  for (const bad of ['10.0.0.0', '10.0.0.0/33', '::/129', '10.0.0/8', '10.0.0.0/-1', '10.0.0.0/8/8', 'x/8', '10.0.0.0/ 8']) t.notOk(isCidr(bad), bad)
  t.same(parseHostPort('127.0.0.1:8480'), { host: '127.0.0.1', port: 8480 })
  t.same(parseHostPort('[::1]:0'), { host: '::1', port: 0 })
  for (const bad of ['localhost:80', '127.0.0.1', '127.0.0.1:65536', '::1:80', '[::1]80']) t.equal(parseHostPort(bad), undefined, bad)
})
