// The store of a cluster (SPEC §12) on etcd v3: one key per resource, every node holding the
// whole state in memory (store.ts's MemoryView), fed by one watch.
//
// Keys, under the cluster's prefix:
//   state/services/<id>, state/endpoints/<id>   the resource as JSON
//   idx/<index>/<key>                           a version key per NON-EMPTY index entry that a
//                                               rule reads in a transaction (quota counts, IP in
//                                               use, names, a service's endpoints): put by every
//                                               txn that adds an id to the entry or takes one
//                                               out, deleted by the txn that empties it
//   idx/all/service, idx/all/endpoint           rewritten by every create and delete of its kind
//                                               and by every txn that deletes an index key
//   txn/<store id>                              this store's transaction marker (see below)
//
// A transaction runs `fn` on a draft of the node's view at revision V, then commits with ONE
// etcd txn whose compares cover everything the draft read:
//   - a resource read as present: its mod revision is still the one the view holds;
//   - a resource read as absent, an empty index entry, a full scan (idx/all/<kind>): not
//     modified after V (`mod < V + 1`; a key that does not exist compares as revision 0);
//   - a non-empty index entry: its key still exists (`create > 0`) and `mod < V + 1`, so an
//     entry emptied after V (its key deleted: mod 0) is a conflict too;
// so two nodes that both counted 19 endpoints of an account, or both found an IP free, cannot
// both commit: the second txn fails its compares, waits until its view has the winner's
// change, and runs `fn` again on a fresh draft (up to `maxAttempts` times). What the caller
// sees is then the rule's own answer (quota exceeded, IP in use), never a lost race.
// Events reach subscribers from the watch only, one batch per etcd revision, so every node,
// the writer included, hears the same events in the same order; `transact` resolves once the
// writer's own view has applied its revision.
//
// A commit whose answer is lost (connection reset, deadline; etcd3 also retries such a call by
// itself) has an unknown outcome. Every txn of this store therefore also compares and bumps
// its marker key `txn/<store id>` (value: the txn's sequence number), which nothing else
// writes: a later answer that shows the marker holding this txn's number means it committed;
// otherwise a fencing txn moves the marker on (`mod == M` -> put), after which the lost txn,
// which compared `mod == M`, can never apply. So the caller gets the real outcome, and a
// change is never applied twice.
import { randomBytes } from 'node:crypto'
import { isRecoverableError, type Etcd3, type IKeyValue, type IWatchResponse, type Watcher } from 'etcd3'
import type { ICompare, IRequestOp, ITxnResponse } from 'etcd3/lib/rpc.js'
import { conflict, StateCorruptError } from '../errors.ts'
import { deepFreeze, type Endpoint, type EndpointService, type State } from './model.ts'
import {
  checkResource, MemoryView, SerialQueue, Subscribers, type Change, type ChangeListener, type Draft, type IndexName, type Store
} from './store.ts'

/** etcd's default `--max-txn-ops`: more compares than COARSE_AT go coarse, more writes are refused. */
const MAX_TXN_OPS = 128
const COARSE_AT = 100
/** How long a transaction waits for a revision to come through the watch before it reads it instead. */
const APPLY_WAIT_MS = 1000
/** How long a transaction whose answer was lost keeps asking etcd what became of it. */
const RESOLVE_MS = 15000
// etcd's enum values, as numbers (the wire form; the proto loader also takes etcd3's names).
const CREATE = 1 // CompareTarget.CREATE
const MOD = 2 // CompareTarget.MOD
const EQUAL = 0 // CompareResult.EQUAL
const GREATER = 1 // CompareResult.GREATER
const LESS = 2 // CompareResult.LESS
const DESCEND = 2 // SortOrder.DESCEND
const BY_MOD = 3 // SortTarget.MOD

export interface EtcdStoreOptions {
  /** The cluster's key prefix, ending in `/` (SPEC §12: `/linkgate/`). */
  readonly prefix: string
  /** How many times a transaction that lost a race is run again before the caller gets a 409. */
  readonly maxAttempts?: number
  /** etcd's `--max-txn-ops` (default 128): a change that needs more writes is refused with a 409 naming it. */
  readonly maxTxnOps?: number
  /** A subscriber threw: the change is committed anyway; say so somewhere. */
  readonly onListenerError?: (err: unknown) => void
  /** Something odd but survivable (a watch restarted, a key that is not a resource, a lost answer). */
  readonly onWarning?: (err: Error) => void
}

type Kind = 'service' | 'endpoint'
const KINDS: Readonly<Record<Kind, string>> = { service: 'services', endpoint: 'endpoints' }

