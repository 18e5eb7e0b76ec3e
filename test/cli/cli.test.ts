// `linkgate get|create|...` against a real gateway process (SPEC §14): what it prints, its exit
// codes (0 done, 1 the API refused or cannot be reached, 2 usage), `Code: message` on stderr,
// -o json equal to the API's own answer, files and stdin for -f, and lists read page by page.
import { execFile, spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { createServer as createHttpServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { runCli } from '../../src/cli/cli.ts'
import { api, MAIN, startGateway, writeConfig, type Gateway } from '../helpers/gateway-process.ts'

const PROVIDER = 'provider-dev-token'
const CONSUMER = 'consumer-dev-token'
const CONSUMER_ID = '100000000002'

interface Result { code: number, stdout: string, stderr: string }

async function inProcess (args: string[], env: NodeJS.ProcessEnv): Promise<Result> {
  let stdout = ''
  let stderr = ''
  const code = await runCli(args, {
    stdout: (text) => { stdout += text },
    stderr: (text) => { stderr += text },
    readStdin: async () => '',
    env
  })
  return { code, stdout, stderr }
}

function cli (args: string[], options: { env?: NodeJS.ProcessEnv, input?: string } = {}): Promise<Result> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [MAIN, ...args], {
      timeout: 20_000,
      env: { PATH: process.env.PATH, ...options.env }
    }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : Number((err as { code?: number }).code ?? 1), stdout, stderr })
    })
    child.stdin?.end(options.input ?? '')
  })
}

async function gateway (t: { teardown (fn: () => unknown): void }): Promise<{ gw: Gateway, env: NodeJS.ProcessEnv, backendPort: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-cli-api-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const echo = createServer((s) => { s.on('error', () => {}); s.pipe(s) })
  await new Promise<void>((resolve) => echo.listen(0, '127.75.0.10', resolve))
  t.teardown(() => echo.close())
  const file = await writeConfig(dir, {
    listen: { api: '127.75.0.1:0', dns: '127.75.0.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.75.1.0/24', zone: 'zone-a' }, { id: 'subnet-b', cidr: '127.75.2.0/24', zone: 'zone-b' }],
    log: { level: 'warn' }
  })
  const gw = await startGateway(t, file)
  return { gw, env: { LINKGATE_API: gw.apiUrl }, backendPort: (echo.address() as AddressInfo).port }
}

