// Membership against one real etcd member on 127.76.0.2 (SPEC §12): registration under a lease,
// the live node set, fencing on the node's own clock, a new epoch after a fence, graceful stop.
import t from 'tap'
import { performance } from 'node:perf_hooks'
import type { Etcd3 } from 'etcd3'
import { createEtcdClient } from '../../src/cluster/etcd-client.ts'
import { Membership, type MembershipOptions } from '../../src/cluster/membership.ts'
import { startEtcdMember } from '../helpers/etcd-member.ts'
import { requireTools } from '../helpers/tools.ts'

const HOST = '127.76.0.2'

interface Teardown { teardown (fn: () => unknown): void }

function until (what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (check()) resolve()
      else if (Date.now() > deadline) reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`))
      else setTimeout(tick, 20)
    }
    tick()
  })
}

t.test('membership', async (t) => {
  if (!requireTools(t, ['etcd'])) return
  const etcd = await startEtcdMember(t, HOST)
  const clients: Etcd3[] = []
  t.teardown(() => { for (const c of clients) c.close() })
  let prefixes = 0
  const member = (tt: Teardown, nodeId: string, extra: Partial<MembershipOptions> & { prefix?: string } = {}): Membership => {
    const client = createEtcdClient({ endpoints: [etcd.url], callTimeoutMs: 1000 })
    clients.push(client)
    const m = new Membership({ client, prefix: '/lg/', nodeId, leaseTtlSeconds: 2, ...extra })
    m.on('warning', () => {})
    tt.teardown(() => m.stop())
    return m
  }

  t.test('two nodes register and each sees both', async (t) => {
    const prefix = `/m${++prefixes}/`
    const a = member(t, 'n1', { prefix })
    const b = member(t, 'n2', { prefix })
    await a.start()
    await b.start()
    await until('both nodes in both views', () => a.nodes.size === 2 && b.nodes.size === 2)
    t.same([...a.nodes].sort(), ['n1', 'n2'])
    t.equal(a.state, 'live')
    const value = await clients[0]!.get(`${prefix}nodes/n1`).string()
    t.match(JSON.parse(value ?? '{}'), { nodeId: 'n1', lease: a.leaseId })
  })

  t.test('a second live node with the same nodeId is refused, naming the field', async (t) => {
    const prefix = `/m${++prefixes}/`
    const a = member(t, 'n1', { prefix })
    await a.start()
    const dup = member(t, 'n1', { prefix, staleWaitMs: 300 })
    await t.rejects(dup.start(), /cluster\.nodeId: node n1 is registered by a live node/)
    t.equal(dup.state, 'idle')
    t.equal(a.state, 'live', 'the first one is untouched')
  })

  t.test('graceful stop deletes the registration at once', async (t) => {
    const prefix = `/m${++prefixes}/`
    const a = member(t, 'n1', { prefix })
    const b = member(t, 'n2', { prefix })
    await a.start()
    await b.start()
    await until('b sees a', () => b.nodes.has('n1'))
    const t0 = performance.now()
    await a.stop()
    await until('b no longer sees a', () => !b.nodes.has('n1'), 1000)
    t.ok(performance.now() - t0 < 1000, 'gone well before the lease TTL')
    t.equal(a.state, 'stopped')
  })

  t.test('a registration deleted from etcd makes the node fence and register again under a new lease', async (t) => {
    const prefix = `/m${++prefixes}/`
    const a = member(t, 'n1', { prefix })
    await a.start()
    const firstLease = a.leaseId
    const states: string[] = []
    a.on('state', (s: string) => states.push(s))
    await clients[0]!.delete().key(`${prefix}nodes/n1`)
    await until('live again', () => a.state === 'live' && a.leaseId !== firstLease, 5000)
    t.same(states.slice(0, 3), ['fenced', 'registering', 'live'])
    t.not(await clients[0]!.get(`${prefix}nodes/n1`).string(), null, 'registered again')
  })

  t.test('bad settings are refused with the field named', async (t) => {
    const client = createEtcdClient({ endpoints: [etcd.url] })
    t.teardown(() => client.close())
    t.throws(() => new Membership({ client, prefix: '/lg/', nodeId: 'N1!', leaseTtlSeconds: 3 }), /cluster\.nodeId/)
    t.throws(() => new Membership({ client, prefix: '/lg/', nodeId: 'n1', leaseTtlSeconds: 1 }), /cluster\.leaseTtlSeconds: 1 \(expected an integer 2\.\.30\)/)
    t.throws(() => new Membership({ client, prefix: 'lg', nodeId: 'n1', leaseTtlSeconds: 3 }), /cluster\.etcd\.prefix/)
    t.throws(() => createEtcdClient({ endpoints: ['198.18.0.1:2379'] }), /cluster\.etcd\.endpoints\[0\]/)
  })

  // Last: it freezes etcd for a while.
  t.test('a silent etcd fences the node within its TTL, and it comes back under a new lease', async (t) => {
    const prefix = `/m${++prefixes}/`
    const a = member(t, 'n1', { prefix })
    await a.start()
    const firstLease = a.leaseId
    let lastRenewal = performance.now()
    const renewals: number[] = []
    a.on('renewed', () => { lastRenewal = performance.now(); renewals.push(Math.round(lastRenewal)) })
    await new Promise((resolve) => setTimeout(resolve, 700))
    let fencedAt = 0
    a.on('state', (s: string) => { if (s === 'fenced' && fencedAt === 0) fencedAt = performance.now() })
    const pausedAt = Math.round(performance.now())
    etcd.pause()
    t.teardown(() => etcd.resume())
    await until('fenced', () => fencedAt !== 0, 5000)
    const sinceRenewal = fencedAt - lastRenewal
    t.comment(`renewals ${renewals.join(' ')}, paused ${pausedAt}, fenced ${Math.round(fencedAt)}`)
    t.comment(`fenced ${Math.round(sinceRenewal)} ms after the last answered keepalive (TTL 2000 ms)`)
    t.ok(sinceRenewal <= 2000, 'fenced before the lease can expire at etcd (on its own clock)')
    // Fence deadline: send time of the last answered keepalive + TTL - 250 ms margin.
    t.ok(sinceRenewal >= 2000 - 250 - 100, `fenced at TTL - margin after the last answer, not earlier (${Math.round(sinceRenewal)} ms)`)
    t.equal(a.leaseId, undefined, 'a fenced node holds no lease')
    t.notOk(a.nodes.has('n1'), 'a fenced node does not count itself')
    etcd.resume()
    await until('live again', () => a.state === 'live', 8000)
    t.not(a.leaseId, firstLease, 'a new lease: a new epoch')
    t.equal(a.epoch, 2)
    const value = await clients.at(-1)!.get(`${prefix}nodes/n1`).string()
    t.match(JSON.parse(value ?? '{}'), { lease: a.leaseId }, 'registered again under the new lease')
  })
})