// The indexes that rules read inside a transaction, and so need a version key to compare.
// `serviceAllowed` is read only outside transactions (lists): a service allowed to 1,000
// accounts would otherwise cost 1,000 keys per create and delete. A draft that reads it after
// all is still exact: it compares every service instead (store.ts's reads say which).
const serviceIndexes: ReadonlyArray<readonly [IndexName, (s: EndpointService) => readonly string[]]> = [
  ['serviceOwner', (s) => [s.ownerAccountId]],
  ['serviceName', (s) => (s.name === undefined || s.name === s.serviceName ? [s.serviceName] : [s.name, s.serviceName])]
]
const endpointIndexes: ReadonlyArray<readonly [IndexName, (e: Endpoint) => readonly string[]]> = [
  ['endpointOwner', (e) => [e.ownerAccountId]],
  ['endpointService', (e) => [e.serviceId]],
  ['endpointIp', (e) => [e.ip]]
]
const VERSIONED: ReadonlyMap<string, Kind> = new Map([
  ...serviceIndexes.map(([name]) => [name, 'service'] as const),
  ...endpointIndexes.map(([name]) => [name, 'endpoint'] as const)
])
const UNVERSIONED: ReadonlyMap<string, Kind> = new Map([['serviceAllowed', 'service']])

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

/** What became of a commit: applied at `revision`, or known never to apply. */
type Outcome = { readonly applied: true, readonly revision: bigint } | { readonly applied: false }

export class EtcdStore implements Store {
  readonly #client: Etcd3
  readonly #prefix: string
  readonly #maxAttempts: number
  readonly #maxTxnOps: number
  readonly #onWarning: (err: Error) => void
  readonly #view = new MemoryView()
  /** Mod revision of every resource key the view holds (`state/services/<id>` -> revision). */
  readonly #mods = new Map<string, bigint>()
  readonly #subscribers: Subscribers
  readonly #queue = new SerialQueue()
  /** This store's transaction marker: only this store writes it, one transaction at a time. */
  readonly #marker: Buffer
  /** The marker's mod revision as of this store's last known write of it (0: none yet). */
  #markerMod = 0n
  #seq = 0
  #revision = 0n
  #waiters: Waiter[] = []
  #watcher: Watcher | undefined
  #resyncTimer: NodeJS.Timeout | undefined
  #closed = false