t.test('the provider and consumer steps, each one command, with tables and ids', async (t) => {
  const { gw, env, backendPort } = await gateway(t)
  const P = ['--token', PROVIDER]
  const C = ['--token', CONSUMER]
  const svc = await cli(['create', 'service', ...P, '--name', 'echo', '--acceptance-required', '--port', `9000:${backendPort}`,
    '--port', `9000:${backendPort}/udp`, '--backend', '127.75.0.10@zone-a:50', '--allow', CONSUMER_ID, '-o', 'id'], { env })
  t.equal(svc.code, 0, svc.stderr)
  const svcId = svc.stdout.trim()
  t.match(svcId, /^vpcesvc-[0-9a-f]{12}$/, '-o id prints only the id')
  const stored = await api(gw, 'GET', `/v1/endpoint-services/${svcId}`, PROVIDER)
  t.match(stored.body, {
    name: 'echo',
    acceptanceRequired: true,
    portMappings: [{ protocol: 'TCP', terminalPort: 9000, servicePort: backendPort }, { protocol: 'UDP', terminalPort: 9000, servicePort: backendPort }],
    backends: [{ address: '127.75.0.10', zone: 'zone-a', weight: 50 }],
    allowedAccounts: [CONSUMER_ID]
  }, 'the flags became the service the API stored')

  const list = await cli(['get', 'services', ...P], { env })
  t.equal(list.code, 0)
  const lines = list.stdout.trimEnd().split('\n')
  t.match(lines[0], /^ID +NAME +SERVICE NAME +STATUS +ACCEPTANCE +PORTS +HEALTHY +ALLOWED$/, 'a header row')
  t.match(lines[1], new RegExp(`^${svcId} +echo +local-1\\.echo\\.${svcId} +available +required +9000->${backendPort}/tcp,9000->${backendPort}/udp +1/1 +${CONSUMER_ID}$`))

  const ep = await cli(['create', 'endpoint', ...C, '--service', 'echo', '--subnet', 'subnet-b', '-o', 'id'], { env })
  t.equal(ep.code, 0, ep.stderr)
  const epId = ep.stdout.trim()
  t.match(epId, /^vpce-[0-9a-f]{12}$/, 'the short service name was resolved for the consumer')
  const status = await cli(['get', 'endpoints', epId, ...C, '-o', 'jsonpath={.status}'], { env })
  t.equal(status.stdout, 'pendingAcceptance\n')

  const all = await cli(['get', 'connections', ...P], { env })
  t.match(all.stdout, new RegExp(`^${svcId} +${epId} +${CONSUMER_ID} +pendingAcceptance +127\\.75\\.2\\.2 +zone-b$`, 'm'), 'connections of every service of the caller')
  const accepted = await cli(['accept', svcId, epId, ...P, '-o', 'jsonpath={.status}'], { env })
  t.equal(accepted.stdout, 'accepted\n')
  t.equal((await api(gw, 'GET', `/v1/endpoints/${epId}`, CONSUMER)).body.status, 'accepted', 'the API agrees')

  const be = await cli(['backends', 'add', svcId, '127.75.0.11', '--zone', 'zone-b', ...P, '-o', 'id'], { env })
  t.equal(be.code, 0, be.stderr)
  const beId = be.stdout.trim()
  const w = await cli(['backends', 'set-weight', svcId, beId, '0', ...P], { env })
  t.match(w.stdout, new RegExp(`^${beId} +127\\.75\\.0\\.11 +zone-b +0 +`, 'm'))
  const z = await cli(['backends', 'set-zone', svcId, beId, 'zone-a', ...P, '-o', 'jsonpath={.zone}'], { env })
  t.equal(z.stdout, 'zone-a\n')
  const backends = await cli(['get', 'backends', svcId, ...P, '-o', 'id'], { env })
  t.equal(backends.stdout.trim().split('\n').length, 2)
  const dotdot = await cli(['backends', 'remove', svcId, '..', ...P], { env })
  t.equal(dotdot.code, 2, '.. is no backend id: refused before URL parsing turns it into the service')
  t.match(dotdot.stderr, /"\.\." is not an id/)
  t.equal((await api(gw, 'GET', `/v1/endpoint-services/${svcId}`, PROVIDER)).status, 200, 'the service is still there')
  const removed = await cli(['backends', 'remove', svcId, beId, ...P], { env })
  t.equal(removed.stdout, `backend ${beId} removed from ${svcId}\n`)

  const blocked = await cli(['delete', 'service', svcId, ...P], { env })
  t.equal(blocked.code, 1, 'a refusal exits 1')
  t.match(blocked.stderr, /^Conflict: .+\n$/, 'printed as Code: message, one line')
  t.equal(blocked.stdout, '')

  const rejected = await cli(['reject', svcId, epId, ...P, '-o', 'jsonpath={.status}'], { env })
  t.equal(rejected.stdout, 'rejected\n')
  t.equal((await cli(['delete', 'endpoint', epId, ...C], { env })).stdout, `endpoint ${epId} deleted\n`)
  t.equal((await cli(['disallow', svcId, CONSUMER_ID, ...P], { env })).code, 0)
  t.same((await api(gw, 'GET', `/v1/endpoint-services/${svcId}/allowed-accounts`, PROVIDER)).body.items, [])
  const del = await cli(['delete', 'service', svcId, ...P, '-o', 'json'], { env })
  t.equal(del.code, 0)
  t.equal(del.stdout, '', '-o json prints what the API said: nothing for a 204')
})

