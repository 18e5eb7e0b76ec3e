// The store of a cluster (SPEC §12) on etcd v3: one key per resource, every node holding the
// whole state in memory (store.ts's MemoryView), fed by one watch.
//
// Keys, under the cluster's prefix:
//   state/services/<id>, state/endpoints/<id>   the resource as JSON
//   idx/<index>/<key>                           a version key per index entry (quota counts,
//                                               IP in use, names): every transaction that adds
//                                               an id to the entry or takes one out rewrites it
//   idx/all/service, idx/all/endpoint           rewritten by every create and delete of its kind
//
// A transaction runs `fn` on a draft of the node's view at revision V, then commits with ONE
// etcd txn whose compares cover everything the draft read:
//   - a resource read as present: its mod revision is still the one the view holds;
//   - a resource read as absent, an index entry, a full scan (idx/all/<kind>): not modified
//     after V (`mod < V + 1`; a key that does not exist compares as revision 0);
// so two nodes that both counted 19 endpoints of an account, or both found an IP free, cannot
// both commit: the second txn fails its compares, waits until its view has the winner's
// change, and runs `fn` again on a fresh draft (up to `maxAttempts` times). What the caller
// sees is then the rule's own answer (quota exceeded, IP in use), never a lost race.
// Events reach subscribers from the watch only, one batch per etcd revision, so every node,
// the writer included, hears the same events in the same order; `transact` resolves once the
// writer's own view has applied its revision.
import type { Etcd3, IKeyValue, IWatchResponse, Watcher } from 'etcd3'
import type { ICompare, IRequestOp, ITxnResponse } from 'etcd3/lib/rpc.js'
import { conflict, StateCorruptError } from '../errors.ts'
import { deepFreeze, type Endpoint, type EndpointService, type State } from './model.ts'
import {
  checkResource, MemoryView, Subscribers, type Change, type ChangeListener, type Draft, type IndexName, type Store
} from './store.ts'

/** etcd's default `--max-txn-ops`: more compares than this go coarse, more writes are refused. */
const MAX_TXN_OPS = 128
const COARSE_AT = 100
/** How long a committed transaction waits for its own revision to come back through the watch. */
const APPLY_WAIT_MS = 5000
// etcd's enum values, as numbers (the wire form; the proto loader also takes etcd3's names).
const MOD = 2 // CompareTarget.MOD
const EQUAL = 0 // CompareResult.EQUAL
const LESS = 2 // CompareResult.LESS
const DESCEND = 2 // SortOrder.DESCEND
const BY_MOD = 3 // SortTarget.MOD

export interface EtcdStoreOptions {
  /** The cluster's key prefix, ending in `/` (SPEC §12: `/linkgate/`). */
  readonly prefix: string
  /** How many times a transaction that lost a race is run again before the caller gets a 409. */
  readonly maxAttempts?: number
  /** A subscriber threw: the change is committed anyway; say so somewhere. */
  readonly onListenerError?: (err: unknown) => void
  /** Something odd but survivable (a watch restarted, a key that is not a resource). */
  readonly onWarning?: (err: Error) => void
}

type Kind = 'service' | 'endpoint'
const KINDS: Readonly<Record<Kind, string>> = { service: 'services', endpoint: 'endpoints' }

const serviceIndexes: ReadonlyArray<readonly [IndexName, (s: EndpointService) => readonly string[]]> = [
  ['serviceOwner', (s) => [s.ownerAccountId]],
  ['serviceAllowed', (s) => s.allowedAccounts],
  ['serviceName', (s) => (s.name === undefined || s.name === s.serviceName ? [s.serviceName] : [s.name, s.serviceName])]
]
const endpointIndexes: ReadonlyArray<readonly [IndexName, (e: Endpoint) => readonly string[]]> = [
  ['endpointOwner', (e) => [e.ownerAccountId]],
  ['endpointService', (e) => [e.serviceId]],
  ['endpointIp', (e) => [e.ip]]
]

