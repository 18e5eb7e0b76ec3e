// Smoke test of the etcd3 package (microsoft/etcd3 1.1.2 on @grpc/grpc-js) on Node 24 against
// Debian's etcd 3.4: the calls cluster mode relies on (SPEC §12). etcd3's own CI stopped at
// Node 20 and etcd 3.3, so this proves it here. One member on 127.76.0.1.
import t from 'tap'
import type { IKeyValue } from 'etcd3'
import { createEtcdClient, nextRevision } from '../../src/cluster/etcd-client.ts'
import { startEtcdMember } from '../helpers/etcd-member.ts'
import { requireTools } from '../helpers/tools.ts'

const HOST = '127.76.0.1'

t.test('etcd3 against etcd 3.4', async (t) => {
  if (!requireTools(t, ['etcd'])) return
  const etcd = await startEtcdMember(t, HOST)
  const client = createEtcdClient({ endpoints: [etcd.url] })
  t.teardown(() => client.close())

  t.test('put then get returns the value', async (t) => {
    await client.put('/smoke/a').value('1')
    t.equal(await client.get('/smoke/a').string(), '1')
    t.same(await client.getAll().prefix('/smoke/').strings(), { '/smoke/a': '1' })
  })

  t.test('a txn with create_revision == 0 succeeds once; a stale mod_revision compare fails', async (t) => {
    const key = '/smoke/owner'
    const claim = (who: string) => client.if(key, 'Create', '==', 0).then(client.put(key).value(who)).else(client.get(key)).commit()
    const first = await claim('n1')
    t.equal(first.succeeded, true)
    const second = await claim('n2')
    t.equal(second.succeeded, false)
    t.equal(second.responses[0]?.response_range?.kvs[0]?.value.toString(), 'n1', 'the else branch reads the winner')
    const mod = first.header.revision
    t.equal((await client.if(key, 'Mod', '==', mod).then(client.put(key).value('n1b')).commit()).succeeded, true)
    t.equal((await client.if(key, 'Mod', '==', mod).then(client.delete().key(key)).commit()).succeeded, false, 'the key changed since')
    t.equal(await client.get(key).string(), 'n1b')
  })

  t.test('a watch from a past revision replays every later change in order', async (t) => {
    const r1 = await client.put('/smoke/w/1').value('x')
    const start = r1.header.revision
    await client.put('/smoke/w/2').value('y')
    await client.delete().key('/smoke/w/1')
    const seen: string[] = []
    const watcher = await client.watch().prefix('/smoke/w/').startRevision(start).create()
    t.teardown(() => watcher.cancel())
    const done = new Promise<void>((resolve) => {
      const note = (kind: string) => (kv: IKeyValue) => {
        seen.push(`${kind} ${kv.key.toString()} @${String(kv.mod_revision)}`)
        if (seen.length === 4) resolve()
      }
      watcher.on('put', note('put'))
      watcher.on('delete', note('delete'))
    })
    const live = await client.put('/smoke/w/3').value('z')
    await done
    t.same(seen, [
      `put /smoke/w/1 @${start}`,
      `put /smoke/w/2 @${nextRevision(start)}`,
      `delete /smoke/w/1 @${nextRevision(nextRevision(start))}`,
      `put /smoke/w/3 @${live.header.revision}`
    ])
  })

  t.test('a lease is kept alive past its TTL; revoke deletes its keys', async (t) => {
    const lease = client.lease(2)
    t.teardown(() => lease.revoke().catch(() => {}))
    let renewals = 0
    lease.on('keepaliveSucceeded', () => { renewals++ })
    await lease.put('/smoke/lease/k').value('v')
    await new Promise((resolve) => setTimeout(resolve, 3000))
    t.equal(await client.get('/smoke/lease/k').string(), 'v', 'alive after 1.5 x TTL')
    t.ok(renewals >= 3, `keepalives answered: ${renewals} (one every TTL/3)`)
    await lease.revoke()
    t.equal(await client.get('/smoke/lease/k').string(), null)
  })

  t.test('a silent etcd: the lease emits lost only after about 2 x TTL', async (t) => {
    const lease = client.lease(2)
    t.teardown(() => lease.revoke().catch(() => lease.release()))
    await lease.grant()
    let lastOk = Date.now()
    lease.on('keepaliveSucceeded', () => { lastOk = Date.now() })
    await new Promise((resolve) => setTimeout(resolve, 800))
    etcd.pause()
    t.teardown(() => etcd.resume())
    const pausedAt = Date.now()
    const lostAfter = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no lost event within 12 s')), 12000)
      lease.on('lost', () => { clearTimeout(timer); resolve(Date.now() - lastOk) })
    })
    etcd.resume()
    t.comment(`lost ${lostAfter} ms after the last answered keepalive (${Date.now() - pausedAt} ms after the pause)`)
    // This is why membership fences on its own clock at TTL: `lost` comes at > 2 x TTL.
    t.ok(lostAfter > 2 * 2000, `lost after ${lostAfter} ms > 2 x TTL`)
    t.ok(lostAfter < 2 * 2000 + 4000, `lost after ${lostAfter} ms, bounded`)
    t.equal(await client.get('/smoke/a').string(), '1', 'the client works again after the pause')
  })
})
