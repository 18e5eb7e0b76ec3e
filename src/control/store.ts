// The store's contract (SPEC §8, §11), shared by every implementation: the SQLite one of a
// single node (store-sqlite.ts) and, later, one on etcd for a cluster.
//
// - Reads are synchronous, from an in-memory view (`state`, plus indexes), so the data plane,
//   DNS and the API never wait for a disk or a network to read.
// - Writes go through `transact(fn)`: `fn` runs synchronously on a draft that records every key
//   it read and wrote (an etcd implementation turns the reads into compares and retries `fn`
//   on a conflict); the store then makes the writes durable, applies them to the view, and
//   only then tells its subscribers, in one batch per transaction, what changed (kind, action,
//   id, before, after). A transaction that throws, or whose write fails, changes nothing.
// - Subscribers are the one path by which changes reach the health checker, the data plane and
//   DNS (and, later, the workers): each reacts to the resources an event names, never by
//   rescanning the state, so a change costs the same with ten resources or ten thousand.
import { StateCorruptError } from '../errors.ts'
import { deepFreeze, type ChangeEvent, type Endpoint, type EndpointService, type State } from './model.ts'

/** Secondary indexes of the view; each maps a key to the ids (ascending) whose resource has it. */
export interface IndexKeys {
  /** Services by `ownerAccountId`. */
  readonly serviceOwner: string
  /** Services by each of `allowedAccounts` (including `*`). */
  readonly serviceAllowed: string
  /** Services by `name` and by `serviceName`. */
  readonly serviceName: string
  /** Endpoints by `ownerAccountId`. */
  readonly endpointOwner: string
  /** Endpoints by `serviceId`. */
  readonly endpointService: string
  /** Endpoints by `ip`. */
  readonly endpointIp: string
}
export type IndexName = keyof IndexKeys

const serviceIndexes = {
  serviceOwner: (s: EndpointService) => [s.ownerAccountId],
  serviceAllowed: (s: EndpointService) => s.allowedAccounts,
  serviceName: (s: EndpointService) => (s.name === undefined || s.name === s.serviceName ? [s.serviceName] : [s.name, s.serviceName])
} as const
const endpointIndexes = {
  endpointOwner: (e: Endpoint) => [e.ownerAccountId],
  endpointService: (e: Endpoint) => [e.serviceId],
  endpointIp: (e: Endpoint) => [e.ip]
} as const

/** Synchronous reads: what the data plane, DNS and the API use. */
export interface StoreView {
  /** Resources by id. Live: it follows commits; the resources in it are frozen and replaced on change. */
  readonly state: State
  /** How many resources the index holds under `key`. */
  count (index: IndexName, key: string): number
  /** Up to `limit` ids under `key`, ascending, each greater than `after` (a page of a list). */
  page (index: IndexName, key: string, after: string | undefined, limit: number): string[]
}

/** One transaction's view: reads see its own writes; every read and write is recorded. */
export interface Draft {
  /** Resources by id: reading records the key, assigning or `delete` writes it. Resources are frozen: replace, never mutate. */
  readonly services: Record<string, EndpointService>
  readonly endpoints: Record<string, Endpoint>
  count (index: IndexName, key: string): number
  /** Every id under `key`, ascending (meant for small sets: the endpoints of one service). */
  ids (index: IndexName, key: string): string[]
  /** `service/<id>`, `endpoint/<id>`, `index/<name>/<key>` and `service/*` for a full scan. */
  readonly reads: ReadonlySet<string>
}

export type ChangeListener = (events: readonly ChangeEvent[]) => void

export interface Store extends StoreView {
  /**
   * Run `fn` on a draft. When it wrote something, the writes become durable, then visible in
   * `state`, then subscribers hear them; the promise resolves with `fn`'s result after that.
   * When `fn` throws or the write fails, nothing changes and the promise rejects.
   */
  transact<T> (fn: (draft: Draft) => T): Promise<T>
  /**
   * At most this many resources changed per transaction (etcd: `--max-txn-ops`); undefined: no
   * bound. A rule that may change many resources at once makes them in steps of this many.
   */
  readonly maxWritesPerTransaction?: number
  /** Hear every committed change, one batch per transaction; returns the unsubscribe. */
  subscribe (listener: ChangeListener): () => void
  /** Let queued transactions finish, then release the storage. Safe twice. */
  close (): Promise<void>
}

