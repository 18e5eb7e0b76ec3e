// The store of a single node (SPEC §8, §11): `stateDir/state.db`, SQLite (node:sqlite, built
// into Node 24) in WAL mode, one row per resource, one transaction per API change.
//
// At start the opening thread checks the file (a corrupt one stops the start and is never
// written), imports a `state.json` of the JSON store once (then renamed
// `state.json.imported`), and loads every row into the in-memory view (store.ts). From then on
// reads never touch the file; each transaction's rows go to the writer thread
// (store-sqlite-writer.ts), whose COMMIT is durable when it answers (store-sqlite-schema.ts
// says why), and only then does the view change and do subscribers hear of it.
import { existsSync } from 'node:fs'
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises'
import { DatabaseSync } from 'node:sqlite'
import { extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { StateCorruptError } from '../errors.ts'
import type { ChangeEvent, Endpoint, EndpointService, State } from './model.ts'
import {
  checkResource, MemoryView, SerialQueue, Subscribers, type Change, type ChangeListener, type Draft, type IndexName, type Store
} from './store.ts'
import { applyPragmas, DB_FILE, FORMAT_VERSION, SCHEMA } from './store-sqlite-schema.ts'
import type { WriteReply, WriteRequest } from './store-sqlite-writer.ts'

/** The JSON store's file (format 1), imported once. */
export const STATE_FILE = 'state.json'
const JSON_FORMAT_VERSION = 1
const SQLITE_CORRUPT = 11
const SQLITE_NOTADB = 26

export interface SqliteStoreOptions {
  /** A subscriber threw: the change is committed anyway; say so somewhere. */
  readonly onListenerError?: (err: unknown) => void
  /** Cap the database at this many pages (4 KiB each); a write past it fails like a full disk. */
  readonly maxPageCount?: number
  /** The writer thread died: every later change is refused (500) until a restart; say so once. */
  readonly onWriterFailed?: (err: Error) => void
}

interface Pending {
  resolve: () => void
  reject: (err: Error) => void
}

export class SqliteStore implements Store {
  readonly file: string
  readonly #view: MemoryView
  readonly #subscribers: Subscribers
  readonly #worker: Worker
  readonly #pending = new Map<number, Pending>()
  readonly #onWriterFailed: ((err: Error) => void) | undefined
  readonly #queue = new SerialQueue()
  #seq = 0
  #broken: Error | undefined
  #closed = false

  private constructor (file: string, view: MemoryView, worker: Worker, options: SqliteStoreOptions) {
    this.file = file
    this.#view = view
    this.#worker = worker
    this.#onWriterFailed = options.onWriterFailed
    this.#subscribers = new Subscribers(options.onListenerError ?? ((err) => { process.emitWarning(`store subscriber failed: ${String(err)}`) }))
    worker.on('message', (reply: WriteReply) => this.#onReply(reply))
    worker.on('error', (err) => this.#fail(err))
    worker.on('exit', (code) => {
      if (!this.#closed) this.#fail(new Error(`state store writer exited (code ${code})`))
    })
    worker.unref()
  }

  /** Open (creating the directory and the database if needed) and load the state. */
  static async open (dir: string, options: SqliteStoreOptions = {}): Promise<SqliteStore> {
    await mkdir(dir, { recursive: true })
    const file = join(dir, DB_FILE)
    const jsonFile = join(dir, STATE_FILE)
    const imported = await readJsonState(jsonFile)
    const view = new MemoryView()
    const created = !existsSync(file)
    const db = openDatabase(file)
    try {
      // A new database's directory entry must survive a power cut too, before anything is acknowledged.
      if (created) await syncDir(dir)
      if (imported !== undefined) await importJson(db, dir, jsonFile, imported)
      loadRows(db, file, view)
    } finally {
      db.close()
    }
    const worker = await startWriter(file, options.maxPageCount)
    return new SqliteStore(file, view, worker, options)
  }

  get state (): State {
    return this.#view.state
  }

  count (index: IndexName, key: string): number {
    return this.#view.count(index, key)
  }

  page (index: IndexName, key: string, after: string | undefined, limit: number): string[] {
    return this.#view.page(index, key, after, limit)
  }

  subscribe (listener: ChangeListener): () => void {
    return this.#subscribers.add(listener)
  }

  transact<T> (fn: (draft: Draft) => T): Promise<T> {
    return this.#queue.run(async () => {
      if (this.#broken !== undefined) throw new Error(`state store cannot write: ${this.#broken.message}`)
      const draft = this.#view.draft()
      let result: T
      try {
        result = fn(draft)
      } finally {
        draft.close()
      }
      const changes = draft.changes()
      if (changes.length === 0) return result
      await this.#write(changes)
      const events: ChangeEvent[] = this.#view.apply(changes)
      this.#subscribers.emit(events)
      return result
    })
  }

  close (): Promise<void> {
    return this.#queue.close(async () => {
      this.#closed = true
      if (this.#broken !== undefined) return
      const exited = new Promise<void>((resolve) => this.#worker.once('exit', () => resolve()))
      this.#worker.ref() // until it has closed the database and exited
      this.#worker.postMessage('close')
      await exited
    })
  }

  #write (changes: readonly Change[]): Promise<void> {
    const seq = ++this.#seq
    const rows = changes.map((c) => [c.kind, c.id, c.after === undefined ? null : JSON.stringify(c.after)] as const)
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(seq, { resolve, reject })
      this.#worker.ref()
      this.#worker.postMessage({ seq, rows } satisfies WriteRequest)
    })
  }

  #onReply (reply: WriteReply | 'ready'): void {
    if (reply === 'ready') return
    const pending = this.#pending.get(reply.seq)
    if (pending === undefined) return
    this.#pending.delete(reply.seq)
    if (this.#pending.size === 0) this.#worker.unref()
    if (reply.ok) pending.resolve()
    else pending.reject(new Error(`state store: the change was not written, nothing changed (${reply.code ?? 'error'}: ${reply.message})`))
  }

  #fail (err: Error): void {
    if (this.#broken === undefined) this.#onWriterFailed?.(err)
    this.#broken ??= err
    for (const pending of this.#pending.values()) pending.reject(new Error(`state store writer failed: ${err.message}`))
    this.#pending.clear()
  }
}

// ---- opening ----

function isCorruption (err: unknown): boolean {
  const errcode = (err as { errcode?: number }).errcode
  return errcode === SQLITE_NOTADB || errcode === SQLITE_CORRUPT
}

/** Open the database; a file that is not one of ours, or damaged, is refused before anything writes to it. */
function openDatabase (file: string): DatabaseSync {
  const existed = existsSync(file)
  const db = new DatabaseSync(file)
  try {
    if (existed) {
      const check = db.prepare('PRAGMA quick_check').all() as Array<{ quick_check: string }>
      if (check.length !== 1 || check[0]?.quick_check !== 'ok') {
        throw new StateCorruptError(file, `integrity check failed: ${check.slice(0, 3).map((r) => r.quick_check).join('; ')}`)
      }
      const { user_version: version } = db.prepare('PRAGMA user_version').get() as { user_version: number }
      if (version !== 0 && version !== FORMAT_VERSION) throw new StateCorruptError(file, `unknown format version ${version}`)
    }
    applyPragmas(db)
    db.exec(SCHEMA)
    db.exec(`PRAGMA user_version = ${FORMAT_VERSION}`)
    return db
  } catch (err) {
    db.close()
    if (isCorruption(err)) throw new StateCorruptError(file, (err as Error).message)
    throw err
  }
}

function loadRows (db: DatabaseSync, file: string, view: MemoryView): void {
  let rows: Array<{ kind: string, id: string, body: string }>
  try {
    rows = db.prepare('SELECT kind, id, body FROM resources ORDER BY kind DESC, id').all() as typeof rows
  } catch (err) {
    if (isCorruption(err)) throw new StateCorruptError(file, (err as Error).message)
    throw err
  }
  for (const row of rows) {
    let value: unknown
    try {
      value = JSON.parse(row.body)
    } catch (err) {
      throw new StateCorruptError(file, `${row.kind} ${row.id}: not valid JSON: ${(err as Error).message}`)
    }
    const kind = row.kind === 'service' ? 'service' : 'endpoint'
    view.load(kind, checkResource(file, kind, row.id, value))
  }
}

async function startWriter (file: string, maxPageCount: number | undefined): Promise<Worker> {
  const self = fileURLToPath(import.meta.url)
  const worker = new Worker(new URL(`./store-sqlite-writer${extname(self)}`, import.meta.url), { workerData: { file, maxPageCount } })
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => { reject(new Error(`state store writer did not start: ${err.message}`)) }
    worker.once('error', onError)
    worker.once('message', () => { worker.off('error', onError); resolve() })
  })
  return worker
}

