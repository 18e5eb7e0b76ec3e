// The etcd store when things go wrong (SPEC §12): a commit whose answer is lost (the connection
// cut by a TCP proxy right after etcd took the txn) gets its real outcome, applied exactly once;
// a change of more keys than etcd's default --max-txn-ops (128) either fits (a service with 150
// left-behind endpoints, one allowed to 300 accounts) or is refused with a 409 naming the limit;
// index version keys go when their entry empties, and races of creates and deletes on one entry
// stay exact. One etcd member on 127.83.0.1, default flags.
import { createServer, connect, type Server, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { createEtcdClient } from '../../src/cluster/etcd-client.ts'
import { buildConfig } from '../../src/config/load-config.ts'
import { ControlPlane, type Caller } from '../../src/control/control-plane.ts'
import type { Endpoint, EndpointService } from '../../src/control/model.ts'
import { EtcdStore } from '../../src/control/store-etcd.ts'
import { makeBackend, makeEndpoint, makeService, waitFor } from '../helpers/dataplane-fixtures.ts'
import { startEtcdMember } from '../helpers/etcd-member.ts'
import { requireTools } from '../helpers/tools.ts'

const HOST = '127.83.0.1'
const PROXY_HOST = '127.83.0.2'
const provider: Caller = { id: '100000000001', name: 'provider' }

/**
 * A TCP proxy in front of etcd. Armed with a trigger (bytes of a key the txn writes: gRPC does
 * not compress, so they travel as is), it cuts the connection carrying that request: either
 * after forwarding it and holding back etcd's answer until `applied()` says the txn is in etcd
 * (it commits, its answer is lost), or without forwarding it (the txn never reaches etcd). Then
 * it refuses connections for `refuseMs`, so that etcd3's own retries fail too.
 */
class CutProxy {
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  #arm: { trigger: Buffer, forward: boolean, applied: () => Promise<boolean>, refuseMs: number } | undefined
  #refuseUntil = 0
  cuts = 0
  port = 0

  constructor (target: { host: string, port: number }) {
    this.#server = createServer((client) => {
      if (Date.now() < this.#refuseUntil) { client.destroy(); return }
      const upstream = connect(target.port, target.host)
      const pair = [client, upstream]
      for (const s of pair) {
        this.#sockets.add(s)
        s.on('close', () => { this.#sockets.delete(s); for (const o of pair) o.destroy() })
        s.on('error', () => {})
      }
      let held = false
      upstream.on('data', (chunk: Buffer) => { if (!held) client.write(chunk) })
      client.on('data', (chunk: Buffer) => {
        const arm = this.#arm
        if (arm === undefined || !chunk.includes(arm.trigger)) { upstream.write(chunk); return }
        this.#arm = undefined
        this.cuts++
        held = true
        if (!arm.forward) { client.destroy(); upstream.destroy(); this.#refuseUntil = Date.now() + arm.refuseMs; return }
        this.#refuseUntil = Infinity
        upstream.write(chunk)
        // Cut once etcd has applied the txn (seen through another client), so that the test
        // knows which case it made, whatever the machine's load.
        void (async () => {
          const deadline = Date.now() + 3000
          while (Date.now() < deadline && !(await arm.applied().catch(() => false))) await new Promise((resolve) => setTimeout(resolve, 10))
          client.destroy()
          upstream.destroy()
          this.#refuseUntil = Date.now() + arm.refuseMs
        })()
      })
    })
  }

  async listen (): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, PROXY_HOST, resolve))
    this.port = (this.#server.address() as { port: number }).port
    return `http://${PROXY_HOST}:${this.port}`
  }

  arm (trigger: string, forward: boolean, refuseMs: number, applied: () => Promise<boolean> = async () => true): void {
    this.#arm = { trigger: Buffer.from(trigger), forward, applied, refuseMs }
  }

  async close (): Promise<void> {
    for (const s of this.#sockets) s.destroy()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }
}

const svcWith = (id?: string): EndpointService =>
  makeService({ portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 80 }], backends: [makeBackend('127.83.0.10')], ...(id === undefined ? {} : { id }) })
const endpointAt = (svc: EndpointService, ip: string, n: number): Endpoint => ({ ...makeEndpoint(svc, { ip }), id: `vpce-${n.toString(16).padStart(12, '0')}` })

t.test('etcd store robustness', async (t) => {
  if (!requireTools(t, ['etcd'])) return
  const etcd = await startEtcdMember(t, HOST)
  const direct = createEtcdClient({ endpoints: [etcd.url] })
  t.teardown(() => direct.close())
  let run = 0
  const warnings: string[] = []
  const open = async (t: Test, prefix: string, client = direct): Promise<EtcdStore> => {
    const store = await EtcdStore.open(client, { prefix, onWarning: (err) => { warnings.push(err.message) } })
    t.teardown(() => store.close())
    return store
  }
  const keysUnder = async (prefix: string): Promise<string[]> => (await direct.getAll().prefix(prefix).keys()).sort()

  t.test('a commit whose answer is lost', async (t) => {
    const proxy = new CutProxy({ host: HOST, port: Number(new URL(etcd.url).port) })
    const url = await proxy.listen()
    t.teardown(() => proxy.close())
    const client = createEtcdClient({ endpoints: [url] })
    t.teardown(() => client.close())
    const prefix = `/lg-robust-${++run}/`
    const store = await open(t, prefix, client)
    const other = await open(t, prefix)

    const cases: Array<[string, boolean, number, RegExp]> = [
      ['committed, etcd3 retries at once: the retry fails its compares, the marker says it was this txn', true, 0, /committed at revision \d+ by an earlier try/],
      ['committed, no connection for 2 s: the fence finds the marker moved by this txn', true, 2000, /no answer from etcd/],
      ['never reached etcd, no connection for 2 s: the fence moves the marker, the change is made once', false, 2000, /no answer from etcd/]
    ]
    for (const [i, [name, forward, refuseMs, warned]] of cases.entries()) {
      await t.test(name, async (t) => {
        const svc = svcWith(`vpcesvc-lost0000000${i}`)
        warnings.length = 0
        proxy.arm(`state/services/${svc.id}`, forward, refuseMs, async () => (await direct.get(`${prefix}state/services/${svc.id}`).exec()).kvs.length === 1)
        let runs = 0
        const started = Date.now()
        const result = await store.transact((draft) => {
          runs++
          // A rule that must not be applied twice: it refuses when the service exists.
          if (draft.services[svc.id] !== undefined) throw new Error('applied twice')
          draft.services[svc.id] = svc
          return `created on run ${runs}`
        })
        t.equal(proxy.cuts, i + 1, 'the proxy cut the connection carrying the txn')
        t.comment(`${result}; answered after ${Date.now() - started} ms; warnings: ${warnings.join(' | ')}`)
        t.match(warnings.join('\n'), warned, 'the store said what happened')
        t.equal(runs, forward ? 1 : 2, forward ? 'the rule ran once: the committed txn was recognised' : 'known not applied: the rule ran again')
        t.same(store.state.services[svc.id], svc, 'the writer\'s view has it')
        const stored = await direct.get(`${prefix}state/services/${svc.id}`).json()
        t.same(stored, svc, 'etcd has it')
        const history = await direct.getAll().prefix(`${prefix}state/services/`).keys()
        t.equal(history.length, i + 1, 'one service per case: nothing applied twice')
        await waitFor(() => other.state.services[svc.id] !== undefined, 5000, 'the other node has it')
        t.same(other.state.services[svc.id], svc, 'the other node has it too')
      })
    }

    await t.test('through the control plane: a create whose answer is lost creates exactly one endpoint', async (t) => {
      const config = buildConfig({ stateDir: '/nonexistent', subnets: [{ id: 'subnet-a', cidr: '127.83.64.0/24', zone: 'zone-a' }] })
      const plane = new ControlPlane(config, store, { backendHealth: () => 'unknown' })
      const svc = await plane.createService(provider, { portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 8080 }], backends: [{ address: '127.83.0.10', zone: 'zone-a' }] })
      for (const [forward, refuseMs] of [[true, 0], [true, 2000], [false, 0]] as const) {
        const before = Object.keys(store.state.endpoints).length
        proxy.arm('state/endpoints/', forward, refuseMs, async () => (await direct.getAll().prefix(`${prefix}state/endpoints/`).keys()).length > before)
        const ep = await plane.createEndpoint(provider, { serviceId: svc.id, subnetId: 'subnet-a' })
        const stored = await direct.getAll().prefix(`${prefix}state/endpoints/`).json() as Record<string, Endpoint>
        t.equal(Object.keys(stored).length, before + 1, `forward ${forward}, refuse ${refuseMs} ms: one endpoint more in etcd`)
        t.same(stored[`${prefix}state/endpoints/${ep.id}`], ep, 'and it is the one the caller was given')
        t.equal(store.count('endpointIp', ep.ip), 1)
      }
    })
    t.ok(warnings.every((w) => !/marker .* expected/.test(w)), 'the marker never moved behind the store\'s back')
  })

  t.test('a store\'s marker key lives while the store does', async (t) => {
    const prefix = `/lg-robust-${++run}/`
    const store = await open(t, prefix)
    await store.transact((draft) => { const svc = svcWith(); draft.services[svc.id] = svc })
    t.equal(await direct.get(store.markerKey).string(), '1', 'the marker holds the number of the last txn')
    await store.close()
    t.same(await keysUnder(`${prefix}txn/`), [], 'gone after close')
  })

  t.test('etcd semantics the index keys rely on: a deleted key compares as create 0 and mod 0', async (t) => {
    const key = `/lg-robust-${++run}/idx/endpointIp/x`
    await direct.put(key).value('')
    const { header } = await direct.delete().key(key).exec()
    const rev = BigInt(header.revision)
    const cmp = async (target: 'Create' | 'Mod', op: '>' | '<' | '==', value: number | string): Promise<boolean> =>
      (await direct.if(key, target, op, value).commit()).succeeded
    t.equal(await cmp('Mod', '<', String(rev + 1n)), true, 'mod < V+1 holds for a deleted key: "not modified since V" alone cannot see a delete')
    t.equal(await cmp('Mod', '==', 0), true, 'its mod compares as 0')
    t.equal(await cmp('Create', '>', 0), false, 'create > 0 fails: what a non-empty entry adds to see its key deleted')
  })

  t.test('index version keys go when their entry empties', async (t) => {
    const prefix = `/lg-robust-${++run}/`
    const store = await open(t, prefix)
    const config = buildConfig({ stateDir: '/nonexistent', subnets: [{ id: 'subnet-a', cidr: '127.83.65.0/24', zone: 'zone-a' }] })
    const plane = new ControlPlane(config, store, { backendHealth: () => 'unknown' })
    const svc = await plane.createService(provider, { name: 'db', portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 8080 }], backends: [{ address: '127.83.0.10', zone: 'zone-a' }], allowedAccounts: ['*'] })
    const eps = [await plane.createEndpoint(provider, { serviceId: svc.id, subnetId: 'subnet-a' }), await plane.createEndpoint(provider, { serviceId: svc.id, subnetId: 'subnet-a' })]
    const idx = `${prefix}idx/`
    const expected = [
      `${idx}all/endpoint`, `${idx}all/service`, `${idx}endpointIp/${eps[0]?.ip}`, `${idx}endpointIp/${eps[1]?.ip}`,
      `${idx}endpointOwner/${provider.id}`, `${idx}endpointService/${svc.id}`,
      `${idx}serviceName/${encodeURIComponent(svc.serviceName)}`, `${idx}serviceName/db`, `${idx}serviceOwner/${provider.id}`
    ].sort()
    t.same(await keysUnder(idx), expected, 'one key per non-empty entry (none for serviceAllowed: no txn reads it)')
    await plane.deleteEndpoint(provider, eps[0]?.id as string)
    t.same(await keysUnder(idx), expected.filter((k) => k !== `${idx}endpointIp/${eps[0]?.ip}`), 'the emptied IP entry lost its key; shared entries keep theirs')
    await plane.deleteEndpoint(provider, eps[1]?.id as string)
    await plane.deleteService(provider, svc.id)
    t.same(await keysUnder(idx), [`${idx}all/endpoint`, `${idx}all/service`], 'with nothing left, only the two scan keys remain')
    const again = await plane.createEndpoint(provider, { serviceId: (await plane.createService(provider, { portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 8080 }] })).id, subnetId: 'subnet-a' })
    t.equal(again.ip, eps[0]?.ip, 'a freed IP is given out again (its entry starts afresh)')
  })

  t.test('racing creates and deletes of one index entry over two nodes stay exact', async (t) => {
    const prefix = `/lg-robust-${++run}/`
    const a = await open(t, prefix)
    const b = await open(t, prefix)
    const svc = svcWith()
    await a.transact((draft) => { draft.services[svc.id] = svc })
    const ip = '127.83.66.2'
    let n = 0
    // Take the IP if nobody holds it (the rule of a create with a requested IP).
    const take = (store: EtcdStore): Promise<string> => store.transact((draft) => {
      if (draft.count('endpointIp', ip) > 0) return 'in use'
      const ep = endpointAt(svc, ip, ++n)
      draft.endpoints[ep.id] = ep
      return 'taken'
    })
    // Give it back (the holder deletes its endpoint: the entry empties, its key goes).
    const release = (store: EtcdStore): Promise<string> => store.transact((draft) => {
      const [holder] = draft.ids('endpointIp', ip)
      if (holder === undefined) return 'none'
      delete draft.endpoints[holder]
      return 'released'
    })
    let taken = 0
    let released = 0
    for (let round = 0; round < 40; round++) {
      const ops = round % 2 === 0
        ? [take(a), take(b), release(a), take(b)]
        : [release(b), take(a), release(a), take(b), take(a)]
      const results = await Promise.all(ops)
      taken += results.filter((r) => r === 'taken').length
      released += results.filter((r) => r === 'released').length
      const stored = Object.values(await direct.getAll().prefix(`${prefix}state/endpoints/`).json() as Record<string, Endpoint>)
      const holders = stored.filter((e) => e.ip === ip).length
      const key = await direct.get(`${prefix}idx/endpointIp/${ip}`).exec()
      if (holders > 1) t.fail(`round ${round}: ${holders} endpoints hold ${ip}`)
      if ((key.kvs.length === 1) !== (holders === 1)) t.fail(`round ${round}: the IP's key ${key.kvs.length === 1 ? 'exists' : 'is gone'} with ${holders} holder(s)`)
    }
    await new Promise((resolve) => setTimeout(resolve, 200))
    t.equal(a.revision, b.revision, 'both views caught up')
    t.equal(taken - released, a.count('endpointIp', ip), `every take and release counted (${taken} taken, ${released} released)`)
    t.ok(taken >= 10 && released >= 10, 'the races happened both ways')
    t.equal(a.count('endpointIp', ip), b.count('endpointIp', ip))
    t.ok(a.count('endpointIp', ip) <= 1, 'never two holders')
  })

  t.test('changes past etcd\'s default --max-txn-ops (128 keys)', async (t) => {
    const prefix = `/lg-robust-${++run}/`
    const store = await open(t, prefix)
    const config = buildConfig({
      stateDir: '/nonexistent',
      subnets: [{ id: 'subnet-a', cidr: '127.83.68.0/22', zone: 'zone-a' }],
      quotas: { endpointsPerAccount: 500 }
    })
    const plane = new ControlPlane(config, store, { backendHealth: () => 'unknown' })

    await t.test('a service allowed to 300 accounts is created and deleted', async (t) => {
      const allowedAccounts = Array.from({ length: 300 }, (_, i) => String(200000000000 + i))
      const svc = await plane.createService(provider, { portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 8080 }], allowedAccounts })
      t.equal(store.count('serviceAllowed', '200000000299'), 1)
      await plane.deleteService(provider, svc.id)
      t.equal(store.state.services[svc.id], undefined)
    })

    await t.test('deleting a service leaves 150 pending endpoints failed, in steps that fit', async (t) => {
      const svc = await plane.createService(provider, { portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 8080 }], acceptanceRequired: true, allowedAccounts: ['*'] })
      const consumer: Caller = { id: '100000000002', name: 'consumer' }
      for (let i = 0; i < 150; i++) await plane.createEndpoint(consumer, { serviceId: svc.id, subnetId: 'subnet-a' })
      t.equal(store.count('endpointService', svc.id), 150)
      await plane.deleteService(provider, svc.id)
      t.equal(store.state.services[svc.id], undefined, 'the service is gone')
      const stored = Object.values(await direct.getAll().prefix(`${prefix}state/endpoints/`).json() as Record<string, Endpoint>)
      t.equal(stored.length, 150)
      t.ok(stored.every((e) => e.status === 'failed' && e.statusReason === `endpoint service ${svc.id} was deleted`), 'every left-behind endpoint is failed, in etcd')
      t.ok(Object.values(store.state.endpoints).every((e) => e.status === 'failed'), 'and in the view')
    })

    await t.test('a change that cannot fit is refused with a 409 naming the limit, and changes nothing', async (t) => {
      const svc = svcWith()
      const before = await keysUnder(prefix)
      const err = await store.transact((draft) => {
        draft.services[svc.id] = svc
        for (let i = 0; i < 130; i++) {
          const ep = endpointAt(svc, `127.83.70.${i + 2}`, 0xabc000 + i)
          draft.endpoints[ep.id] = ep
        }
      }).catch((e: unknown) => e as Error & { statusCode?: number })
      t.equal(err?.statusCode, 409)
      t.match(err?.message, /touches \d+ keys, more than one etcd transaction takes \(--max-txn-ops 128\)/)
      t.same(await keysUnder(prefix), before, 'nothing written')
      t.equal(store.state.services[svc.id], undefined)
    })
  })
})
