// The etcd store (SPEC §12): two stores on one etcd behave as two nodes of a cluster. A change
// made through one is in the other's view within 1 s, with the same events; concurrent creates
// through two control planes never share an IP nor pass a quota (the txn compares cover the
// index reads); a reopened store has everything. One etcd member on 127.78.0.1.
import t, { type Test } from 'tap'
import { createEtcdClient } from '../../src/cluster/etcd-client.ts'
import { buildConfig } from '../../src/config/load-config.ts'
import { ControlPlane, type Caller } from '../../src/control/control-plane.ts'
import type { ChangeEvent, Endpoint } from '../../src/control/model.ts'
import { EtcdStore } from '../../src/control/store-etcd.ts'
import { makeBackend, makeEndpoint, makeService } from '../helpers/dataplane-fixtures.ts'
import { startEtcdMember } from '../helpers/etcd-member.ts'
import { requireTools } from '../helpers/tools.ts'

const HOST = '127.78.0.1'
const provider: Caller = { id: '100000000001', name: 'provider' }

async function until (what: string, ok: () => boolean, ms: number): Promise<number> {
  const start = Date.now()
  while (!ok()) {
    if (Date.now() - start > ms) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  return Date.now() - start
}

t.test('etcd store', async (t) => {
  if (!requireTools(t, ['etcd'])) return
  const etcd = await startEtcdMember(t, HOST)
  const client = createEtcdClient({ endpoints: [etcd.url] })
  t.teardown(() => client.close())
  let run = 0
  const open = async (t: Test, prefix: string): Promise<EtcdStore> => {
    const store = await EtcdStore.open(client, { prefix, onWarning: (err) => { t.fail(`warning: ${err.message}`) } })
    t.teardown(() => store.close())
    return store
  }

  t.test('a change on one node is in the other node\'s view within 1 s, with the same events', async (t) => {
    const prefix = `/lg-test-${++run}/`
    const a = await open(t, prefix)
    const b = await open(t, prefix)
    const heardA: ChangeEvent[][] = []
    const heardB: ChangeEvent[][] = []
    a.subscribe((events) => { heardA.push([...events]) })
    b.subscribe((events) => { heardB.push([...events]) })
    const svc = makeService({ portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 80 }], backends: [makeBackend('127.78.0.10')] })
    const ep = makeEndpoint(svc, { ip: '127.78.1.2' })
    await a.transact((draft) => {
      draft.services[svc.id] = svc
      draft.endpoints[ep.id] = ep
    })
    t.equal(heardA.length, 1, 'the writer has heard its own change when transact resolves (from the watch)')
    t.same(a.state.endpoints[ep.id], ep)
    const ms = await until('the other node sees the endpoint', () => b.state.endpoints[ep.id] !== undefined, 1000)
    t.ok(ms <= 1000, `seen on the other node after ${ms} ms`)
    t.same(b.state.services[svc.id], svc)
    t.equal(b.count('endpointIp', '127.78.1.2'), 1, 'the other node\'s indexes follow')
    t.ok(Object.isFrozen(b.state.endpoints[ep.id]), 'resources from the watch are frozen')
    t.same(heardB.map((batch) => batch.map((e) => [e.kind, e.action, e.id])), [[['service', 'created', svc.id], ['endpoint', 'created', ep.id]]],
      'one batch per transaction, services first')

    await b.transact((draft) => { draft.endpoints[ep.id] = { ...ep, ip: '127.78.1.3' } })
    await until('the first node sees the update', () => a.state.endpoints[ep.id]?.ip === '127.78.1.3', 1000)
    t.equal(a.count('endpointIp', '127.78.1.2'), 0)
    await a.transact((draft) => { delete draft.endpoints[ep.id] })
    await until('the delete reaches the other node', () => b.state.endpoints[ep.id] === undefined, 1000)
    const strip = (batches: ChangeEvent[][]): unknown => batches.map((batch) => batch.map((e) => [e.kind, e.action, e.id, (e.before as Endpoint | undefined)?.ip, (e.after as Endpoint | undefined)?.ip]))
    t.same(strip(heardA), strip(heardB), 'both nodes heard the same events in the same order')
    t.equal(heardA.length, 3)

    await t.rejects(a.transact((draft) => {
      draft.endpoints[ep.id] = ep
      throw new Error('refused')
    }), /refused/)
    t.equal(a.state.endpoints[ep.id], undefined, 'a transaction that throws writes nothing')
  })

  t.test('a stale draft does not overwrite a newer change: the loser runs its rules again on the new state', async (t) => {
    const prefix = `/lg-test-${++run}/`
    const a = await open(t, prefix)
    const svc = makeService({ portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 80 }], backends: [makeBackend('127.78.0.10')] })
    let reruns = 0
    for (let round = 0; round < 10; round++) {
      const ep = makeEndpoint(svc, { ip: `127.78.2.${round + 2}` })
      await a.transact((draft) => { draft.services[svc.id] = svc; draft.endpoints[ep.id] = ep })
      // Another node deletes the endpoint; this node updates it at once, most likely from a
      // view that still has it: the txn must fail its compare, and the rerun find it gone.
      await client.delete().key(`${prefix}state/endpoints/${ep.id}`)
      let runs = 0
      const outcome = await a.transact((draft) => {
        runs++
        const current = draft.endpoints[ep.id]
        if (current === undefined) return 'gone'
        draft.endpoints[ep.id] = { ...current, statusReason: 'touched' }
        return 'updated'
      })
      if (runs > 1) reruns++
      t.equal(outcome, 'gone', `round ${round}: the update saw the delete (${runs} run(s))`)
      t.equal(await client.get(`${prefix}state/endpoints/${ep.id}`).string(), null, 'and did not bring the endpoint back')
      t.equal(a.state.endpoints[ep.id], undefined)
    }
    t.comment(`${reruns} of 10 updates ran from a stale view and were run again`)
  })

  t.test('a transaction that read over 100 index entries commits with range compares, and still loses to a change it read', async (t) => {
    const prefix = `/lg-test-${++run}/`
    const a = await open(t, prefix)
    const svc = makeService({ portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 80 }], backends: [makeBackend('127.78.0.10')] })
    await a.transact((draft) => { draft.services[svc.id] = svc })
    const scan = (draft: { count: (index: 'endpointIp', key: string) => number }): number => {
      let used = 0
      for (let i = 2; i < 152; i++) used += draft.count('endpointIp', `127.78.9.${i}`)
      return used
    }
    let reruns = 0
    for (let round = 0; round < 5; round++) {
      // Another node takes 127.78.9.<round + 2>: its resource key and the index entry, in one txn.
      const ep = makeEndpoint(svc, { ip: `127.78.9.${round + 2}` })
      await client.if(`${prefix}state/endpoints/${ep.id}`, 'Create', '==', 0)
        .then(client.put(`${prefix}state/endpoints/${ep.id}`).value(JSON.stringify(ep)), client.put(`${prefix}idx/endpointIp/${ep.ip}`).value(''))
        .commit()
      let runs = 0
      const seen = await a.transact((draft) => {
        runs++
        const used = scan(draft)
        draft.services[svc.id] = { ...svc, allowedAccounts: [`${100000000100 + round}`] }
        return used
      })
      if (runs > 1) reruns++
      t.equal(seen, round + 1, `round ${round}: the committed run saw every taken address (${runs} run(s))`)
    }
    t.comment(`${reruns} of 5 scans ran from a stale view and were run again`)
  })

  const race = async (t: Test, cidr: string, quota: number, creates: number): Promise<{ ok: Endpoint[], errors: Error[], stores: EtcdStore[] }> => {
    const prefix = `/lg-test-${++run}/`
    const config = buildConfig({
      stateDir: '/nonexistent',
      subnets: [{ id: 'subnet-a', cidr, zone: 'zone-a' }],
      quotas: { endpointsPerAccount: quota }
    })
    const stores = [await open(t, prefix), await open(t, prefix)]
    const planes = stores.map((store) => new ControlPlane(config, store, { backendHealth: () => 'unknown' }))
    const [one, two] = planes as [ControlPlane, ControlPlane]
    const svc = await one.createService(provider, { portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 8080 }], backends: [{ address: '127.78.0.10', zone: 'zone-a' }] })
    await until('the service reaches the second node', () => stores[1]?.state.services[svc.id] !== undefined, 1000)
    const results = await Promise.allSettled(Array.from({ length: creates }, (_, i) => (i % 2 === 0 ? one : two).createEndpoint(provider, { serviceId: svc.id, subnetId: 'subnet-a' })))
    const ok = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
    const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []))
    await until('both views agree', () => stores[0]?.revision === stores[1]?.revision, 2000)
    return { ok, errors, stores }
  }

  t.test('40 concurrent creates over 2 nodes with quota 20: exactly 20 endpoints, every IP once', async (t) => {
    const { ok, errors, stores } = await race(t, '127.78.64.0/24', 20, 40)
    t.equal(ok.length, 20, 'exactly the quota was created')
    t.equal(new Set(ok.map((e) => e.ip)).size, 20, 'no IP twice')
    t.ok(errors.every((e) => (e as { code?: string }).code === 'QuotaExceeded'), `every refusal is the quota: ${[...new Set(errors.map((e) => e.message))].join(' | ')}`)
    for (const store of stores) {
      t.equal(Object.keys(store.state.endpoints).length, 20, 'each node holds the 20')
      t.equal(store.count('endpointOwner', provider.id), 20)
    }
  })

  t.test('40 concurrent creates over 2 nodes in a /28: its 13 addresses, each once', async (t) => {
    const { ok, errors, stores } = await race(t, '127.78.65.0/28', 50, 40)
    t.equal(ok.length, 13, 'every host address but network, gateway and broadcast')
    t.equal(new Set(ok.map((e) => e.ip)).size, 13, 'no IP twice')
    t.ok(errors.every((e) => /no free address left/.test(e.message)), `every refusal is a full subnet: ${[...new Set(errors.map((e) => e.message))].join(' | ')}`)
    for (const store of stores) {
      const ips = Object.values(store.state.endpoints).map((e) => e.ip)
      t.equal(new Set(ips).size, 13)
    }

    // A restarted node loads everything back.
    const before = structuredClone(stores[0]?.state)
    await Promise.all(stores.map((s) => s.close()))
    const again = await open(t, `/lg-test-${run}/`)
    t.same(again.state, before, 'a reopened store has the same state')
    t.equal(again.count('endpointService', ok[0]?.serviceId ?? ''), 13)
  })
})