// ---- the JSON store's file, imported once ----

interface JsonState {
  readonly services: Record<string, EndpointService>
  readonly endpoints: Record<string, Endpoint>
}

async function readJsonState (file: string): Promise<JsonState | undefined> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (err) {
    throw new StateCorruptError(file, `not valid JSON: ${(err as Error).message}`)
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new StateCorruptError(file, 'not a JSON object')
  const { version, services, endpoints } = doc as Record<string, unknown>
  if (version !== JSON_FORMAT_VERSION) throw new StateCorruptError(file, `unknown format version ${JSON.stringify(version)}`)
  const map = (value: unknown, kind: 'service' | 'endpoint', field: string): Record<string, never> => {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new StateCorruptError(file, `"${field}" is not a map of ${field}`)
    for (const [id, item] of Object.entries(value)) checkResource(file, kind, id, item)
    return value as Record<string, never>
  }
  return { services: map(services, 'service', 'services'), endpoints: map(endpoints, 'endpoint', 'endpoints') }
}

/**
 * Replace the database's rows with the file's in one transaction, then rename the file, so a
 * kill -9 in between imports the same file again on the next start (the same result). The
 * JSON store's leftover temp files go too.
 */
async function importJson (db: DatabaseSync, dir: string, jsonFile: string, state: JsonState): Promise<void> {
  const put = db.prepare('INSERT INTO resources (kind, id, body) VALUES (?, ?, ?)')
  db.exec('BEGIN IMMEDIATE')
  try {
    db.exec('DELETE FROM resources')
    for (const svc of Object.values(state.services)) put.run('service', svc.id, JSON.stringify(svc))
    for (const ep of Object.values(state.endpoints)) put.run('endpoint', ep.id, JSON.stringify(ep))
    db.exec('COMMIT')
  } catch (err) {
    if (db.isTransaction) db.exec('ROLLBACK')
    throw err
  }
  let target = `${jsonFile}.imported`
  for (let n = 2; existsSync(target); n++) target = `${jsonFile}.imported.${n}`
  await rename(jsonFile, target)
  for (const name of await readdir(dir)) {
    if (name.startsWith(`${STATE_FILE}.tmp-`)) await rm(join(dir, name), { force: true })
  }
  await syncDir(dir)
}

async function syncDir (dir: string): Promise<void> {
  const handle = await open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}
