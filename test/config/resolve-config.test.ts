// The config loader collects every problem at once (SPEC §10) — schema, cross references and
// the declared resources' rules — without naming one problem twice or crashing on odd shapes.
import t from 'tap'
import { parseConfig } from '../../src/config/load-config.ts'

const errorsOf = (yaml: string): string[] => {
  try {
    parseConfig(yaml)
    return []
  } catch (err) {
    return [...((err as { errors?: string[] }).errors ?? [String(err)])]
  }
}

t.test('a broken section is named once, not again by every check that leans on it', async (t) => {
  t.same(errorsOf('zones: 5'), ['zones: must be array (got 5)'])
  t.same(errorsOf('zones: []'), ['zones: must NOT have fewer than 1 items'])
  t.same(errorsOf('accounts: x'), ['accounts: must be array (got "x")'])
  t.same(errorsOf([
    'services: [{id: vpcesvc-aaaaaaaaaaaa, ownerAccountId: "100000000001", portMappings: [{protocol: TCP, servicePort: 1, terminalPort: 2}], backends: [{address: x, zone: zone-a}]}]',
    'endpoints: [{id: vpce-000000000001, ownerAccountId: "100000000001", serviceId: vpcesvc-aaaaaaaaaaaa, subnetId: subnet-a}]'
  ].join('\n')), ['services[0].backends[0].address: must be an IPv4 or IPv6 address literal (got "x")'],
  'the endpoint of a service with a schema error is not also "not found"')
})

t.test('odd shapes never crash the loader: every one is a list of errors', async (t) => {
  for (const yaml of ['services: [5, null, "x"]', 'endpoints: [5, {id: 1}]', 'subnets: [{id: a, cidr: 1, zone: zone-a}, 3]',
    'quotas: 5', 'region: 5', 'dns: 5', 'limits: [1]', 'services: [{id: vpcesvc-aaaaaaaaaaaa}]', 'endpoints: [{id: vpce-000000000001, serviceId: 5}]']) {
    const errors = errorsOf(yaml)
    t.ok(errors.length > 0 && errors.every((e) => /^[a-zA-Z]+(\[\d+\])?[.:[ ]/.test(e)), `${yaml}: ${errors.join(' | ')}`)
  }
})

t.test('quotas apply to declared resources, with their path', async (t) => {
  const errors = errorsOf([
    'quotas: { backendsPerService: 1 }',
    'services: [{id: vpcesvc-aaaaaaaaaaaa, ownerAccountId: "100000000001", portMappings: [{protocol: TCP, servicePort: 1, terminalPort: 2}],',
    '  backends: [{address: 127.0.0.1, zone: zone-a}, {address: 127.0.0.2, zone: zone-a}]}]'
  ].join('\n'))
  t.same(errors, ['services[0].backends: at most 1 backends per service (quota backendsPerService), got 2'])
})

t.test('a declared endpoint ip that is reserved or taken twice is named', async (t) => {
  const svc = 'services: [{id: vpcesvc-aaaaaaaaaaaa, ownerAccountId: "100000000001", portMappings: [{protocol: TCP, servicePort: 1, terminalPort: 2}]}]'
  const ep = (n: number, ip: string) => `  - {id: vpce-00000000000${n}, ownerAccountId: "100000000001", serviceId: vpcesvc-aaaaaaaaaaaa, subnetId: subnet-a, ip: ${ip}}`
  const errors = errorsOf([svc, 'endpoints:', ep(1, '127.10.1.1'), ep(2, '127.10.1.9'), ep(3, '127.10.1.9')].join('\n'))
  t.same(errors, [
    'endpoints[0].ip: 127.10.1.1 is the first host address of subnet-a (127.10.1.0/24), reserved as its gateway',
    'endpoints[2].ip: 127.10.1.9 is already used by another endpoint'
  ])
})
