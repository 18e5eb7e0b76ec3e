// Endpoint IPs (SPEC §3, §10): the lowest free host address; a requested one inside the subnet,
// unused, and never the network, broadcast or first-host (.1, the gateway) address.
import t from 'tap'
import { allocateIp, normalizeIp } from '../../src/control/ip-allocation.ts'

const subnet = { id: 'subnet-a', cidr: '127.70.8.0/24' }

t.test('automatic allocation takes the lowest free host address, skipping .0 and .1', async (t) => {
  t.equal(allocateIp(subnet, undefined, new Set()), '127.70.8.2')
  t.equal(allocateIp(subnet, undefined, new Set(['127.70.8.2', '127.70.8.3'])), '127.70.8.4')
  t.equal(allocateIp(subnet, undefined, new Set(['127.70.8.2', '127.70.8.4'])), '127.70.8.3', 'a hole is reused')
})

t.test('a full subnet is a Conflict naming the subnet; the broadcast address is never handed out', async (t) => {
  const used = new Set<string>()
  for (let i = 2; i < 255; i++) used.add(`127.70.8.${i}`)
  t.throws(() => allocateIp(subnet, undefined, used), { code: 'Conflict', message: /^subnetId: no free address left in subnet-a/ })
  const small = { id: 'tiny', cidr: '127.70.9.0/30' }
  t.equal(allocateIp(small, undefined, new Set()), '127.70.9.2')
  t.throws(() => allocateIp(small, undefined, new Set(['127.70.9.2'])), { code: 'Conflict' })
})

t.test('a requested address: network, broadcast and .1 are 400, outside is 400, used is 409', async (t) => {
  t.throws(() => allocateIp(subnet, '127.70.8.0', new Set()), { code: 'InvalidParameter', statusCode: 400, message: /^ip: 127\.70\.8\.0 is the network address/ })
  t.throws(() => allocateIp(subnet, '127.70.8.255', new Set()), { code: 'InvalidParameter', message: /broadcast address/ })
  t.throws(() => allocateIp(subnet, '127.70.8.1', new Set()), { code: 'InvalidParameter', message: /first host address .* reserved as its gateway/ })
  t.throws(() => allocateIp(subnet, '127.70.9.5', new Set()), { code: 'InvalidParameter', message: /is not inside subnet-a/ })
  t.throws(() => allocateIp(subnet, '::1', new Set()), { code: 'InvalidParameter', message: /is not inside/ })
  t.throws(() => allocateIp(subnet, '127.70.8.9', new Set(['127.70.8.9'])), { code: 'Conflict', statusCode: 409 })
  t.equal(allocateIp(subnet, '127.70.8.2', new Set()), '127.70.8.2')
  t.equal(allocateIp(subnet, '127.70.8.254', new Set()), '127.70.8.254')
  t.throws(() => allocateIp(subnet, '127.70.8.0', new Set(), 'endpoints[3].ip'), { message: /^endpoints\[3\]\.ip: / }, 'the field path is the caller\'s')
})

t.test('IPv6 subnets: no broadcast, the network and first host are reserved, text is normalised', async (t) => {
  const v6 = { id: 'v6', cidr: 'fd00:70::/120' }
  t.equal(allocateIp(v6, undefined, new Set()), 'fd00:70::2')
  t.equal(allocateIp(v6, 'FD00:0070:0:0:0:0:0:00ff', new Set()), 'fd00:70::ff', 'the last address is a host in IPv6')
  t.throws(() => allocateIp(v6, 'fd00:70::', new Set()), { message: /network address/ })
  t.throws(() => allocateIp(v6, 'fd00:70::1', new Set()), { message: /first host address/ })
  t.equal(normalizeIp('FD00:0070::0002'), 'fd00:70::2')
})
