// The SQLite store's writer (store-sqlite.ts), in its own thread: a COMMIT with
// synchronous=FULL waits for fsync (2 ms typical, tens of ms at worst on this machine's disk),
// and no proxied packet or DNS query should wait behind it. One message is one transaction.
import { DatabaseSync } from 'node:sqlite'
import { parentPort, workerData } from 'node:worker_threads'
import { applyPragmas } from './store-sqlite-schema.ts'

export interface WriteRequest {
  readonly seq: number
  /** [kind, id, JSON body or null to delete]. */
  readonly rows: ReadonlyArray<readonly [string, string, string | null]>
}

export type WriteReply =
  | { readonly seq: number, readonly ok: true }
  | { readonly seq: number, readonly ok: false, readonly message: string, readonly code?: string }

const { file, maxPageCount } = workerData as { file: string, maxPageCount?: number }
const port = parentPort
if (port === null) throw new Error('store-sqlite-writer runs as a worker thread')

const db = new DatabaseSync(file)
applyPragmas(db)
if (maxPageCount !== undefined) db.exec(`PRAGMA max_page_count = ${Math.trunc(maxPageCount)}`)
const put = db.prepare('INSERT INTO resources (kind, id, body) VALUES (?, ?, ?) ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body')
const del = db.prepare('DELETE FROM resources WHERE kind = ? AND id = ?')

port.on('message', (msg: WriteRequest | 'close') => {
  if (msg === 'close') {
    db.close()
    port.close()
    return
  }
  try {
    db.exec('BEGIN IMMEDIATE')
    try {
      for (const [kind, id, body] of msg.rows) {
        if (body === null) del.run(kind, id)
        else put.run(kind, id, body)
      }
      db.exec('COMMIT')
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK')
      throw err
    }
    port.postMessage({ seq: msg.seq, ok: true } satisfies WriteReply)
  } catch (err) {
    const e = err as Error & { code?: string, errstr?: string }
    port.postMessage({ seq: msg.seq, ok: false, message: e.message, ...(e.errstr === undefined ? {} : { code: e.errstr }) } satisfies WriteReply)
  }
})
port.postMessage('ready')
