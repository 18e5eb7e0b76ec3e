// A local copy of every key under one etcd prefix: a snapshot (range at revision R), then a
// watch from R + 1, so that no change between the two is missed (the "list then watch" of
// Kubernetes informers). Emits 'change' (name, entry | undefined, previous | undefined) for each
// put or delete, where `name` is the key without the prefix. If the watch dies (compaction, cancel) it takes a new
// snapshot and reports the difference as changes.
import { EventEmitter } from 'node:events'
import type { Etcd3, IKeyValue, Watcher } from 'etcd3'
import { nextRevision } from './etcd-client.ts'

export interface MirroredKey {
  value: string
  /** Lease id as etcd's decimal string; '0' for none. */
  lease: string
  createRevision: string
  modRevision: string
}

const entryOf = (kv: IKeyValue): MirroredKey => ({
  value: kv.value.toString(),
  lease: String(kv.lease),
  createRevision: String(kv.create_revision),
  modRevision: String(kv.mod_revision)
})

export class PrefixMirror extends EventEmitter {
  readonly #client: Etcd3
  readonly #prefix: string
  readonly #entries = new Map<string, MirroredKey>()
  #watcher: Watcher | undefined
  #closed = false
  #resyncTimer: NodeJS.Timeout | undefined
  #revision = 0n

  constructor (client: Etcd3, prefix: string) {
    super()
    this.#client = client
    this.#prefix = prefix
  }

  get entries (): ReadonlyMap<string, MirroredKey> { return this.#entries }
  /** The etcd revision this copy has caught up with (at least). */
  get revision (): bigint { return this.#revision }

  async start (): Promise<void> { await this.#sync() }

  async #sync (): Promise<void> {
    const res = await this.#client.getAll().prefix(this.#prefix).exec()
    if (this.#closed) return
    const seen = new Set<string>()
    for (const kv of res.kvs) {
      const name = kv.key.toString().slice(this.#prefix.length)
      seen.add(name)
      this.#set(name, entryOf(kv))
    }
    for (const name of [...this.#entries.keys()]) if (!seen.has(name)) this.#delete(name)
    this.#seen(res.header.revision)
    const watcher = await this.#client.watch().prefix(this.#prefix).startRevision(nextRevision(res.header.revision)).create()
    if (this.#closed) { await watcher.cancel(); return }
    this.#watcher = watcher
    watcher.on('put', (kv) => {
      this.#seen(kv.mod_revision)
      this.#set(kv.key.toString().slice(this.#prefix.length), entryOf(kv))
    })
    watcher.on('delete', (kv) => {
      this.#seen(kv.mod_revision) // a deleted key's mod_revision is the revision of the delete
      this.#delete(kv.key.toString().slice(this.#prefix.length))
    })
    // etcd3 reconnects a watch by itself from the last revision it saw; an 'error' means the
    // watch is gone for good (e.g. its revision was compacted): start again from a snapshot.
    watcher.on('error', (err: Error) => {
      if (this.#closed || this.#watcher !== watcher) return
      this.emit('warning', err)
      this.#watcher = undefined
      void watcher.cancel().catch(() => {})
      this.#scheduleResync()
    })
  }

  #scheduleResync (): void {
    if (this.#closed || this.#resyncTimer !== undefined) return
    this.#resyncTimer = setTimeout(() => {
      this.#resyncTimer = undefined
      this.#sync().catch((err: unknown) => {
        this.emit('warning', err)
        this.#scheduleResync()
      })
    }, 500)
  }

  #seen (revision: string | number): void {
    const r = BigInt(revision)
    if (r > this.#revision) this.#revision = r
  }

  #set (name: string, entry: MirroredKey): void {
    const old = this.#entries.get(name)
    if (old !== undefined && old.modRevision === entry.modRevision) return
    this.#entries.set(name, entry)
    this.emit('change', name, entry, old)
  }

  #delete (name: string): void {
    const old = this.#entries.get(name)
    if (old === undefined) return
    this.#entries.delete(name)
    this.emit('change', name, undefined, old)
  }

  async close (): Promise<void> {
    this.#closed = true
    clearTimeout(this.#resyncTimer)
    const watcher = this.#watcher
    this.#watcher = undefined
    if (watcher !== undefined) await watcher.cancel().catch(() => {})
  }
}
