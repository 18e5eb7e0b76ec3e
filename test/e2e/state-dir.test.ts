// A stateDir that cannot be used (a file, under a file, on a read-only file system, under a
// parent that cannot be created, or one whose database cannot be opened) stops `linkgate start`
// with one line that names `stateDir` and the path — no stack, exit 1, nothing left running.
// Addresses: 127.84.0.0/16, ports 0.
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { MAIN, writeConfig } from '../helpers/gateway-process.ts'
import { mountTmpfs, remount } from '../helpers/tmpfs.ts'

function start (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, 'start', ...args], { timeout: 15_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? null, stdout, stderr })
    })
  })
}

const config = (stateDir: string): Record<string, unknown> => ({
  listen: { api: '127.84.0.1:0', dns: '127.84.0.1:0' },
  stateDir,
  zones: ['zone-a'],
  subnets: [{ id: 'subnet-a', cidr: '127.84.1.0/24', zone: 'zone-a' }]
})

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** One line `linkgate: stateDir <path>: <problem>`, exit 1, no stack frames. */
function refused (t: Test, result: { code: number | null, stdout: string, stderr: string }, path: string, problem: RegExp): void {
  t.equal(result.code, 1, `exit code 1 (stderr: ${result.stderr})`)
  const lines = result.stderr.trim().split('\n')
  t.equal(lines.length, 1, 'one line')
  t.match(lines[0], new RegExp(`^linkgate: stateDir ${escape(path)}: `), 'names the field and the path')
  t.match(lines[0], problem)
  t.notMatch(result.stderr, /\n\s+at /, 'no stack')
  t.notMatch(result.stdout, /linkgate is running/)
}

t.test('a stateDir that is a file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-statedir-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'plain-file')
  await writeFile(file, 'not a directory\n')
  refused(t, await start(['--config', await writeConfig(dir, config(file))]), file, /exists and is not a directory/)
  // --state-dir on the command line: the same check, the same words.
  refused(t, await start(['--config', await writeConfig(dir, config(join(dir, 'x'))), '--state-dir', file]), file, /not a directory/)
})

t.test('a stateDir under a file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-statedir-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'plain-file')
  await writeFile(file, 'x')
  const stateDir = join(file, 'state')
  refused(t, await start(['--config', await writeConfig(dir, config(stateDir))]), stateDir, new RegExp(`${escape(file)} is not a directory`))
})

t.test('a stateDir whose parent cannot be created ends at once (Node\'s recursive mkdir would loop)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-statedir-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const stateDir = '/proc/linkgate-no-such-dir/state'
  refused(t, await start(['--config', await writeConfig(dir, config(stateDir))]), stateDir, /cannot create \/proc\/linkgate-no-such-dir: ENOENT/)
})

t.test('a stateDir on a read-only file system (missing, and existing)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-statedir-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const mnt = join(dir, 'mnt')
  await mkdir(mnt)
  if (!mountTmpfs(t, mnt, '256k')) {
    if (process.env.CI === 'true') t.fail('cannot mount a tmpfs (tests run as root in CI)')
    else t.pass('needs mount', { skip: 'cannot mount a tmpfs here (not root?)' })
    return
  }
  await mkdir(join(mnt, 'existing'))
  remount(mnt, 'ro')
  const missing = join(mnt, 'state')
  refused(t, await start(['--config', await writeConfig(dir, config(missing))]), missing, /cannot create .*EROFS \(read-only file system\)/)
  const existing = join(mnt, 'existing')
  refused(t, await start(['--config', await writeConfig(dir, config(existing))]), existing, /not writable: EROFS/)
})

t.test('a stateDir whose database cannot be opened', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-statedir-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const stateDir = join(dir, 'state')
  await mkdir(join(stateDir, 'state.db'), { recursive: true }) // a directory where the database should be
  refused(t, await start(['--config', await writeConfig(dir, config(stateDir))]), stateDir, /the state store cannot be opened here: unable to open database file/)
})
