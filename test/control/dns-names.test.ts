// Private DNS names (SPEC §6): regional and zonal, shared by the API's dnsNames and the DNS server.
import t from 'tap'
import { endpointDnsNames } from '../../src/control/dns-names.ts'

t.test('regional then zonal name, under {serviceId}.{region}.{suffix}', async (t) => {
  const names = endpointDnsNames(
    { id: 'vpce-0123456789ab', serviceId: 'vpcesvc-ba9876543210', zone: 'zone-b' },
    { region: 'local-1', dns: { suffix: 'privatelink.internal', ttl: 30, upstreams: [] } }
  )
  t.same(names, [
    'vpce-0123456789ab.vpcesvc-ba9876543210.local-1.privatelink.internal',
    'vpce-0123456789ab-zone-b.vpcesvc-ba9876543210.local-1.privatelink.internal'
  ])
})

t.test('every label stays within 63 octets and the name within 253 for the longest ids and zones', async (t) => {
  const names = endpointDnsNames(
    { id: 'vpce-ffffffffffff', serviceId: 'vpcesvc-ffffffffffff', zone: 'z'.repeat(32) },
    { region: 'r'.repeat(32), dns: { suffix: 'a'.repeat(63) + '.' + 'b'.repeat(63), ttl: 30, upstreams: [] } }
  )
  for (const name of names) {
    t.ok(name.length <= 253, `${name.length} octets`)
    for (const label of name.split('.')) t.ok(label.length <= 63, `label ${label.slice(0, 10)}… ${label.length}`)
  }
})