t.test('-o json prints the API answer; -f reads YAML files and JSON on stdin; patch merges', async (t) => {
  const { gw, env, backendPort } = await gateway(t)
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-cli-files-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'svc.yaml')
  await writeFile(file, [
    'name: fromyaml',
    'portMappings:',
    `  - { protocol: TCP, servicePort: ${backendPort}, terminalPort: 9100 }`,
    'backends: [{ address: 127.75.0.10, zone: zone-a }]',
    'allowedAccounts: ["*"]',
    ''
  ].join('\n'))
  const created = await cli(['create', 'service', '-f', file, '--token', PROVIDER, '-o', 'json'], { env })
  t.equal(created.code, 0, created.stderr)
  const svc = JSON.parse(created.stdout)
  t.same(svc, (await api(gw, 'GET', `/v1/endpoint-services/${svc.id}`, PROVIDER)).body, '-o json is the API answer')

  const fromStdin = await cli(['create', 'endpoint', '-f', '-', '--token', CONSUMER, '-o', 'json'], {
    env, input: JSON.stringify({ serviceId: svc.id, subnetId: 'subnet-a', ip: '127.75.1.20' })
  })
  t.equal(fromStdin.code, 0, fromStdin.stderr)
  t.match(JSON.parse(fromStdin.stdout), { serviceId: svc.id, ip: '127.75.1.20', status: 'accepted' })

  const patched = await cli(['patch', 'service', svc.id, '-f', '-', '--token', PROVIDER, '-o', 'json'], {
    env, input: 'healthCheck: { intervalSeconds: 5 }\n'
  })
  t.equal(patched.code, 0, patched.stderr)
  t.equal(JSON.parse(patched.stdout).healthCheck.intervalSeconds, 5)

  const listJson = await cli(['get', 'endpoints', '--token', CONSUMER, '-o', 'json'], { env })
  t.same(JSON.parse(listJson.stdout).items, (await api(gw, 'GET', '/v1/endpoints', CONSUMER)).body.items, 'a list as {"items": [...]}')

  const available = await cli(['get', 'available-services', 'fromyaml', '--token', CONSUMER], { env })
  t.match(available.stdout, new RegExp(`^${svc.id} +local-1\\.fromyaml\\.${svc.id} +100000000001 +automatic +9100->${backendPort}/tcp +zone-a$`, 'm'))
  const allowed = await cli(['get', 'allowed-accounts', svc.id, '--token', PROVIDER], { env })
  t.equal(allowed.stdout, 'ACCOUNT\n*\n')
})

t.test('API refusals: Code: message on stderr, exit 1, nothing changed', async (t) => {
  const { gw, env } = await gateway(t)
  const missing = await cli(['get', 'services', 'vpcesvc-000000000000', '--token', PROVIDER], { env })
  t.same(missing, { code: 1, stdout: '', stderr: 'NotFound: id: endpoint service vpcesvc-000000000000 not found\n' })

  const badToken = await cli(['get', 'endpoints', '--token', 'not-a-real-token'], { env })
  t.equal(badToken.code, 1)
  t.match(badToken.stderr, /^Unauthorized: /)

  const invalid = await cli(['create', 'service', '--token', PROVIDER, '--port', '70000:80'], { env })
  t.equal(invalid.code, 1)
  t.equal(invalid.stderr, 'InvalidParameter: portMappings[0].terminalPort: must be <= 65535 (got 70000)\n', 'the API names the field')
  t.same((await api(gw, 'GET', '/v1/endpoint-services', PROVIDER)).body.items, [], 'nothing was created')

  const svc = await cli(['create', 'service', '--token', PROVIDER, '--name', 'private', '--port', '9200:80', '-o', 'id'], { env })
  const forbidden = await cli(['create', 'endpoint', '--token', CONSUMER, '--service', svc.stdout.trim(), '--subnet', 'subnet-a'], { env })
  t.equal(forbidden.code, 1)
  t.match(forbidden.stderr, /^Forbidden: serviceId: account 100000000002 is not allowed/)
  const byName = await cli(['create', 'endpoint', '--token', CONSUMER, '--service', 'private', '--subnet', 'subnet-a'], { env })
  t.equal(byName.code, 1)
  t.equal(byName.stderr, 'NotFound: service: no service named "private" is available to this account\n', 'a name the consumer cannot see')
  t.same((await api(gw, 'GET', '/v1/endpoints', CONSUMER)).body.items, [], 'no endpoint was created')

  const weight = await cli(['backends', 'set-weight', svc.stdout.trim(), 'be-00000000', '7', '--token', PROVIDER], { env })
  t.equal(weight.code, 1)
  t.match(weight.stderr, /^NotFound: /)
})

