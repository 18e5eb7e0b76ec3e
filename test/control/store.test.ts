// The SQLite store (SPEC §8, §11): durable before acknowledged, one batch of events per
// transaction carrying before/after, a refused or failed change changes nothing and leaves no
// file behind, a corrupt database is refused and left untouched, a state.json is imported once.
import { spawn } from 'node:child_process'
import { readdir, readFile, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import type { ChangeEvent, EndpointService } from '../../src/control/model.ts'
import { SqliteStore } from '../../src/control/store-sqlite.ts'
import { makeBackend, makeEndpoint, makeService, tempDir, type Teardown } from '../helpers/dataplane-fixtures.ts'
import { MAIN, writeConfig } from '../helpers/gateway-process.ts'
import { readStateOnDisk } from '../helpers/state-on-disk.ts'

const service = (): EndpointService => makeService({
  portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 80 }],
  backends: [makeBackend('127.73.0.10')]
})

async function open (t: Teardown, dir: string, options: Parameters<typeof SqliteStore.open>[1] = {}): Promise<SqliteStore> {
  const store = await SqliteStore.open(dir, options)
  t.teardown(() => store.close())
  return store
}

t.test('a committed change is on disk when transact resolves, and subscribers hear it once with before and after', async (t) => {
  const dir = await tempDir(t, 'linkgate-store-')
  const store = await open(t, dir)
  const batches: Array<readonly ChangeEvent[]> = []
  store.subscribe((events) => { batches.push(events) })
  const svc = service()
  const ep = makeEndpoint(svc, { ip: '127.73.1.2' })
  await store.transact((draft) => {
    draft.services[svc.id] = svc
    draft.endpoints[ep.id] = ep
  })
  t.same(Object.keys(readStateOnDisk(store.file).endpoints), [ep.id], 'the row is in the database before transact resolved')
  t.equal(batches.length, 1, 'one batch per transaction')
  t.same(batches[0]?.map((e) => [e.kind, e.action, e.id, e.before, e.after?.id]), [
    ['service', 'created', svc.id, undefined, svc.id],
    ['endpoint', 'created', ep.id, undefined, ep.id]
  ], 'services first, each with what changed')
  t.ok(Object.isFrozen(store.state.services[svc.id]), 'stored resources are frozen')

  const moved = { ...ep, ip: '127.73.1.3' }
  await store.transact((draft) => { draft.endpoints[ep.id] = moved })
  t.equal(batches[1]?.[0]?.action, 'updated')
  t.equal((batches[1]?.[0]?.before as typeof ep).ip, '127.73.1.2', 'before is the old record')
  t.equal(store.count('endpointIp', '127.73.1.2'), 0, 'the IP index follows')
  t.equal(store.count('endpointIp', '127.73.1.3'), 1)

  await store.transact((draft) => { delete draft.endpoints[ep.id] })
  t.match(batches[2], [{ kind: 'endpoint', action: 'deleted', id: ep.id, after: undefined }])
  t.equal(store.count('endpointService', svc.id), 0)

  await store.transact((draft) => { draft.services[svc.id] = draft.services[svc.id] as EndpointService })
  t.equal(batches.length, 3, 'putting a record back unchanged is no change: no write, no event')

  await store.close()
  const again = await open(t, dir)
  t.same(Object.keys(again.state.services), [svc.id], 'a reopened store has the committed state')
  t.same(Object.keys(again.state.endpoints), [])
})

t.test('a transaction that throws changes nothing, and the draft sees its own writes and records its reads', async (t) => {
  const store = await open(t, await tempDir(t, 'linkgate-store-'))
  let heard = 0
  store.subscribe(() => { heard++ })
  const a = service()
  const b = service()
  await t.rejects(store.transact((draft) => {
    draft.services[a.id] = a
    throw new Error('refused')
  }), /refused/)
  t.equal(store.state.services[a.id], undefined)
  t.equal(heard, 0)

  const reads = await store.transact((draft) => {
    t.equal(draft.count('serviceOwner', a.ownerAccountId), 0)
    draft.services[a.id] = a
    draft.services[b.id] = b
    t.equal(draft.count('serviceOwner', a.ownerAccountId), 2, 'counts include the draft\'s writes')
    t.same(draft.ids('serviceOwner', a.ownerAccountId), [a.id, b.id].sort())
    t.ok(a.id in draft.services)
    delete draft.services[b.id]
    t.equal(draft.services[b.id], undefined, 'a delete in the draft hides the record')
    t.equal(draft.count('serviceOwner', a.ownerAccountId), 1)
    return [...draft.reads]
  })
  t.ok(reads.includes(`service/${b.id}`) && reads.includes(`index/serviceOwner/${a.ownerAccountId}`), 'keys and index lookups are recorded')
  t.equal(store.count('serviceOwner', a.ownerAccountId), 1)
  t.same(store.page('serviceOwner', a.ownerAccountId, undefined, 10), [a.id])
  t.equal(store.state.services.__proto__, undefined, 'ids from URLs cannot reach Object.prototype')
  await t.rejects(store.transact((draft) => { draft.services['vpcesvc-000000000000'] = a }), /must be a resource with id/)
})

