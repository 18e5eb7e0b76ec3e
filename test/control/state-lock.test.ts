// One instance per state directory (SPEC §10): the lock is an abstract unix socket, so taking it
// writes nothing and a dead process cannot leave it behind.
import { mkdtemp, readdir, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { lockStateDir } from '../../src/control/state-lock.ts'

t.test('a second lock on the same directory is refused, naming it; after release it can be taken again', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-lock-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const first = await lockStateDir(dir)
  t.teardown(() => first.release())
  await t.rejects(lockStateDir(dir), { code: 'StateInUse', message: new RegExp(`^state directory ${dir} is in use`) })
  await first.release()
  await first.release()
  const again = await lockStateDir(dir)
  await again.release()
})

t.test('other spellings of the same directory are the same lock: relative, dot segments, a symlink', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-lock-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await symlink(dir, `${dir}-link`)
  t.teardown(() => rm(`${dir}-link`, { force: true }))
  const lock = await lockStateDir(dir)
  t.teardown(() => lock.release())
  for (const spelling of [`${dir}/.`, `${dir}/../${dir.split('/').pop() as string}`, `${dir}-link`, `${dir}//`]) {
    await t.rejects(lockStateDir(spelling), { code: 'StateInUse' }, spelling)
  }
})

t.test('a directory that does not exist yet can be locked, and locking creates nothing', async (t) => {
  const parent = await mkdtemp(join(tmpdir(), 'linkgate-lock-'))
  t.teardown(() => rm(parent, { recursive: true, force: true }))
  const lock = await lockStateDir(join(parent, 'state', 'deeper'))
  t.teardown(() => lock.release())
  t.same(await readdir(parent), [], 'nothing was created')
  await t.rejects(lockStateDir(join(parent, 'state', 'deeper')), { code: 'StateInUse' })
  const other = await lockStateDir(join(parent, 'other'))
  await other.release()
})