t.test('usage errors exit 2 with the usage, and send nothing', async (t) => {
  const { gw, env } = await gateway(t)
  const cases: Array<[string[], RegExp]> = [
    [['get', 'services'], /no token: pass --token TOKEN or set LINKGATE_TOKEN/],
    [['get', 'frobs', '--token', PROVIDER], /get: unknown kind "frobs"/],
    [['accept', 'vpcesvc-000000000000', '--token', PROVIDER], /missing ENDPOINT_ID/],
    [['delete', 'service', 'a', 'b', '--token', PROVIDER], /unexpected argument "b"/],
    [['get', 'services', '--frob', '--token', PROVIDER], /Unknown option '--frob'/],
    [['get', 'services', '-o', 'yaml', '--token', PROVIDER], /-o "yaml": expected table, json, id or jsonpath/],
    [['get', 'services', '-o', 'jsonpath={ip}', '--token', PROVIDER], /expected a field path such as \{\.ip\}/],
    [['delete', 'service', 'x', '--zone', 'a', '--token', PROVIDER], /delete does not take --zone/],
    [['create', 'service', '--port', '80:x', '--token', PROVIDER], /--port "80:x": expected TERMINAL:SERVICE/],
    [['create', 'service', '--port', '80', '--backend', '10.0.0.1', '--token', PROVIDER], /--backend "10.0.0.1": expected ADDRESS@ZONE/],
    [['create', 'service', '-f', '/nonexistent/svc.yaml', '--token', PROVIDER], /\/nonexistent\/svc\.yaml: no such file/],
    [['create', 'service', '-f', '-', '--name', 'x', '--token', PROVIDER], /either -f FILE or --port/],
    [['create', 'endpoint', '--service', 'x', '--token', PROVIDER], /needs --subnet ID/],
    [['backends', 'set-weight', 'a', 'b', 'heavy', '--token', PROVIDER], /WEIGHT "heavy": expected a whole number/],
    [['backends', 'frob', '--token', PROVIDER], /backends: unknown action "frob"/],
    [['get', 'services', '--api', 'ftp://127.75.0.1/', '--token', PROVIDER], /expected an http:\/\/ or https:\/\/ URL/]
  ]
  // The first three as processes (the exit code as a shell sees it), the rest through runCli
  // itself with captured output: the same code, without a process start each.
  for (const [i, [args, message]] of cases.entries()) {
    const r = i < 3 ? await cli(args, { env }) : await inProcess(args, env)
    t.equal(r.code, 2, `${args.join(' ')}: exit 2`)
    t.match(r.stderr, message, `${args.join(' ')}: names the problem`)
    t.match(r.stderr, /linkgate get services\|endpoints\|connections \[ID\]/, `${args.join(' ')}: prints the usage`)
    t.equal(r.stdout, '')
  }
  const bad = await cli(['create', 'service', '-f', '-', '--token', PROVIDER], { env, input: '{ name: [unclosed' })
  t.equal(bad.code, 2)
  t.match(bad.stderr, /standard input: not valid YAML or JSON/)
  t.same((await api(gw, 'GET', '/v1/endpoint-services', PROVIDER)).body.items, [], 'no usage error reached the API')

  const help = await cli(['get', '--help'], { env })
  t.equal(help.code, 0)
  t.match(help.stdout, /linkgate backends set-weight SERVICE_ID BACKEND_ID WEIGHT/)
})

