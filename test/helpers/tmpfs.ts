// A small tmpfs mounted in a directory the test owns, unmounted at teardown: a real full or
// read-only file system (tests run as root, so chmod would not stop a write).
import { execFileSync } from 'node:child_process'

interface Teardown { teardown (fn: () => unknown): void }

/** Mount a tmpfs of `size` (e.g. '512k') on `dir`; false (and nothing mounted) when mounting is not allowed. */
export function mountTmpfs (t: Teardown, dir: string, size: string, readOnly = false): boolean {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755${readOnly ? ',ro' : ''}`, 'tmpfs', dir], { stdio: 'pipe' })
  } catch {
    return false
  }
  // Lazy: a process that still holds a file open there must not keep the mount for ever.
  t.teardown(() => { try { execFileSync('umount', ['-l', dir], { stdio: 'pipe' }) } catch {} })
  return true
}

export function remount (dir: string, options: string): void {
  execFileSync('mount', ['-o', `remount,${options}`, dir], { stdio: 'pipe' })
}
