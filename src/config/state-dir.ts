// `stateDir` made ready before anything opens it (SPEC §8): it exists, is a directory, and this
// process may write into it — else the start stops with one line naming the field, the path and
// what to do, never an errno from deep inside the store (`EEXIST: file already exists, mkdir`,
// `unable to open database file`).
//
// Missing directories are created one level at a time: Node's recursive mkdir loops for ever
// when a parent cannot be created for lack of its own parent on a pseudo filesystem
// (`/proc/nope/x`), and one level at a time also says which level failed.
// Nothing is written into an existing directory here: a second instance on a directory in use
// must be refused without writing anything (SPEC §10).
import { constants } from 'node:fs'
import { access, mkdir, stat } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { LinkgateError } from '../errors.ts'

/** A `stateDir` that cannot be used: the message names the field and the path. */
export class StateDirError extends LinkgateError {
  constructor (dir: string, problem: string) {
    super('InvalidConfig', 400, `stateDir ${dir}: ${problem}`)
    this.name = 'StateDirError'
  }
}

const why = (err: unknown): string => {
  const e = err as NodeJS.ErrnoException
  const text: Record<string, string> = {
    EACCES: 'permission denied',
    EPERM: 'operation not permitted',
    EROFS: 'read-only file system',
    ENOSPC: 'no space left on device',
    EDQUOT: 'disk quota exceeded',
    ENOENT: 'no such file or directory',
    ENOTDIR: 'not a directory',
    ELOOP: 'too many symbolic links',
    ENAMETOOLONG: 'name too long'
  }
  return e.code !== undefined ? `${e.code}${text[e.code] === undefined ? '' : ` (${text[e.code]})`}` : String(e.message)
}

const HINT = 'set stateDir in the config file or pass --state-dir DIR'

/** What lies at `path`: 'dir', 'other' (a file, a socket...), or undefined when nothing is there. */
async function kind (path: string): Promise<'dir' | 'other' | undefined> {
  try {
    return (await stat(path)).isDirectory() ? 'dir' : 'other'
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    // ENOTDIR: a parent is a file; the walk up from here finds and names it.
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined
    throw err
  }
}

/**
 * Make `dir` usable as the state directory: create it (and missing parents), check that it is a
 * directory this process may write into. Throws StateDirError naming `stateDir` and the path.
 */
export async function prepareStateDir (dir: string): Promise<void> {
  if (dir.trim() === '') throw new StateDirError(JSON.stringify(dir), `must name a directory; ${HINT}`)
  const absolute = resolve(dir)
  let what: 'dir' | 'other' | undefined
  try {
    what = await kind(absolute)
  } catch (err) {
    throw new StateDirError(dir, `cannot be read: ${why(err)}; ${HINT}`)
  }
  if (what === 'other') throw new StateDirError(dir, `exists and is not a directory; ${HINT}`)
  if (what === undefined) {
    // Create the missing levels, top down.
    const missing: string[] = []
    for (let at = absolute; ; at = dirname(at)) {
      let k: 'dir' | 'other' | undefined
      try {
        k = await kind(at)
      } catch (err) {
        throw new StateDirError(dir, `cannot look at ${at}: ${why(err)}; ${HINT}`)
      }
      if (k === 'dir') break
      if (k === 'other') throw new StateDirError(dir, `${at} is not a directory, so nothing can be created under it; ${HINT}`)
      missing.unshift(at)
      if (dirname(at) === at) break
    }
    for (const level of missing) {
      try {
        await mkdir(level, { mode: 0o700 })
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST' && await kind(level).catch(() => undefined) === 'dir') continue
        throw new StateDirError(dir, `cannot create ${level}: ${why(err)}; ${HINT}`)
      }
    }
  }
  // W_OK also answers EROFS for root on a read-only mount (root passes mode bits, not that).
  try {
    await access(absolute, constants.W_OK | constants.X_OK)
  } catch (err) {
    throw new StateDirError(dir, `not writable: ${why(err)}; ${HINT}`)
  }
}

/**
 * An error of the store while it opens `dir` (SQLite's "unable to open database file", EACCES,
 * ENOSPC, a writer that did not start) as a StateDirError; errors of the catalogue (a corrupt
 * state, a directory in use) pass unchanged, they already name the file.
 */
export function stateDirFailure (dir: string, err: unknown): unknown {
  if (err instanceof LinkgateError) return err
  const e = err as NodeJS.ErrnoException & { errstr?: string }
  const detail = e.code !== undefined && e.code !== 'ERR_SQLITE_ERROR' ? why(e) : (e.message ?? String(err))
  return new StateDirError(dir, `the state store cannot be opened here: ${detail}; check the directory's space and permissions, or ${HINT}`)
}