  private constructor (client: Etcd3, options: EtcdStoreOptions) {
    if (!options.prefix.startsWith('/') || !options.prefix.endsWith('/')) throw new RangeError(`cluster.etcd.prefix: ${JSON.stringify(options.prefix)} must start and end with /`)
    this.#client = client
    this.#prefix = options.prefix
    this.#maxAttempts = options.maxAttempts ?? 20
    this.#maxTxnOps = options.maxTxnOps ?? MAX_TXN_OPS
    this.#marker = Buffer.from(`${options.prefix}txn/${randomBytes(8).toString('hex')}`)
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
  /** This store's marker key (tests look at it). */
  get markerKey (): string { return this.#marker.toString() }
  /**
   * A change of more resources than this may not fit one etcd txn: a rule that can touch many
   * (a service's left-behind endpoints) makes them in steps of at most this many.
   */
  get maxWritesPerTransaction (): number { return this.#maxTxnOps - 28 } // room for 27 index keys and the marker

  count (index: IndexName, key: string): number { return this.#view.count(index, key) }
  page (index: IndexName, key: string, after: string | undefined, limit: number): string[] { return this.#view.page(index, key, after, limit) }
  subscribe (listener: ChangeListener): () => void { return this.#subscribers.add(listener) }

  /** Transactions of one node run one at a time (a node does not race itself); nodes race in etcd. */
  transact<T> (fn: (draft: Draft) => T): Promise<T> {
    return this.#queue.run(async () => {
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
        // The writes first: deciding whether an index entry empties reads it (a compare too).
        const writes = this.#writes(changes, draft)
        const compare = this.#compares(draft.reads, at)
        const seq = ++this.#seq
        compare.push({ key: this.#marker, target: MOD, result: EQUAL, mod_revision: String(this.#markerMod) })
        writes.push({ request_put: { key: this.#marker, value: Buffer.from(String(seq)) } })
        if (writes.length > this.#maxTxnOps) {
          throw conflict(`the change touches ${writes.length} keys, more than one etcd transaction takes (--max-txn-ops ${this.#maxTxnOps}); make it in smaller steps`)
        }
        const outcome = await this.#commit(compare, writes, seq)
        if (outcome === 'lost') {
          if (attempt >= this.#maxAttempts) throw conflict(`the change lost ${attempt} races with other nodes' changes to the same resources; try again`)
          continue
        }
        if (outcome.applied) {
          // Committed. Normally the watch brings it within milliseconds; if etcd went away right
          // after, answer anyway after a while (the view applies it when the watch is back).
          await this.#reach(outcome.revision, APPLY_WAIT_MS)
          if (this.#revision < outcome.revision) this.#onWarning(new Error(`committed revision ${outcome.revision} not seen by the watch within ${APPLY_WAIT_MS} ms`))
          return result
        }
        // Known not applied (its answer was lost, and the fence moved the marker on): run again.
        if (attempt >= this.#maxAttempts) throw new Error(`state store: etcd kept failing; the change was not applied (${attempt} attempts)`)
      }
    })
  }

  close (): Promise<void> {
    return this.#queue.close(async () => {
      this.#closed = true
      clearTimeout(this.#resyncTimer)
      const watcher = this.#watcher
      this.#watcher = undefined
      if (watcher !== undefined) await watcher.cancel().catch(() => {})
      for (const w of this.#waiters) w.resolve()
      this.#waiters = []
      // The marker is of no use to anyone once this store is gone (a killed node leaves one empty key).
      // Bounded: a stop must not wait on an unreachable etcd (etcd3 retries each call).
      if (this.#markerMod !== 0n) {
        let timer: NodeJS.Timeout | undefined
        await Promise.race([
          this.#client.delete().key(this.#marker).exec().catch(() => {}),
          new Promise((resolve) => { timer = setTimeout(resolve, 1000) })
        ])
        clearTimeout(timer)
      }
    })
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

  /**
   * Send the txn and find out what became of it: applied (at which revision), lost a race
   * (`'lost'`, after the view caught up with the winner), or known not applied.
   */
  async #commit (compare: ICompare[], success: IRequestOp[], seq: number): Promise<Outcome | 'lost'> {
    let res: ITxnResponse
    try {
      res = await this.#client.kv.txn({ compare, success, failure: this.#probes(compare) })
    } catch (err) {
      // No answer: the txn may have been applied, or may still be (a proposal outlives its call).
      this.#onWarning(new Error(`txn ${seq}: no answer from etcd (${(err as Error).message}); asking what became of it`))
      const outcome = await this.#resolve(seq, err as Error)
      // Not applied, and not for want of a connection (a refusal by etcd): say so.
      if (!outcome.applied && !isRecoverableError(err as Error)) throw err
      if (!outcome.applied) await new Promise((resolve) => setTimeout(resolve, 100))
      return outcome
    }
    if (res.succeeded) {
      this.#markerMod = BigInt(res.header.revision)
      return { applied: true, revision: this.#markerMod }
    }
    // The compares failed. etcd3 retries a call whose answer was lost: if an earlier try of this
    // very txn committed, the marker holds its number and the compares fail because of it.
    const marker = res.responses[0]?.response_range?.kvs?.[0]
    const markerMod = BigInt(marker?.mod_revision ?? 0)
    if (marker !== undefined && marker.value.toString() === String(seq)) {
      this.#onWarning(new Error(`txn ${seq}: committed at revision ${markerMod} by an earlier try whose answer was lost`))
      this.#markerMod = markerMod
      return { applied: true, revision: markerMod }
    }
    if (markerMod !== this.#markerMod) {
      // Only this store writes its marker; another value means an earlier unresolved txn of
      // this store did apply after all (its events came through the watch) or someone else wrote it.
      this.#onWarning(new Error(`marker ${this.#marker.toString()} at revision ${markerMod}, expected ${this.#markerMod}`))
      this.#markerMod = markerMod
    }
    // Wait until the view has the change that beat us, then run the rules again on it.
    await this.#reach(this.#newest(res), APPLY_WAIT_MS)
    return 'lost'
  }

  /**
   * The answer of txn `seq` was lost. Move the marker on unless the txn already did (`mod ==
   * M` -> put): if that succeeds the txn never applied and never will (it compared `mod == M`);
   * if it fails, the marker shows whether it was this txn. Asked again until etcd answers.
   */
  async #resolve (seq: number, cause: Error): Promise<Outcome> {
    const deadline = Date.now() + RESOLVE_MS
    for (;;) {
      try {
        const res = await this.#client.kv.txn({
          compare: [{ key: this.#marker, target: MOD, result: EQUAL, mod_revision: String(this.#markerMod) }],
          success: [{ request_put: { key: this.#marker, value: Buffer.from(`${seq} fenced`) } }],
          failure: [{ request_range: { key: this.#marker } }]
        })
        if (res.succeeded) {
          this.#markerMod = BigInt(res.header.revision)
          return { applied: false }
        }
        const marker = res.responses[0]?.response_range?.kvs?.[0]
        const markerMod = BigInt(marker?.mod_revision ?? 0)
        const before = this.#markerMod
        this.#markerMod = markerMod
        if (marker !== undefined && marker.value.toString() === String(seq)) return { applied: true, revision: markerMod }
        // An earlier try of this fence applied (etcd3 retried it): not applied either.
        if (marker !== undefined && marker.value.toString() === `${seq} fenced`) return { applied: false }
        // Moved on by something other than this txn: this txn compared `mod == M` and cannot apply.
        this.#onWarning(new Error(`marker ${this.#marker.toString()} at revision ${markerMod}, expected ${before}`))
        return { applied: false }
      } catch (err) {
        if (this.#closed || Date.now() > deadline) {
          throw new Error(`state store: etcd did not answer for ${RESOLVE_MS / 1000} s after a commit whose answer was lost (${cause.message}); the change may have been applied: read it back (${(err as Error).message})`)
        }
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
    }
  }

  /** What the draft read, as compares against the view's revision `at`. */
  #compares (reads: ReadonlySet<string>, at: bigint): ICompare[] {
    const resources: ICompare[] = []
    /** Version keys of index entries -> whether the entry had ids at `at` (then its key must still exist). */
    const entries = new Map<string, boolean>()
    /** Kinds whose every resource counts as read (a full scan, or an index without version keys). */
    const scanned = new Set<Kind>()
    for (const read of reads) {
      const slash = read.indexOf('/')
      const what = read.slice(0, slash)
      const rest = read.slice(slash + 1)
      if (what === 'index') {
        const cut = rest.indexOf('/')
        const index = rest.slice(0, cut) as IndexName
        const key = rest.slice(cut + 1)
        const unversioned = UNVERSIONED.get(index)
        if (unversioned !== undefined) scanned.add(unversioned)
        else entries.set(this.#indexKey(index, key), this.#view.count(index, key) > 0)
      } else if (rest === '*') {
        entries.set(this.#indexKey('all', what), false)
      } else {
        const key = this.#resourceKey(what as Kind, rest)
        const mod = this.#mods.get(key)
        resources.push(mod === undefined
          ? { key: Buffer.from(key), target: MOD, result: LESS, mod_revision: String(at + 1n) }
          : { key: Buffer.from(key), target: MOD, result: EQUAL, mod_revision: String(mod) })
      }
    }
    const notSince = (key: Buffer, rangeEnd?: Buffer): ICompare => ({ key, range_end: rangeEnd, target: MOD, result: LESS, mod_revision: String(at + 1n) })
    const exists = (key: Buffer): ICompare => ({ key, target: CREATE, result: GREATER, create_revision: '0' })
    const ranges: ICompare[] = []
    for (const kind of scanned) {
      // Every resource of the kind unchanged since `at`; deletes are caught by idx/all/<kind>.
      const range = Buffer.from(`${this.#prefix}state/${KINDS[kind]}/`)
      ranges.push(notSince(range, prefixEnd(range)))
      entries.set(this.#indexKey('all', kind), false)
    }
    let n = resources.length + ranges.length
    for (const hadIds of entries.values()) n += hadIds ? 2 : 1
    if (n <= COARSE_AT) {
      const out = [...resources, ...ranges]
      for (const [key, hadIds] of entries) {
        const k = Buffer.from(key)
        out.push(notSince(k))
        if (hadIds) out.push(exists(k))
      }
      return out
    }
    // Too many for one txn (a scan of a large subnet for a free IP): compare whole ranges
    // instead, stricter (any change since `at` is a conflict) but still exact. A deleted
    // resource, and a deleted index key, are caught by idx/all/<kind>, which each such txn rewrites.
    const idx = Buffer.from(`${this.#prefix}idx/`)
    const compares = [notSince(idx, prefixEnd(idx))]
    if (resources.length + ranges.length > COARSE_AT - 1) {
      const state = Buffer.from(`${this.#prefix}state/`)
      compares.push(notSince(state, prefixEnd(state)))
    } else {
      compares.push(...resources, ...ranges)
    }
    return compares
  }

  /**
   * The puts and deletes of the changes, plus the version key of every index entry they change:
   * put while the entry has ids after the change, deleted when it has none (so the keys do not
   * grow with every name and IP ever used). Reading the entry's count makes it a compare.
   */
  #writes (changes: readonly Change[], draft: Draft): IRequestOp[] {
    const ops: IRequestOp[] = []
    const touched = new Map<string, readonly [IndexName, string, Kind]>()
    const all = new Set<Kind>()
    for (const c of changes) {
      const key = Buffer.from(this.#resourceKey(c.kind, c.id))
      ops.push(c.after === undefined
        ? { request_delete_range: { key } }
        : { request_put: { key, value: Buffer.from(JSON.stringify(c.after)) } })
      if (c.before === undefined || c.after === undefined) all.add(c.kind)
      const fns = (c.kind === 'service' ? serviceIndexes : endpointIndexes) as ReadonlyArray<readonly [IndexName, (v: EndpointService | Endpoint) => readonly string[]]>
      for (const [index, keysOf] of fns) {
        const before = new Set(c.before === undefined ? [] : keysOf(c.before))
        const after = new Set(c.after === undefined ? [] : keysOf(c.after))
        for (const k of before) if (!after.has(k)) touched.set(this.#indexKey(index, k), [index, k, c.kind])
        for (const k of after) if (!before.has(k)) touched.set(this.#indexKey(index, k), [index, k, c.kind])
      }
    }
    for (const [key, [index, k, kind]] of touched) {
      if (draft.count(index, k) > 0) {
        ops.push({ request_put: { key: Buffer.from(key), value: Buffer.alloc(0) } })
      } else {
        ops.push({ request_delete_range: { key: Buffer.from(key) } })
        all.add(kind)
      }
    }
    for (const kind of all) ops.push({ request_put: { key: Buffer.from(this.#indexKey('all', kind)), value: Buffer.alloc(0) } })
    return ops
  }

  /**
   * The failure branch reads this store's marker first (did an earlier try of this txn commit?),
   * then the compared keys and idx/all/*: their newest revision is one the watch will deliver.
   */
  #probes (compare: readonly ICompare[]): IRequestOp[] {
    const keys: Array<{ key: Buffer, range_end?: Buffer | undefined }> = [
      { key: Buffer.from(this.#indexKey('all', 'service')) },
      { key: Buffer.from(this.#indexKey('all', 'endpoint')) },
      ...compare.map((c) => ({ key: c.key as Buffer, range_end: c.range_end })).filter((c) => !c.key.equals(this.#marker))
    ]
    const seen = new Set<string>()
    const unique = keys.filter(({ key, range_end: end }) => {
      const id = `${key.toString('hex')}-${end?.toString('hex') ?? ''}`
      if (seen.has(id)) return false
      seen.add(id)
      return true
    })
    return [{ request_range: { key: this.#marker } }, ...unique.slice(0, this.#maxTxnOps - 1).map(({ key, range_end: rangeEnd }) => ({
      request_range: rangeEnd === undefined
        ? { key, keys_only: true }
        : { key, range_end: rangeEnd, keys_only: true, limit: 1, sort_order: DESCEND, sort_target: BY_MOD }
    }))]
  }

  /** The newest mod revision among the failure branch's reads but the marker: a txn of a store, which the watch delivers. */
  #newest (res: ITxnResponse): bigint {
    let newest = 0n
    for (const r of res.responses.slice(1)) {
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
    const revision = await this.#snapshot(first)
    if (revision === undefined) return
    const watcher = await this.#client.watch().prefix(prefix).startRevision((revision + 1n).toString()).create()
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

  /**
   * Range of state/ at revision R; the difference to the view is applied as one batch (at
   * start: loaded, no events). A view already at R or later is left alone. Resolves with the
   * revision the view is at, undefined once closed.
   */
  async #snapshot (first: boolean): Promise<bigint | undefined> {
    const res = await this.#client.getAll().prefix(`${this.#prefix}state/`).exec()
    if (this.#closed) return undefined
    const revision = BigInt(res.header.revision)
    if (revision <= this.#revision) return this.#revision
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
    this.#advance(revision)
    return revision
  }

  /**
   * Wait until the view has `revision`. The watch brings it within milliseconds, unless it is
   * reconnecting (etcd3 backs off up to seconds after failed tries): then a range read catches
   * up, and the watch's late events up to that revision are skipped.
   */
  async #reach (revision: bigint, watchMs: number): Promise<void> {
    await this.#caughtUp(revision, watchMs)
    if (this.#revision >= revision || this.#closed) return
    try {
      await this.#snapshot(false)
    } catch (err) {
      this.#onWarning(new Error(`catching up with revision ${revision} by a read failed: ${(err as Error).message}`))
    }
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
      if (mod <= this.#revision) continue // already applied from a range read (#reach)
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