t.test('a write that fails (database full) changes nothing, leaves no file behind, and later writes still work', async (t) => {
  const dir = await tempDir(t, 'linkgate-store-')
  const store = await open(t, dir, { maxPageCount: 24 })
  const small = service()
  await store.transact((draft) => { draft.services[small.id] = small })
  let heard = 0
  store.subscribe(() => { heard++ })
  // ~400 KiB of allowed accounts: more than 24 pages of 4 KiB.
  const huge = { ...service(), allowedAccounts: Array.from({ length: 30000 }, (_, i) => String(100000000000 + i)) }
  await t.rejects(store.transact((draft) => { draft.services[huge.id] = huge }), /not written, nothing changed .*full/i)
  t.equal(store.state.services[huge.id], undefined, 'memory unchanged')
  t.equal(store.count('serviceAllowed', '100000000001'), 0, 'indexes unchanged')
  t.equal(heard, 0, 'no event')
  t.same(Object.keys(readStateOnDisk(store.file).services), [small.id], 'disk unchanged')
  t.same((await readdir(dir)).filter((f) => !/^state\.db(-wal|-shm)?$/.test(f)), [], 'no temp file')
  const next = service()
  await store.transact((draft) => { draft.services[next.id] = next })
  t.ok(store.state.services[next.id], 'the next write succeeds')
})

t.test('a corrupt database stops the open with a clear message and is never written', async (t) => {
  const dir = await tempDir(t, 'linkgate-store-')
  const garbage = Buffer.from('SQLite format 3\0' + 'x'.repeat(4000))
  await writeFile(join(dir, 'state.db'), garbage)
  await t.rejects(SqliteStore.open(dir), { code: 'StateCorrupt', message: /state file .*state\.db is corrupt .*left untouched/ })
  t.same(await readFile(join(dir, 'state.db')), garbage, 'byte for byte the same')

  const notDb = Buffer.from('{"version": 1}')
  await writeFile(join(dir, 'state.db'), notDb)
  await t.rejects(SqliteStore.open(dir), { code: 'StateCorrupt', message: /not a database/ })
  t.same(await readFile(join(dir, 'state.db')), notDb)
})

t.test('linkgate start refuses a corrupt database, names it, and exits non-zero', async (t) => {
  const dir = await tempDir(t, 'linkgate-store-')
  const stateDir = join(dir, 'state')
  await mkdir(stateDir)
  await writeFile(join(stateDir, 'state.db'), 'definitely not sqlite'.repeat(300))
  const config = await writeConfig(dir, { listen: { api: '127.73.0.1:0', dns: '127.73.0.1:0' }, stateDir, subnets: [{ id: 'subnet-a', cidr: '127.73.1.0/24', zone: 'zone-a' }] })
  const child = spawn(process.execPath, [MAIN, 'start', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { child.kill('SIGKILL') })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  t.not(code, 0)
  t.match(stderr, /state\.db is corrupt \(file is not a database\); it was left untouched/)
  t.notOk((await readdir(stateDir)).some((f) => f.startsWith('state.db-')), 'no WAL or shm file was created beside it')
})

t.test('a state.json of the JSON store is imported once and kept as state.json.imported', async (t) => {
  const dir = await tempDir(t, 'linkgate-store-')
  const svc = service()
  const ep = makeEndpoint(svc, { ip: '127.73.2.2' })
  const text = JSON.stringify({ version: 1, services: { [svc.id]: svc }, endpoints: { [ep.id]: ep } }, null, 1)
  await writeFile(join(dir, 'state.json'), text)
  await writeFile(join(dir, 'state.json.tmp-123-4'), '{"half": ') // the JSON store's leftover
  const store = await SqliteStore.open(dir)
  t.same(store.state.services[svc.id], svc)
  t.same(store.state.endpoints[ep.id], ep)
  t.equal(store.count('endpointService', svc.id), 1, 'imported records are indexed')
  const files = (await readdir(dir)).sort()
  t.ok(files.includes('state.json.imported') && !files.includes('state.json'), `renamed (${files.join(', ')})`)
  t.notOk(files.some((f) => f.includes('.tmp-')), 'the old store\'s temp file is gone')
  t.equal(await readFile(join(dir, 'state.json.imported'), 'utf8'), text, 'kept as it was')
  await store.transact((draft) => { delete draft.endpoints[ep.id] })
  await store.close()

  const again = await open(t, dir)
  t.equal(again.state.endpoints[ep.id], undefined, 'not imported a second time: the delete after the import holds')
  t.ok(again.state.services[svc.id])
})

t.test('a corrupt state.json stops the open and is left untouched (the database is not created)', async (t) => {
  const dir = await tempDir(t, 'linkgate-store-')
  await writeFile(join(dir, 'state.json'), '{"version": 1, "services": {"vpcesvc-0000000000aa": {"id": "vpcesvc-0000000000aa"}}, "endpoints": {}}')
  await t.rejects(SqliteStore.open(dir), { code: 'StateCorrupt', message: /state\.json is corrupt \(service vpcesvc-0000000000aa lacks/ })
  t.same(await readdir(dir), ['state.json'])
})
