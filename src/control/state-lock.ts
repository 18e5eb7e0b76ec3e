// One instance per state directory (SPEC §10). The lock is a Linux abstract unix socket named
// from a hash of the directory's real path: binding it is atomic, and the kernel releases it when
// the process dies, even on `kill -9`, so there is never a stale lock file to clean up — and
// nothing is written to take it. Abstract names are per network namespace: two instances in
// different namespaces (containers) sharing one directory are not detected (README).
import { createHash } from 'node:crypto'
import { realpath } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { basename, dirname, join, resolve } from 'node:path'
import { StateInUseError } from '../errors.ts'

export interface StateLock {
  readonly dir: string
  release (): Promise<void>
}

/** The real path of `dir`, also when it does not exist yet: its nearest existing ancestor's real path + the rest. */
async function canonical (dir: string): Promise<string> {
  const absolute = resolve(dir)
  try {
    return await realpath(absolute)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    const parent = dirname(absolute)
    if (parent === absolute) return absolute
    return join(await canonical(parent), basename(absolute))
  }
}

export function lockName (realDir: string): string {
  return '\0linkgate-state-' + createHash('sha256').update(realDir).digest('hex').slice(0, 32)
}

export async function lockStateDir (dir: string): Promise<StateLock> {
  const realDir = await canonical(dir)
  const server: Server = createServer((socket) => socket.destroy())
  await new Promise<void>((resolvePromise, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(err.code === 'EADDRINUSE' ? new StateInUseError(realDir) : err)
    })
    server.listen({ path: lockName(realDir) }, () => resolvePromise())
  })
  // The lock must not keep the process alive on its own.
  server.unref()
  let released: Promise<void> | undefined
  return {
    dir: realDir,
    release () {
      released ??= new Promise<void>((resolvePromise) => server.close(() => resolvePromise()))
      return released
    }
  }
}