/** The key just past every key that starts with `prefix` (etcd's range_end of a prefix). */
function prefixEnd (prefix: Buffer): Buffer {
  const end = Buffer.from(prefix)
  for (let i = end.length - 1; i >= 0; i--) {
    if ((end[i] as number) < 0xff) {
      end[i] = (end[i] as number) + 1
      return end.subarray(0, i + 1)
    }
  }
  return Buffer.from([0])
}

interface Waiter { revision: bigint, resolve: () => void }

export class EtcdStore implements Store {
  readonly #client: Etcd3
  readonly #prefix: string
  readonly #maxAttempts: number
  readonly #onWarning: (err: Error) => void
  readonly #view = new MemoryView()
  /** Mod revision of every resource key the view holds (`state/services/<id>` -> revision). */
  readonly #mods = new Map<string, bigint>()
  readonly #subscribers: Subscribers
  #revision = 0n
  #waiters: Waiter[] = []
  #watcher: Watcher | undefined
  #resyncTimer: NodeJS.Timeout | undefined
  #queue: Promise<unknown> = Promise.resolve()
  #closed = false
  #closing: Promise<void> | undefined

  private constructor (client: Etcd3, options: EtcdStoreOptions) {
    if (!options.prefix.startsWith('/') || !options.prefix.endsWith('/')) throw new RangeError(`cluster.etcd.prefix: ${JSON.stringify(options.prefix)} must start and end with /`)
    this.#client = client
    this.#prefix = options.prefix
    this.#maxAttempts = options.maxAttempts ?? 20
    this.#onWarning = options.onWarning ?? ((err) => { process.emitWarning(`etcd store: ${err.message}`) })
    this.#subscribers = new Subscribers(options.onListenerError ?? ((err) => { process.emitWarning(`store subscriber failed: ${String(err)}`) }))
  }

  /** Load every resource under `<prefix>state/` and watch for changes from that revision on. */
  static async open (client: Etcd3, options: EtcdStoreOptions): Promise<EtcdStore> {
    const store = new EtcdStore(client, options)
    await store.#sync(true)
    return store
  }