t.test('an API that cannot be reached, or is not linkgate: exit 1 with the address', async (t) => {
  // A port that was free a moment ago: connection refused.
  const probe = createServer()
  await new Promise<void>((resolve) => probe.listen(0, '127.75.0.2', resolve))
  const { port } = probe.address() as AddressInfo
  await new Promise((resolve) => probe.close(resolve))
  const refused = await cli(['get', 'services', '--token', PROVIDER, '--api', `http://127.75.0.2:${port}`])
  t.equal(refused.code, 1)
  t.match(refused.stderr, new RegExp(`^linkgate: cannot reach the control API at http://127\\.75\\.0\\.2:${port}/? \\(ECONNREFUSED\\)`))

  const html = createHttpServer((_req, res) => { res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hi</html>') })
  await new Promise<void>((resolve) => html.listen(0, '127.75.0.3', resolve))
  t.teardown(() => html.close())
  const notApi = await cli(['get', 'services', '--token', PROVIDER, '--api', `http://127.75.0.3:${(html.address() as AddressInfo).port}`])
  t.equal(notApi.code, 1)
  t.match(notApi.stderr, /not JSON; is http:\/\/127\.75\.0\.3:\d+\/? a linkgate control API\?/)
})

t.test('lists are read to the end by following nextToken, and a repeated token stops', async (t) => {
  // linkgate pages lists with ?nextToken= (SPEC §10). This HTTP server pages the same way with
  // two items a page, so the CLI's loop is tested whatever page size the gateway uses.
  const seen: string[] = []
  let repeat = false
  const server = createHttpServer((req, res) => {
    const url = new URL(req.url as string, 'http://x')
    seen.push(`${req.headers.authorization} ${url.pathname}${url.search}`)
    const page = Number(url.searchParams.get('nextToken')?.replace('page-', '') ?? '0')
    const items = [0, 1].map((i) => ({ id: `vpce-00000000000${page * 2 + i}`, serviceId: 'vpcesvc-000000000001', status: 'accepted', ip: `127.75.1.${page * 2 + i + 10}`, zone: 'zone-a', dnsNames: [] }))
    const next = repeat ? 'page-1' : page < 2 ? `page-${page + 1}` : undefined
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ items, ...(next === undefined ? {} : { nextToken: next }) }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.75.0.4', resolve))
  t.teardown(() => server.close())
  const apiUrl = `http://127.75.0.4:${(server.address() as AddressInfo).port}`
  const r = await cli(['get', 'endpoints', '-o', 'id'], { env: { LINKGATE_API: apiUrl, LINKGATE_TOKEN: CONSUMER } })
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stdout, ['0', '1', '2', '3', '4', '5'].map((i) => `vpce-00000000000${i}\n`).join(''), 'three pages, six endpoints, in order')
  t.same(seen, [
    `Bearer ${CONSUMER} /v1/endpoints`,
    `Bearer ${CONSUMER} /v1/endpoints?nextToken=page-1`,
    `Bearer ${CONSUMER} /v1/endpoints?nextToken=page-2`
  ], 'LINKGATE_TOKEN is sent; each page asks for the token of the one before')

  repeat = true
  const loop = await cli(['get', 'endpoints'], { env: { LINKGATE_API: apiUrl, LINKGATE_TOKEN: CONSUMER } })
  t.equal(loop.code, 1)
  t.match(loop.stderr, /the server repeated nextToken "page-1"/)
})

t.test('a reader that stops early (| head) ends the output quietly, exit 0', async (t) => {
  // 3,000 endpoints of JSON, far more than a pipe holds, from an HTTP server that answers lists.
  const items = Array.from({ length: 3000 }, (_, i) => ({ id: `vpce-${String(i).padStart(12, '0')}`, serviceId: 'vpcesvc-000000000001', status: 'accepted', ip: '127.75.1.10', zone: 'zone-a', dnsNames: [] }))
  const server = createHttpServer((_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ items })) })
  await new Promise<void>((resolve) => server.listen(0, '127.75.0.5', resolve))
  t.teardown(() => server.close())
  const apiUrl = `http://127.75.0.5:${(server.address() as AddressInfo).port}`
  // The reader takes the first chunk and closes its end of the pipe, as `head -c 20` does.
  const child = spawn(process.execPath, [MAIN, 'get', 'endpoints', '-o', 'json'], {
    env: { PATH: process.env.PATH, LINKGATE_API: apiUrl, LINKGATE_TOKEN: CONSUMER }, stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => child.kill('SIGKILL'))
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  child.stdout.once('data', () => child.stdout.destroy())
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)))
  const r = { code, stderr }
  t.equal(r.stderr, '', `no EPIPE stack: ${r.stderr}`)
  t.equal(r.code, 0, 'the CLI exits 0 when its reader is gone')
})
