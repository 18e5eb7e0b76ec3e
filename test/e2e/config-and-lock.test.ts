// check-config checks everything start checks and names every error at once; start prints the
// same list; a second instance on a state directory in use is refused at once and writes
// nothing (SPEC §10). Addresses: 127.70.0.0/16, ports 0.
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { writeFile } from 'node:fs/promises'
import { MAIN, startGateway, writeConfig } from '../helpers/gateway-process.ts'

function cli (args: string[]): Promise<{ code: number, stdout: string, stderr: string, ms: number }> {
  const started = Date.now()
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : Number((err as { code?: number }).code ?? 1), stdout, stderr, ms: Date.now() - started })
    })
  })
}

const PROVIDER = '100000000001'
const svc = (id: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  id, ownerAccountId: PROVIDER, portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 8080 }], ...extra
})
const ep = (id: string, extra: Record<string, unknown>): Record<string, unknown> => ({ id, ownerAccountId: PROVIDER, subnetId: 'subnet-a', ...extra })

const broken = (stateDir: string): Record<string, unknown> => ({
  colour: 'blue',
  listen: { api: '127.70.0.1:0', dns: '127.70.0.1:0' },
  stateDir,
  subnets: [
    { id: 'subnet-a', cidr: '127.70.1.0/24', zone: 'zone-a' },
    { id: 'subnet-b', cidr: '127.70.2.0/33', zone: 'zone-b' }
  ],
  services: [
    svc('vpcesvc-aaaaaaaaaaaa', { backends: [{ address: '127.0.0.1', zone: 'zone-q' }] }),
    svc('vpcesvc-bbbbbbbbbbbb', { healthCheck: { intervalSeconds: 2, timeoutSeconds: 2 } }),
    svc('vpcesvc-dddddddddddd'),
    svc('vpcesvc-dddddddddddd')
  ],
  endpoints: [
    ep('vpce-000000000001', { serviceId: 'vpcesvc-cccccccccccc' }),
    ep('vpce-000000000002', { serviceId: 'vpcesvc-dddddddddddd', subnetId: 'subnet-z' }),
    ep('vpce-000000000003', { serviceId: 'vpcesvc-dddddddddddd', ip: '127.70.1.10' }),
    ep('vpce-000000000004', { serviceId: 'vpcesvc-dddddddddddd', ip: '127.70.1.10' })
  ]
})

const expected = [
  /^colour: unknown field$/,
  /^subnets\[1\]\.cidr: must be a CIDR/,
  /^services\[0\]\.backends\[0\]\.zone: unknown zone "zone-q"/,
  /^services\[1\]\.healthCheck\.timeoutSeconds: must be less than intervalSeconds/,
  /^services\[3\]\.id: duplicate service id "vpcesvc-dddddddddddd" \(first at services\[2\]\.id\)/,
  /^endpoints\[0\]\.serviceId: endpoint service vpcesvc-cccccccccccc not found/,
  /^endpoints\[1\]\.subnetId: unknown subnet "subnet-z"/,
  /^endpoints\[3\]\.ip: 127\.70\.1\.10 is already used/
]

const errorLines = (stderr: string): string[] => stderr.split('\n').filter((l) => l.startsWith('  ')).map((l) => l.trim())

t.test('check-config names eight independent errors in one run; start prints the same list and writes nothing', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-cfg-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const stateDir = join(dir, 'state')
  const file = await writeConfig(dir, broken(stateDir))
  const check = await cli(['check-config', file])
  t.not(check.code, 0, 'check-config fails')
  const lines = errorLines(check.stderr)
  t.match(check.stderr, /8 error\(s\)/)
  for (const re of expected) t.ok(lines.some((l) => re.test(l)), `reported: ${re.source}`)
  t.equal(lines.length, expected.length, `exactly these errors:\n${lines.join('\n')}`)

  const start = await cli(['start', '--config', file])
  t.not(start.code, 0, 'start refuses the same file')
  t.same(errorLines(start.stderr), lines, 'start prints the same list')
  await t.rejects(stat(stateDir), 'start wrote no state directory')
})

t.test('a file check-config passes, start accepts (declared resources included)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-cfg-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = await writeConfig(dir, {
    listen: { api: '127.70.0.2:0', dns: '127.70.0.2:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.70.3.0/24', zone: 'zone-a' }],
    zones: ['zone-a'],
    services: [svc('vpcesvc-aaaaaaaaaaaa', { backends: [{ address: '127.0.0.1', zone: 'zone-a' }] })],
    endpoints: [ep('vpce-000000000001', { serviceId: 'vpcesvc-aaaaaaaaaaaa', ip: '127.70.3.10' })]
  })
  const check = await cli(['check-config', file])
  t.equal(check.code, 0, check.stderr)
  const gw = await startGateway(t, file)
  const res = await fetch(`${gw.apiUrl}/v1/endpoints/vpce-000000000001`, { headers: { authorization: 'Bearer provider-dev-token' } })
  t.equal(res.status, 200)
  t.match(await res.json(), { ip: '127.70.3.10', status: 'accepted' })
  gw.proc.kill('SIGTERM')
  await gw.exited
})

async function snapshot (dir: string): Promise<string> {
  const out: string[] = []
  for (const name of (await readdir(dir)).sort()) {
    const s = await stat(join(dir, name))
    out.push(`${name} ${s.size} ${s.mtimeMs} ${s.isFile() ? await readFile(join(dir, name), 'utf8') : ''}`)
  }
  return out.join('\n')
}

t.test('a second instance on the same stateDir exits at once, naming the directory, and writes nothing', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-lock-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const stateDir = join(dir, 'state')
  const config = {
    listen: { api: '127.70.0.3:0', dns: '127.70.0.3:0' },
    stateDir,
    subnets: [{ id: 'subnet-a', cidr: '127.70.4.0/24', zone: 'zone-a' }],
    zones: ['zone-a']
  }
  const first = await startGateway(t, await writeConfig(dir, config))
  const created = await fetch(`${first.apiUrl}/v1/endpoint-services`, {
    method: 'POST',
    headers: { authorization: 'Bearer provider-dev-token', 'content-type': 'application/json' },
    body: JSON.stringify({ portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 80 }] })
  })
  t.equal(created.status, 201)
  const before = await snapshot(stateDir)

  // The same directory by another spelling (a relative path with a dot segment).
  const secondFile = join(dir, 'second.yaml')
  await writeFile(secondFile, stringify({ ...config, listen: { api: '127.70.0.4:0', dns: '127.70.0.4:0' }, stateDir: `${stateDir}/../state/.` }))
  const second = await cli(['start', '--config', secondFile])
  t.not(second.code, 0, 'the second instance fails')
  t.ok(second.ms < 5000, `at once (${second.ms} ms)`)
  t.match(second.stderr, new RegExp(`state directory ${stateDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use by another linkgate process`))
  t.equal(await snapshot(stateDir), before, 'the state directory is byte-for-byte and mtime the same')
  const still = await fetch(`${first.apiUrl}/healthz`)
  t.equal(still.status, 200, 'the first instance is unaffected')

  // kill -9 leaves no stale lock: the kernel releases it with the process.
  first.proc.kill('SIGKILL')
  await first.exited
  const third = await startGateway(t, await writeConfig(dir, config))
  const list = await fetch(`${third.apiUrl}/v1/endpoint-services`, { headers: { authorization: 'Bearer provider-dev-token' } })
  t.equal(((await list.json()) as { items: unknown[] }).items.length, 1, 'the restarted instance has the state')
  third.proc.kill('SIGTERM')
  await third.exited
})