  get state (): State { return this.#view.state }
  /** The etcd revision the view has applied. */
  get revision (): bigint { return this.#revision }

  count (index: IndexName, key: string): number { return this.#view.count(index, key) }
  page (index: IndexName, key: string, after: string | undefined, limit: number): string[] { return this.#view.page(index, key, after, limit) }
  subscribe (listener: ChangeListener): () => void { return this.#subscribers.add(listener) }

  /** Transactions of one node run one at a time (a node does not race itself); nodes race in etcd. */
  transact<T> (fn: (draft: Draft) => T): Promise<T> {
    const run = async (): Promise<T> => {
      for (let attempt = 1; ; attempt++) {
        if (this.#closed) throw new Error('state store is closed')
        const draft = this.#view.draft()
        const at = this.#revision
        let result: T
        try {
          result = fn(draft)
        } finally {
          draft.close()
        }
        const changes = draft.changes()
        if (changes.length === 0) return result
        const compare = this.#compares(draft.reads, at)
        const writes = this.#writes(changes)
        if (writes.length > MAX_TXN_OPS) throw conflict(`the change touches ${writes.length} keys, more than one etcd transaction takes (${MAX_TXN_OPS}); make it in smaller steps`)
        const res: ITxnResponse = await this.#client.kv.txn({ compare, success: writes, failure: this.#probes(compare) })
        if (res.succeeded) {
          // Committed. Normally the watch brings it within milliseconds; if etcd went away right
          // after, answer anyway after a while (the view applies it when the watch is back).
          const revision = BigInt(res.header.revision)
          await this.#caughtUp(revision, APPLY_WAIT_MS)
          if (this.#revision < revision) this.#onWarning(new Error(`committed revision ${revision} not seen by the watch within ${APPLY_WAIT_MS} ms`))
          return result
        }
        if (attempt >= this.#maxAttempts) throw conflict(`the change lost ${attempt} races with other nodes' changes to the same resources; try again`)
        // Wait until the view has the change that beat us, then run the rules again on it.
        await this.#caughtUp(this.#newest(res), 2000)
      }
    }
    const next = this.#queue.then(run, run)
    this.#queue = next.catch(() => {})
    return next
  }

  close (): Promise<void> {
    this.#closing ??= (async () => {
      await this.#queue
      this.#closed = true
      clearTimeout(this.#resyncTimer)
      const watcher = this.#watcher
      this.#watcher = undefined
      if (watcher !== undefined) await watcher.cancel().catch(() => {})
      for (const w of this.#waiters) w.resolve()
      this.#waiters = []
    })()
    return this.#closing
  }

  // ---- keys ----

  #resourceKey (kind: Kind, id: string): string { return `${this.#prefix}state/${KINDS[kind]}/${id}` }
  #indexKey (index: string, key: string): string { return `${this.#prefix}idx/${index}/${encodeURIComponent(key)}` }

  /** A resource key back to (kind, id); undefined for anything else under state/. */
  #parse (key: string): { kind: Kind, id: string } | undefined {
    const rest = key.slice(this.#prefix.length + 'state/'.length)
    const slash = rest.indexOf('/')
    const group = rest.slice(0, slash)
    const id = rest.slice(slash + 1)
    if (slash < 0 || id === '') return undefined
    if (group === 'services') return { kind: 'service', id }
    if (group === 'endpoints') return { kind: 'endpoint', id }
    return undefined
  }

  // ---- the transaction ----

  /** What the draft read, as compares against the view's revision `at`. */
  #compares (reads: ReadonlySet<string>, at: bigint): ICompare[] {
    const resources: ICompare[] = []
    const indexes = new Set<string>()
    for (const read of reads) {
      const slash = read.indexOf('/')
      const what = read.slice(0, slash)
      const rest = read.slice(slash + 1)
      if (what === 'index') {
        const cut = rest.indexOf('/')
        indexes.add(this.#indexKey(rest.slice(0, cut), rest.slice(cut + 1)))
      } else if (rest === '*') {
        indexes.add(this.#indexKey('all', what))
      } else {
        const key = this.#resourceKey(what as Kind, rest)
        const mod = this.#mods.get(key)
        resources.push(mod === undefined
          ? { key: Buffer.from(key), target: MOD, result: LESS, mod_revision: String(at + 1n) }
          : { key: Buffer.from(key), target: MOD, result: EQUAL, mod_revision: String(mod) })
      }
    }
    const notSince = (key: Buffer, rangeEnd?: Buffer): ICompare => ({ key, range_end: rangeEnd, target: MOD, result: LESS, mod_revision: String(at + 1n) })
    if (resources.length + indexes.size <= COARSE_AT) return [...resources, ...[...indexes].map((k) => notSince(Buffer.from(k)))]
    // Too many for one txn (a scan of a large subnet for a free IP): compare whole ranges
    // instead, stricter (any change since `at` is a conflict) but still exact. A deleted
    // resource is caught by idx/all/<kind>, which every delete rewrites.
    const idx = Buffer.from(`${this.#prefix}idx/`)
    const compares = [notSince(idx, prefixEnd(idx))]
    if (resources.length > COARSE_AT - 1) {
      const state = Buffer.from(`${this.#prefix}state/`)
      compares.push(notSince(state, prefixEnd(state)))
    } else {
      compares.push(...resources)
    }
    return compares
  }

  /** The puts and deletes of the changes, plus a rewrite of every index entry they change. */
  #writes (changes: readonly Change[]): IRequestOp[] {
    const ops: IRequestOp[] = []
    const touched = new Set<string>()
    const touch = (index: string, key: string): void => { touched.add(this.#indexKey(index, key)) }
    for (const c of changes) {
      const key = Buffer.from(this.#resourceKey(c.kind, c.id))
      ops.push(c.after === undefined
        ? { request_delete_range: { key } }
        : { request_put: { key, value: Buffer.from(JSON.stringify(c.after)) } })
      if (c.before === undefined || c.after === undefined) touch('all', c.kind)
      const fns = (c.kind === 'service' ? serviceIndexes : endpointIndexes) as ReadonlyArray<readonly [IndexName, (v: EndpointService | Endpoint) => readonly string[]]>
      for (const [index, keysOf] of fns) {
        const before = new Set(c.before === undefined ? [] : keysOf(c.before))
        const after = new Set(c.after === undefined ? [] : keysOf(c.after))
        for (const k of before) if (!after.has(k)) touch(index, k)
        for (const k of after) if (!before.has(k)) touch(index, k)
      }
    }
    for (const key of touched) ops.push({ request_put: { key: Buffer.from(key), value: Buffer.alloc(0) } })
    return ops
  }

  /** The failure branch reads the compared keys (and idx/all/*): their newest revision is one the watch will deliver. */
  #probes (compare: readonly ICompare[]): IRequestOp[] {
    const keys: Array<{ key: Buffer, range_end?: Buffer | undefined }> = [
      ...compare.map((c) => ({ key: c.key as Buffer, range_end: c.range_end })),
      { key: Buffer.from(this.#indexKey('all', 'service')) },
      { key: Buffer.from(this.#indexKey('all', 'endpoint')) }
    ]
    return keys.slice(0, MAX_TXN_OPS).map(({ key, range_end: rangeEnd }) => ({
      request_range: rangeEnd === undefined
        ? { key, keys_only: true }
        : { key, range_end: rangeEnd, keys_only: true, limit: 1, sort_order: DESCEND, sort_target: BY_MOD }
    }))
  }

  /** The newest mod revision among the failure branch's reads: a transaction of this store, which the watch delivers. */
  #newest (res: ITxnResponse): bigint {
    let newest = 0n
    for (const r of res.responses) {
      for (const kv of r.response_range?.kvs ?? []) {
        const mod = BigInt(kv.mod_revision)
        if (mod > newest) newest = mod
      }
    }
    return newest
  }

  /** Resolve once the view has applied `revision`, or after `timeoutMs`. */
  #caughtUp (revision: bigint, timeoutMs: number): Promise<void> {
    if (this.#revision >= revision || this.#closed) return Promise.resolve()
    return new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | undefined
      const waiter: Waiter = { revision, resolve: () => { clearTimeout(timer); resolve() } }
      timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter)
        resolve()
      }, timeoutMs)
      this.#waiters.push(waiter)
    })
  }

  // ---- the view, from a snapshot and the watch ----

  /** Range of state/ at revision R, then a watch from R + 1; the difference to the view is applied as changes. */
  async #sync (first: boolean): Promise<void> {
    const prefix = `${this.#prefix}state/`
    const res = await this.#client.getAll().prefix(prefix).exec()
    if (this.#closed) return
    const seen = new Set<string>()
    const changes: Change[] = []
    for (const kv of res.kvs) {
      const key = kv.key.toString()
      seen.add(key)
      if (this.#mods.get(key) === BigInt(kv.mod_revision)) continue
      const change = this.#changeOf(key, kv, first)
      if (change !== undefined) changes.push(change)
    }
    for (const key of [...this.#mods.keys()]) {
      if (!seen.has(key)) {
        const change = this.#changeOf(key, undefined, first)
        if (change !== undefined) changes.push(change)
      }
    }
    if (first) {
      for (const c of changes) if (c.after !== undefined) this.#view.load(c.kind, c.after)
    } else {
      this.#emit(changes)
    }
    this.#advance(BigInt(res.header.revision))
    const watcher = await this.#client.watch().prefix(prefix).startRevision((BigInt(res.header.revision) + 1n).toString()).create()
    if (this.#closed) { await watcher.cancel(); return }
    this.#watcher = watcher
    watcher.on('data', (data: IWatchResponse) => this.#onWatch(data))
    // etcd3 reconnects a watch by itself from the last revision it saw; an 'error' means the
    // watch is gone for good (its revision was compacted): start again from a snapshot.
    watcher.on('error', (err: Error) => {
      if (this.#closed || this.#watcher !== watcher) return
      this.#onWarning(new Error(`watch of ${prefix} failed, reloading: ${err.message}`))
      this.#watcher = undefined
      void watcher.cancel().catch(() => {})
      this.#scheduleResync()
    })
  }

  #scheduleResync (): void {
    if (this.#closed || this.#resyncTimer !== undefined) return
    this.#resyncTimer = setTimeout(() => {
      this.#resyncTimer = undefined
      this.#sync(false).catch((err: unknown) => {
        this.#onWarning(err as Error)
        this.#scheduleResync()
      })
    }, 500)
  }

  /** One watch response: its events grouped by revision (one etcd txn each), each group one batch. */
  #onWatch (data: IWatchResponse): void {
    if (this.#closed) return
    let revision = -1n
    let changes: Change[] = []
    const flush = (): void => {
      if (changes.length > 0) this.#emit(changes)
      changes = []
      if (revision >= 0n) this.#advance(revision)
    }
    for (const event of data.events) {
      const mod = BigInt(event.kv.mod_revision)
      if (mod !== revision) { flush(); revision = mod }
      const change = this.#changeOf(event.kv.key.toString(), event.type === 'Delete' ? undefined : event.kv, false)
      if (change !== undefined) changes.push(change)
    }
    flush()
  }

  /** A key's new value (undefined: deleted) as a change of the view, recording its mod revision. */
  #changeOf (key: string, kv: IKeyValue | undefined, first: boolean): Change | undefined {
    const name = this.#parse(key)
    if (name === undefined) {
      this.#onWarning(new Error(`${key}: not a resource key, ignored`))
      return undefined
    }
    const { kind, id } = name
    const rows = kind === 'service' ? this.#view.state.services : this.#view.state.endpoints
    const before = rows[id]
    let after: EndpointService | Endpoint | undefined
    if (kv !== undefined) {
      try {
        let value: unknown
        try {
          value = JSON.parse(kv.value.toString())
        } catch (err) {
          throw new StateCorruptError(key, `not valid JSON: ${(err as Error).message}`)
        }
        after = checkResource(key, kind, id, value)
      } catch (err) {
        // At start a bad key stops the node (as a corrupt database does); later it is named and skipped.
        if (first) throw err
        this.#onWarning(err as Error)
        return undefined
      }
      this.#mods.set(key, BigInt(kv.mod_revision))
    } else {
      this.#mods.delete(key)
    }
    if (before === undefined && after === undefined) return undefined
    return { kind, id, before, after } as Change
  }

  /** Apply to the view (frozen), then tell subscribers: services first, as the SQLite store does. */
  #emit (changes: readonly Change[]): void {
    const frozen = changes.map((c) => (c.after === undefined ? c : { ...c, after: deepFreeze(c.after) }) as Change)
    const ordered = [...frozen.filter((c) => c.kind === 'service'), ...frozen.filter((c) => c.kind === 'endpoint')]
    const events = this.#view.apply(ordered)
    this.#subscribers.emit(events)
  }

  #advance (revision: bigint): void {
    if (revision <= this.#revision) return
    this.#revision = revision
    const due = this.#waiters.filter((w) => w.revision <= revision)
    if (due.length === 0) return
    this.#waiters = this.#waiters.filter((w) => w.revision > revision)
    for (const w of due) w.resolve()
  }
}
