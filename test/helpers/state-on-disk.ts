// What the SQLite store has on disk, read through a connection of its own (WAL lets it read
// beside the store's writer): the rows as the next start would load them.
import { DatabaseSync } from 'node:sqlite'

export interface DiskState {
  services: Record<string, any>
  endpoints: Record<string, any>
}

export function readStateOnDisk (file: string): DiskState {
  const db = new DatabaseSync(file, { readOnly: true })
  try {
    const out: DiskState = { services: {}, endpoints: {} }
    for (const row of db.prepare('SELECT kind, id, body FROM resources ORDER BY kind, id').all() as Array<{ kind: string, id: string, body: string }>) {
      (row.kind === 'service' ? out.services : out.endpoints)[row.id] = JSON.parse(row.body)
    }
    return out
  } finally {
    db.close()
  }
}
