// The CLI as a user meets it: check-config names every error by its path; a corrupt state file
// stops the start with a clear message and is left untouched (SPEC §1, §2, §8).
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { MAIN, writeConfig } from '../helpers/gateway-process.ts'

function cli (args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : Number((err as { code?: number }).code ?? 1), stdout, stderr })
    })
  })
}

t.test('check-config accepts the demo config', async (t) => {
  const r = await cli(['check-config', 'config/default.yaml'])
  t.equal(r.code, 0)
  t.match(r.stdout, /config\/default\.yaml: ok/)
})

t.test('check-config names every error by its path and exits non-zero', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-cli-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'bad.yaml')
  await writeFile(file, [
    'colour: blue',
    'limits: { connectTimeoutMs: -1 }',
    'subnets:',
    '  - { id: subnet-a, cidr: 127.10.1.0/24, zone: zone-a }',
    '  - { id: subnet-b, cidr: 127.10.2.0/33, zone: zone-b }',
    ''
  ].join('\n'))
  const r = await cli(['check-config', file])
  t.not(r.code, 0)
  t.match(r.stderr, /colour: unknown field/)
  t.match(r.stderr, /limits\.connectTimeoutMs: must be >= 1 \(got -1\)/)
  t.match(r.stderr, /subnets\[1\]\.cidr: must be a CIDR/)
})

t.test('check-config refuses a subnet in an unknown zone and duplicate ids', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-cli-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'bad.yaml')
  await writeFile(file, [
    'subnets:',
    '  - { id: subnet-a, cidr: 127.10.1.0/24, zone: zone-q }',
    '  - { id: subnet-a, cidr: 127.10.2.0/24, zone: zone-b }',
    ''
  ].join('\n'))
  const r = await cli(['check-config', file])
  t.not(r.code, 0)
  t.match(r.stderr, /subnets\[1\]\.id: duplicate subnet id "subnet-a"/)
  t.match(r.stderr, /subnets\[0\]\.zone: unknown zone "zone-q"/)
})

t.test('an unknown command prints the usage and exits non-zero', async (t) => {
  const r = await cli(['frobnicate'])
  t.not(r.code, 0)
  t.match(r.stderr, /usage:/)
})

t.test('a corrupt state file stops the start with a clear message and is left untouched', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-cli-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const stateDir = join(dir, 'state')
  await mkdir(stateDir)
  const corrupt = '{"version": 1, "services": {"vpcesvc-0000000000aa": '
  await writeFile(join(stateDir, 'state.json'), corrupt)
  const config = await writeConfig(dir, { listen: { api: '127.47.0.1:0', dns: '127.47.0.1:0' }, stateDir })
  const r = await cli(['start', '--config', config])
  t.not(r.code, 0, 'the start fails')
  t.match(r.stderr, /state file .*state\.json is corrupt \(not valid JSON/)
  t.match(r.stderr, /left untouched/)
  t.equal(await readFile(join(stateDir, 'state.json'), 'utf8'), corrupt, 'the file is byte-for-byte the same')
})
