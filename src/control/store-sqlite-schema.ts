// The SQLite store's file format, shared by the opening thread and the writer thread.
//
// Durability (SPEC §8's kill -9 promise, README "State"): journal_mode=WAL with
// synchronous=FULL. Each API change is one transaction; its COMMIT appends the change to the
// write-ahead log and fsyncs the log before it returns, and the API answers only after that.
// A kill -9 (or a power cut) at any moment leaves either the committed frames, which the next
// open replays, or a torn tail of an uncommitted one, which SQLite's checksums discard.
// NORMAL would skip that fsync: still safe against kill -9 (the written frames sit in the
// kernel's page cache, which outlives the process), but a power cut could lose the last
// acknowledged changes, and "on disk before the API answers" would not be true.
import type { DatabaseSync } from 'node:sqlite'

export const DB_FILE = 'state.db'
export const FORMAT_VERSION = 1

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS resources (
  kind TEXT NOT NULL CHECK (kind IN ('service', 'endpoint')),
  id   TEXT NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (kind, id)
) WITHOUT ROWID;
`

export function applyPragmas (db: DatabaseSync): void {
  const mode = db.prepare('PRAGMA journal_mode = WAL').get() as { journal_mode?: string } | undefined
  if (mode?.journal_mode !== 'wal') throw new Error(`state database: cannot switch to WAL mode (got ${String(mode?.journal_mode)})`)
  db.exec('PRAGMA synchronous = FULL')
  // The opening thread and the writer never write at once, but a reader of the file (an
  // operator's sqlite3 shell) may hold a lock briefly.
  db.exec('PRAGMA busy_timeout = 5000')
}
