// Endpoint IPs (SPEC §3, §10): the lowest free host address; a requested one inside the subnet,
// unused, and never the network, broadcast or first-host (.1, the gateway) address.
import t from 'tap'
import { allocateIp, normalizeIp } from '../../src/control/ip-allocation.ts'

// allocateIp takes an in-use predicate (the store's index); these cases state the used set.
const alloc = (s: Parameters<typeof allocateIp>[0], requested: string | undefined, used: ReadonlySet<string>, field?: string): string =>
  allocateIp(s, requested, (ip) => used.has(ip), field)

const subnet = { id: 'subnet-a', cidr: '127.70.8.0/24' }

t.test('automatic allocation takes the lowest free host address, skipping .0 and .1', async (t) => {
  t.equal(alloc(subnet, undefined, new Set<string>()), '127.70.8.2')
  t.equal(alloc(subnet, undefined, new Set(['127.70.8.2', '127.70.8.3'])), '127.70.8.4')
  t.equal(alloc(subnet, undefined, new Set(['127.70.8.2', '127.70.8.4'])), '127.70.8.3', 'a hole is reused')
})

t.test('a full subnet is a Conflict naming the subnet; the broadcast address is never handed out', async (t) => {
  const used = new Set<string>()
  for (let i = 2; i < 255; i++) used.add(`127.70.8.${i}`)
  t.throws(() => alloc(subnet, undefined, used), { code: 'Conflict', message: /^subnetId: no free address left in subnet-a/ })
  const small = { id: 'tiny', cidr: '127.70.9.0/30' }
  t.equal(alloc(small, undefined, new Set<string>()), '127.70.9.2')
  t.throws(() => alloc(small, undefined, new Set(['127.70.9.2'])), { code: 'Conflict' })
})

t.test('a requested address: network, broadcast and .1 are 400, outside is 400, used is 409', async (t) => {
  t.throws(() => alloc(subnet, '127.70.8.0', new Set<string>()), { code: 'InvalidParameter', statusCode: 400, message: /^ip: 127\.70\.8\.0 is the network address/ })
  t.throws(() => alloc(subnet, '127.70.8.255', new Set<string>()), { code: 'InvalidParameter', message: /broadcast address/ })
  t.throws(() => alloc(subnet, '127.70.8.1', new Set<string>()), { code: 'InvalidParameter', message: /first host address .* reserved as its gateway/ })
  t.throws(() => alloc(subnet, '127.70.9.5', new Set<string>()), { code: 'InvalidParameter', message: /is not inside subnet-a/ })
  t.throws(() => alloc(subnet, '::1', new Set<string>()), { code: 'InvalidParameter', message: /is not inside/ })
  t.throws(() => alloc(subnet, '127.70.8.9', new Set(['127.70.8.9'])), { code: 'Conflict', statusCode: 409 })
  t.equal(alloc(subnet, '127.70.8.2', new Set<string>()), '127.70.8.2')
  t.equal(alloc(subnet, '127.70.8.254', new Set<string>()), '127.70.8.254')
  t.throws(() => alloc(subnet, '127.70.8.0', new Set<string>(), 'endpoints[3].ip'), { message: /^endpoints\[3\]\.ip: / }, 'the field path is the caller\'s')
})

t.test('IPv6 subnets: no broadcast, the network and first host are reserved, text is normalised', async (t) => {
  const v6 = { id: 'v6', cidr: 'fd00:70::/120' }
  t.equal(alloc(v6, undefined, new Set<string>()), 'fd00:70::2')
  t.equal(alloc(v6, 'FD00:0070:0:0:0:0:0:00ff', new Set<string>()), 'fd00:70::ff', 'the last address is a host in IPv6')
  t.throws(() => alloc(v6, 'fd00:70::', new Set<string>()), { message: /network address/ })
  t.throws(() => alloc(v6, 'fd00:70::1', new Set<string>()), { message: /first host address/ })
  t.equal(normalizeIp('FD00:0070::0002'), 'fd00:70::2')
})