// ---- the in-memory view, shared by implementations ----

/** Ids kept sorted: O(log n) lookup, a page in O(log n + limit); insert and delete move memory, not objects. */
class SortedIds {
  readonly #ids: string[] = []

  get size (): number { return this.#ids.length }

  #find (id: string): number {
    let lo = 0
    let hi = this.#ids.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((this.#ids[mid] as string) < id) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  add (id: string): void {
    const i = this.#find(id)
    if (this.#ids[i] !== id) this.#ids.splice(i, 0, id)
  }

  delete (id: string): void {
    const i = this.#find(id)
    if (this.#ids[i] === id) this.#ids.splice(i, 1)
  }

  after (cursor: string | undefined, limit: number): string[] {
    let i = cursor === undefined ? 0 : this.#find(cursor)
    if (cursor !== undefined && this.#ids[i] === cursor) i++
    return this.#ids.slice(i, i + limit)
  }

  all (): readonly string[] { return this.#ids }
}

type KeyFns<T> = Readonly<Record<string, (value: T) => readonly string[]>>

class Table<T extends { readonly id: string }> {
  /** A null-prototype object, so that an id such as `__proto__` from a URL finds nothing. */
  readonly rows: Record<string, T> = Object.create(null) as Record<string, T>
  readonly #keyFns: KeyFns<T>
  readonly #indexes = new Map<string, Map<string, SortedIds>>()

  constructor (keyFns: KeyFns<T>) {
    this.#keyFns = keyFns
    for (const name of Object.keys(keyFns)) this.#indexes.set(name, new Map())
  }

  has (index: string): boolean { return this.#indexes.has(index) }

  keysOf (index: string, value: T | undefined): readonly string[] {
    return value === undefined ? [] : (this.#keyFns[index] as (v: T) => readonly string[])(value)
  }

  ids (index: string, key: string): SortedIds | undefined {
    return this.#indexes.get(index)?.get(key)
  }

  put (id: string, value: T | undefined): void {
    const before = this.rows[id]
    for (const [name, map] of this.#indexes) {
      const fn = this.#keyFns[name] as (v: T) => readonly string[]
      if (before !== undefined) {
        for (const key of fn(before)) {
          const ids = map.get(key)
          ids?.delete(id)
          if (ids !== undefined && ids.size === 0) map.delete(key)
        }
      }
      if (value !== undefined) {
        for (const key of fn(value)) {
          let ids = map.get(key)
          if (ids === undefined) map.set(key, ids = new SortedIds())
          ids.add(id)
        }
      }
    }
    if (value === undefined) delete this.rows[id]
    else this.rows[id] = value
  }
}

/** A write of one resource, as a transaction produced it. */
export type Change =
  | { readonly kind: 'service', readonly id: string, readonly before: EndpointService | undefined, readonly after: EndpointService | undefined }
  | { readonly kind: 'endpoint', readonly id: string, readonly before: Endpoint | undefined, readonly after: Endpoint | undefined }

/** The state plus its indexes; implementations feed it committed changes (SQLite: its own; etcd: the watch). */
export class MemoryView implements StoreView {
  readonly #services = new Table<EndpointService>(serviceIndexes)
  readonly #endpoints = new Table<Endpoint>(endpointIndexes)
  readonly state: State = { services: this.#services.rows, endpoints: this.#endpoints.rows }

  /** Load one resource at start (no event). */
  load (kind: 'service' | 'endpoint', value: EndpointService | Endpoint): void {
    if (kind === 'service') this.#services.put(value.id, deepFreeze(value as EndpointService))
    else this.#endpoints.put(value.id, deepFreeze(value as Endpoint))
  }

  table (index: IndexName): Table<EndpointService> | Table<Endpoint> {
    return this.#services.has(index) ? this.#services : this.#endpoints
  }

  count (index: IndexName, key: string): number {
    return this.table(index).ids(index, key)?.size ?? 0
  }

  page (index: IndexName, key: string, after: string | undefined, limit: number): string[] {
    return this.table(index).ids(index, key)?.after(after, limit) ?? []
  }

  /** Every id under `key` (for the draft, which merges its own writes in). */
  allIds (index: IndexName, key: string): readonly string[] {
    return this.table(index).ids(index, key)?.all() ?? []
  }

  draft (): TrackedDraft {
    return new TrackedDraft(this)
  }

  /** Apply committed changes and return their events (services first: consumers build balancers before endpoints). */
  apply (changes: readonly Change[]): ChangeEvent[] {
    const events: ChangeEvent[] = []
    for (const c of changes) {
      if (c.kind === 'service') this.#services.put(c.id, c.after)
      else this.#endpoints.put(c.id, c.after)
      const action = c.before === undefined ? 'created' : c.after === undefined ? 'deleted' : 'updated'
      events.push({ ...c, action } as ChangeEvent)
    }
    return events
  }
}

/** The draft of one transaction: an overlay of writes over the view, with every read recorded. */
export class TrackedDraft implements Draft {
  readonly #view: MemoryView
  readonly #services = new Map<string, EndpointService | undefined>()
  readonly #endpoints = new Map<string, Endpoint | undefined>()
  readonly #reads = new Set<string>()
  #open = true
  readonly services: Record<string, EndpointService>
  readonly endpoints: Record<string, Endpoint>

  constructor (view: MemoryView) {
    this.#view = view
    this.services = this.#records('service', view.state.services as Record<string, EndpointService>, this.#services)
    this.endpoints = this.#records('endpoint', view.state.endpoints as Record<string, Endpoint>, this.#endpoints)
  }

  get reads (): ReadonlySet<string> { return this.#reads }

  /** No use after the transaction's function returned (a write then would be lost). */
  close (): void { this.#open = false }

  /**
   * A record-like face for `draft.services[id]`, `draft.services[id] = x`, `delete ...`: the
   * control plane's rules read like plain object access, and the store still sees each key.
   */
  #records<T extends { readonly id: string }> (kind: string, base: Record<string, T>, overlay: Map<string, T | undefined>): Record<string, T> {
    const read = (key: string): T | undefined => {
      this.#reads.add(`${kind}/${key}`)
      return overlay.has(key) ? overlay.get(key) : base[key]
    }
    const write = (key: string, value: T | undefined): boolean => {
      if (!this.#open) throw new Error(`store: draft used after its transaction ended (${kind}/${key})`)
      if (value !== undefined && (value === null || typeof value !== 'object' || value.id !== key)) {
        throw new TypeError(`store: ${kind}/${key} must be a resource with id ${key}`)
      }
      overlay.set(key, value)
      return true
    }
    return new Proxy(Object.create(null) as Record<string, T>, {
      get: (_t, key) => (typeof key === 'string' ? read(key) : undefined),
      has: (_t, key) => typeof key === 'string' && read(key) !== undefined,
      set: (_t, key, value) => typeof key === 'string' && write(key, value as T),
      deleteProperty: (_t, key) => typeof key === 'string' && write(key, undefined),
      ownKeys: () => {
        // A full scan: recorded as such (an etcd implementation compares the whole range).
        this.#reads.add(`${kind}/*`)
        const keys = new Set(Object.keys(base))
        for (const [key, value] of overlay) {
          if (value === undefined) keys.delete(key)
          else keys.add(key)
        }
        return [...keys]
      },
      getOwnPropertyDescriptor: (_t, key) => {
        const value = typeof key === 'string' ? (overlay.has(key) ? overlay.get(key) : base[key]) : undefined
        return value === undefined ? undefined : { value, writable: true, enumerable: true, configurable: true }
      }
    })
  }

  #overlay (index: IndexName): Map<string, EndpointService | Endpoint | undefined> {
    return (this.#view.table(index) === this.#view.table('serviceOwner') ? this.#services : this.#endpoints) as Map<string, EndpointService | Endpoint | undefined>
  }

  ids (index: IndexName, key: string): string[] {
    this.#reads.add(`index/${index}/${key}`)
    const table = this.#view.table(index) as Table<EndpointService | Endpoint>
    const out = new Set(this.#view.allIds(index, key))
    for (const [id, value] of this.#overlay(index)) {
      if (table.keysOf(index, value).includes(key)) out.add(id)
      else out.delete(id)
    }
    return [...out].sort()
  }

  count (index: IndexName, key: string): number {
    this.#reads.add(`index/${index}/${key}`)
    const table = this.#view.table(index) as Table<EndpointService | Endpoint>
    let n = this.#view.count(index, key)
    for (const [id, value] of this.#overlay(index)) {
      const had = table.keysOf(index, table.rows[id]).includes(key)
      const has = table.keysOf(index, value).includes(key)
      n += Number(has) - Number(had)
    }
    return n
  }

  /** The writes that change something (a resource put back as it was is no change), frozen. */
  changes (): Change[] {
    const out: Change[] = []
    const base = this.#view.state
    for (const [id, after] of this.#services) {
      const before = base.services[id]
      if (after !== before) out.push({ kind: 'service', id, before, after: after === undefined ? undefined : deepFreeze(after) })
    }
    for (const [id, after] of this.#endpoints) {
      const before = base.endpoints[id]
      if (after !== before) out.push({ kind: 'endpoint', id, before, after: after === undefined ? undefined : deepFreeze(after) })
    }
    return out
  }
}

/** Delivers one batch to every subscriber; one that throws is reported and the others still hear it. */
export class Subscribers {
  readonly #listeners = new Set<ChangeListener>()
  readonly #onError: (err: unknown) => void

  constructor (onError: (err: unknown) => void) {
    this.#onError = onError
  }

  add (listener: ChangeListener): () => void {
    this.#listeners.add(listener)
    return () => { this.#listeners.delete(listener) }
  }

  emit (events: readonly ChangeEvent[]): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(events)
      } catch (err) {
        this.#onError(err)
      }
    }
  }
}

/**
 * A store's transactions run one at a time, in the order they were asked for: the draft of the
 * next one is taken only after the previous one is applied (a node never races itself). `close`
 * lets what is queued finish, then runs `finish` once; a task asked for after that is refused.
 */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve()
  #closing: Promise<void> | undefined

  /** True from the first `close` on. */
  get closing (): boolean { return this.#closing !== undefined }

  run<T> (task: () => Promise<T>): Promise<T> {
    if (this.#closing !== undefined) return Promise.reject(new Error('state store is closed'))
    const next = this.#tail.then(task, task)
    this.#tail = next.catch(() => {})
    return next
  }

  close (finish: () => Promise<void>): Promise<void> {
    this.#closing ??= this.#tail.then(finish)
    return this.#closing
  }
}

// ---- checks of stored resources (the JSON import and the database rows) ----

/** A stored service or endpoint must at least have the fields every reader relies on. */
export function checkResource (where: string, kind: 'service' | 'endpoint', id: string, value: unknown): EndpointService | Endpoint {
  const prefix = kind === 'service' ? 'vpcesvc-' : 'vpce-'
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new StateCorruptError(where, `${kind} ${id} is not an object`)
  const v = value as Record<string, unknown>
  if (!id.startsWith(prefix) || v.id !== id) throw new StateCorruptError(where, `${kind} ${id}: id does not match its key`)
  if (kind === 'endpoint') {
    if (typeof v.serviceId !== 'string' || typeof v.ip !== 'string' || typeof v.status !== 'string' || typeof v.ownerAccountId !== 'string') {
      throw new StateCorruptError(where, `endpoint ${id} lacks serviceId, ip, status or ownerAccountId`)
    }
  } else if (!Array.isArray(v.portMappings) || !Array.isArray(v.backends) || typeof v.healthCheck !== 'object' ||
    !Array.isArray(v.allowedAccounts) || typeof v.ownerAccountId !== 'string' || typeof v.serviceName !== 'string') {
    throw new StateCorruptError(where, `service ${id} lacks portMappings, backends, healthCheck, allowedAccounts, ownerAccountId or serviceName`)
  }
  return value as EndpointService | Endpoint
}
