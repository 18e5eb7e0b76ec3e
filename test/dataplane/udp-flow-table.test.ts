// The UDP flow table: lookup by client address:port without string keys, and idle expiry by a
// periodic sweep. Pure data structure: no sockets needed.
import t from 'tap'
import { UdpFlowTable, ipv4FlowKey, type FlowEntry } from '../../src/dataplane/udp-flow-table.ts'

class Flow implements FlowEntry {
  key = -1
  seen = 0
  readonly address: string
  readonly port: number
  constructor (address: string, port: number) {
    this.address = address
    this.port = port
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

function table (t: { teardown: (fn: () => void) => void }, idleTimeoutMs: number, expired: Flow[] = []): UdpFlowTable<Flow> {
  const tbl = new UdpFlowTable<Flow>({ idleTimeoutMs, onExpire: (f) => { expired.push(f) } })
  t.teardown(() => { tbl.drain() })
  return tbl
}

t.test('ipv4FlowKey is address as uint32 × 65536 + port', async (t) => {
  t.equal(ipv4FlowKey('1.2.3.4', 5), 0x01020304 * 65536 + 5)
  t.equal(ipv4FlowKey('0.0.0.0', 0), 0)
  t.equal(ipv4FlowKey('255.255.255.255', 65535), 2 ** 48 - 1, 'the largest key is an exact integer')
  t.equal(ipv4FlowKey('127.22.0.1', 53), ((127 * 256 + 22) * 256 * 256 + 1) * 65536 + 53)
})

t.test('ipv4FlowKey is -1 for anything but a dotted quad', async (t) => {
  for (const bad of ['::1', '::ffff:1.2.3.4', 'fe80::1%lo', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1.2.3.1000', '1..2.3', '.1.2.3', '1.2.3.', 'a.b.c.d', '']) {
    t.equal(ipv4FlowKey(bad, 1), -1, JSON.stringify(bad))
  }
})

t.test('distinct IPv4 clients get distinct keys, neighbours included', async (t) => {
  const keys = new Set<number>()
  const addresses = ['10.0.0.1', '10.0.0.2', '10.0.1.1', '10.1.0.1', '11.0.0.1', '1.0.0.10', '1.0.0.100', '100.0.0.1']
  for (const a of addresses) for (const p of [0, 1, 2, 255, 256, 65535]) keys.add(ipv4FlowKey(a, p))
  t.equal(keys.size, addresses.length * 6)
})

t.test('a flow is found by its client address and port, IPv4 and IPv6 alike, and gone after delete', async (t) => {
  const tbl = table(t, 10_000)
  const v4 = new Flow('127.22.0.9', 4000)
  const v4OtherPort = new Flow('127.22.0.9', 4001)
  const v6 = new Flow('::1', 4000)
  const v6OtherPort = new Flow('::1', 4001)
  for (const f of [v4, v4OtherPort, v6, v6OtherPort]) tbl.add(f)
  t.equal(tbl.size, 4)
  t.equal(v4.key, ipv4FlowKey('127.22.0.9', 4000), 'add sets the IPv4 key')
  t.equal(v6.key, -1, 'IPv6 flows have no numeric key')
  // Lookups use fresh strings, as node's rinfo gives them.
  t.equal(tbl.get(['127', '22', '0', '9'].join('.'), 4000), v4)
  t.equal(tbl.get('127.22.0.9', 4001), v4OtherPort)
  t.equal(tbl.get(['', '', '1'].join(':'), 4000), v6)
  t.equal(tbl.get('::1', 4001), v6OtherPort)
  t.equal(tbl.get('127.22.0.9', 4002), undefined)
  t.equal(tbl.get('::2', 4000), undefined)
  t.equal(tbl.delete(v4), true)
  t.equal(tbl.delete(v4), false, 'a second delete is a no-op')
  t.equal(tbl.delete(v6), true)
  t.equal(tbl.get('127.22.0.9', 4000), undefined)
  t.equal(tbl.get('::1', 4000), undefined)
  t.equal(tbl.get('::1', 4001), v6OtherPort, 'the other port of the same IPv6 address stays')
  t.equal(tbl.size, 2)
  t.same([...tbl.values()], [v4OtherPort, v6OtherPort])
})

t.test('a flow silent longer than the idle timeout expires once, and leaves the table first', async (t) => {
  const expired: Flow[] = []
  const tbl = table(t, 100, expired)
  const f = new Flow('127.22.0.1', 1)
  let inTableWhenExpired: Flow | undefined = f
  const tbl2 = new UdpFlowTable<Flow>({ idleTimeoutMs: 100, onExpire: (x) => { inTableWhenExpired = tbl2.get(x.address, x.port) } })
  t.teardown(() => { tbl2.drain() })
  tbl.add(f)
  tbl2.add(new Flow('127.22.0.2', 2))
  await sleep(400)
  t.same(expired, [f], 'onExpire called once with the flow')
  t.equal(tbl.size, 0)
  t.equal(tbl.get('127.22.0.1', 1), undefined)
  t.equal(inTableWhenExpired, undefined, 'the flow is no longer in the table when onExpire runs')
})

t.test('a flow is never expired before the idle timeout', async (t) => {
  const expired: Flow[] = []
  const tbl = table(t, 300, expired)
  tbl.add(new Flow('127.22.0.1', 1))
  await sleep(220)
  t.equal(expired.length, 0, 'still there after 220 ms of a 300 ms timeout')
  t.equal(tbl.size, 1)
})

t.test('a flow touched more often than the timeout stays while an idle one beside it expires', async (t) => {
  const expired: Flow[] = []
  const tbl = table(t, 150, expired)
  const busy = new Flow('127.22.0.1', 1)
  const idle = new Flow('127.22.0.1', 2)
  tbl.add(busy)
  tbl.add(idle)
  for (let i = 0; i < 12; i++) { // 600 ms = 4 timeouts
    await sleep(50)
    tbl.touch(busy)
  }
  t.same(expired, [idle])
  t.equal(tbl.get('127.22.0.1', 1), busy)
})

t.test('the sweep period follows the timeout: an eighth of it, between 10 ms and 1 s', async (t) => {
  const short = table(t, 40)
  t.equal(short.sweepMs, 10)
  t.equal(short.idleTicks, 4)
  const mid = table(t, 500)
  t.equal(mid.sweepMs, 62.5)
  t.equal(mid.idleTicks, 8)
  const long = table(t, 120_000)
  t.equal(long.sweepMs, 1000)
  t.equal(long.idleTicks, 120)
  t.throws(() => new UdpFlowTable<Flow>({ idleTimeoutMs: 0, onExpire: () => {} }), RangeError)
})

t.test('drain removes every flow without calling onExpire', async (t) => {
  const expired: Flow[] = []
  const tbl = table(t, 100, expired)
  const flows = [new Flow('127.22.0.1', 1), new Flow('::1', 1), new Flow('127.22.0.1', 2)]
  for (const f of flows) tbl.add(f)
  t.same(tbl.drain(), flows)
  t.equal(tbl.size, 0)
  t.equal(tbl.get('::1', 1), undefined)
  await sleep(300)
  t.equal(expired.length, 0, 'drained flows are the caller\'s to end')
})

t.test('a flow expiring from the onExpire of another is expired once only', async (t) => {
  const seen: Flow[] = []
  const a = new Flow('127.22.0.1', 1)
  const b = new Flow('127.22.0.1', 2)
  const tbl = new UdpFlowTable<Flow>({
    idleTimeoutMs: 50,
    onExpire: (f) => {
      seen.push(f)
      tbl.delete(f === a ? b : a) // e.g. a destroy triggered while expiring
    }
  })
  t.teardown(() => { tbl.drain() })
  tbl.add(a)
  tbl.add(b)
  await sleep(250)
  t.equal(seen.length, 1)
  t.equal(tbl.size, 0)
})
