// The bench harness's pure parts: the configs it writes are accepted by the real tools
// (`haproxy -c`, `nginx -t`, `dnsmasq --test`) and by linkgate's own config schema; the parsers
// read the tools' real output; targets are judged as issue 8 states them; CPU time is read from
// /proc for a real process.
// A missing tool skips its test with the reason, except under CI=true where it fails.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { parseDnsperf, parseIperf, parseWrk } from '../../bench/lib/parse.ts'
import { cpuTime, findTool } from '../../bench/lib/proc.ts'
import { toMarkdown, toSvg } from '../../bench/lib/report.ts'
import { evaluateTarget, verdictText, type Row, type RunResults } from '../../bench/lib/results.ts'
import { benchIds, ports, topology } from '../../bench/lib/topology.ts'
import { checkDnsmasqConfig, dnsmasqConfig } from '../../bench/peers/dnsmasq.ts'
import { checkHaproxyConfig, haproxyConfig } from '../../bench/peers/haproxy.ts'
import { linkgateConfig, linkgateDnsNames } from '../../bench/peers/linkgate.ts'
import { checkNginxConfig, nginxBackendConfig, nginxProxyConfig, streamModule } from '../../bench/peers/nginx.ts'
import { benchDnsRecords } from '../../bench/peers/backends.ts'
import { proxyProtocolBackendConfig } from '../../bench/cases/proxy-protocol.ts'
import { parseConfig } from '../../src/config/load-config.ts'

const inCi = process.env.CI === 'true'

/** Why a tool's test cannot run (undefined when it can). */
function toolMissing (tool: string, file?: string): string | undefined {
  if (findTool(tool) === undefined) return `${tool} is not installed (scripts/install-test-tools.sh installs it)`
  if (file !== undefined && !existsSync(file)) return `${file} is missing (scripts/install-test-tools.sh installs it)`
  return undefined
}
const haproxyMissing = toolMissing('haproxy')
const nginxMissing = toolMissing('nginx', streamModule)
const dnsmasqMissing = toolMissing('dnsmasq')

/** Skip with the reason, except under CI=true, where the test runs and fails on it. */
const skipUnlessCi = (reason: string | undefined): { skip: string | false } => ({ skip: inCi ? false : reason ?? false })
function failInCi (t: Test, reason: string | undefined): boolean {
  if (reason === undefined) return false
  t.fail(`CI=true and ${reason}`)
  return true
}

async function tempDir (t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-bench-test-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

t.test('haproxy -c accepts the HAProxy config, with and without logging', skipUnlessCi(haproxyMissing), async (t) => {
  if (failInCi(t, haproxyMissing)) return
  const dir = await tempDir(t)
  for (const log of [false, true]) {
    const file = join(dir, `haproxy-${log}.cfg`)
    await writeFile(file, haproxyConfig({ log, threads: log ? 2 : 1 }))
    const r = await checkHaproxyConfig(file)
    t.ok(r.ok, `log=${log}: ${r.output}`)
  }
})

t.test('the HAProxy config binds only the HAProxy address, sets nbthread and leaves maxconn unset', async (t) => {
  const text = haproxyConfig()
  const binds = [...text.matchAll(/^\s*bind (\S+)$/gm)].map((m) => m[1])
  t.same(binds, [ports.iperf, ports.http, ports.idle].map((p) => `${topology.haproxy}:${p}`))
  t.notMatch(text, /^\s*maxconn\b/m)
  t.match(text, /^\s*nbthread 1$/m)
})

t.test('nginx -t accepts the stream proxy config, with and without an access log', skipUnlessCi(nginxMissing), async (t) => {
  if (failInCi(t, nginxMissing)) return
  const dir = await tempDir(t)
  for (const accessLog of [false, true]) {
    const file = join(dir, `nginx-${accessLog}.conf`)
    await writeFile(file, nginxProxyConfig(dir, { accessLog }))
    const r = await checkNginxConfig(file, dir)
    t.ok(r.ok, `accessLog=${accessLog}: ${r.output}`)
  }
})

t.test('nginx -t accepts the HTTP backend config', skipUnlessCi(nginxMissing), async (t) => {
  if (failInCi(t, nginxMissing)) return
  const dir = await tempDir(t)
  const file = join(dir, 'backend.conf')
  await writeFile(file, nginxBackendConfig(dir))
  const r = await checkNginxConfig(file, dir)
  t.ok(r.ok, r.output)
})

t.test('nginx -t accepts case 8\'s backend config: a plain listener and a proxy_protocol one', skipUnlessCi(nginxMissing), async (t) => {
  if (failInCi(t, nginxMissing)) return
  const dir = await tempDir(t)
  const file = join(dir, 'pp-backend.conf')
  const text = proxyProtocolBackendConfig(dir)
  t.match(text, / proxy_protocol backlog=4096;/)
  await writeFile(file, text)
  const r = await checkNginxConfig(file, dir)
  t.ok(r.ok, r.output)
})

t.test('the nginx proxy runs one worker process by default and proxies UDP to the backend', async (t) => {
  const text = nginxProxyConfig('/tmp/x')
  t.match(text, /^worker_processes 1;$/m)
  t.match(text, new RegExp(`listen ${topology.nginx.replaceAll('.', '\\.')}:${ports.dns} udp; proxy_pass ${topology.backend.replaceAll('.', '\\.')}:${ports.dns};`))
})

t.test('dnsmasq --test accepts the dnsmasq config holding the endpoint names', skipUnlessCi(dnsmasqMissing), async (t) => {
  if (failInCi(t, dnsmasqMissing)) return
  const dir = await tempDir(t)
  const file = join(dir, 'dnsmasq.conf')
  await writeFile(file, dnsmasqConfig(dir, { address: topology.backend, port: ports.dns, records: benchDnsRecords(), ttl: 30 }))
  const r = await checkDnsmasqConfig(file)
  t.ok(r.ok, r.output)
})

t.test('dnsmasq holds the same names as linkgate, pointing at the endpoint IP', async (t) => {
  const names = linkgateDnsNames()
  t.same(names, [
    `${benchIds.endpointId}.${benchIds.serviceId}.${benchIds.region}.${benchIds.suffix}`,
    `${benchIds.endpointId}-${benchIds.zone}.${benchIds.serviceId}.${benchIds.region}.${benchIds.suffix}`
  ])
  const text = dnsmasqConfig('/tmp/x', { address: topology.backend, port: ports.dns, records: benchDnsRecords(), ttl: 30 })
  for (const name of names) t.match(text, `host-record=${name},${topology.linkgate.endpoint}\n`)
})

t.test('linkgate accepts its bench config: one service, one accepted endpoint, access log off', async (t) => {
  const config = parseConfig(linkgateConfig('/tmp/bench-state'), 'bench.yaml')
  t.equal(config.services.length, 1)
  t.equal(config.services[0]?.id, benchIds.serviceId)
  t.same(config.services[0]?.backends.map((b) => b.address), [topology.backend])
  t.equal(config.endpoints[0]?.ip, topology.linkgate.endpoint)
  t.equal(config.log.access, 'off')
  t.equal(config.demo, false)
  t.ok(config.limits.maxConnectionsPerEndpoint >= 8000 + 100, 'room for case 6 and wrk')
})

t.test('linkgate accepts its bench config with the access log to a file', async (t) => {
  const config = parseConfig(linkgateConfig('/tmp/bench-state', { accessLog: '/tmp/bench-state/access.log' }), 'bench.yaml')
  t.equal(config.log.access, '/tmp/bench-state/access.log')
})

const wrkOutput = `Running 1s test @ http://127.50.1.1:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.76ms    9.36ms  76.87ms   93.55%
    Req/Sec     5.44k     2.00k    9.20k    75.00%
  Latency Distribution
     50%  640.00us
     75%    3.68ms
     90%    5.98ms
     99%    1.02s
  10995 requests in 1.03s, 1.80MB read
Requests/sec:  10629.41
Transfer/sec:      1.74MB
`

t.test('parseWrk reads the rate and the p50 and p99 latencies in ms', async (t) => {
  const r = parseWrk(wrkOutput)
  t.equal(r.requestsPerSecond, 10629.41)
  t.equal(r.requests, 10995)
  t.equal(r.p50Ms, 0.64)
  t.equal(r.p99Ms, 1020)
  t.equal(r.errors, 0)
})

t.test('parseWrk counts socket errors and non-2xx responses as errors', async (t) => {
  const text = wrkOutput.replace('Requests/sec', '  Socket errors: connect 1, read 2, write 3, timeout 4\n  Non-2xx or 3xx responses: 5\nRequests/sec')
  t.equal(parseWrk(text).errors, 15)
})

t.test('parseWrk refuses output without a latency distribution', async (t) => {
  t.throws(() => parseWrk('unable to connect to 127.50.1.1:8080 Connection refused\n'), /wrk: unexpected output/)
})

t.test('parseDnsperf reads qps and loss', async (t) => {
  const r = parseDnsperf(`Statistics:

  Queries sent:         34725
  Queries completed:    34713 (99.97%)
  Queries lost:         12 (0.03%)

  Response codes:       NOERROR 34713 (100.00%)
  Run time (s):         1.034333
  Queries per second:   33572.360159
`)
  t.same(r, { queriesPerSecond: 33572.360159, sent: 34725, lost: 12, lossPercent: 0.03 })
})

t.test('parseIperf reads the receiver\'s rate in Gb/s', async (t) => {
  const r = parseIperf('{"end":{"sum_sent":{"bits_per_second":13936124343.3,"retransmits":2},"sum_received":{"bits_per_second":13870991702.6}}}')
  t.equal(r.gbitsPerSecond, 13.8709917026)
  t.equal(r.retransmits, 2)
})

t.test('parseIperf turns iperf3\'s error field into an error', async (t) => {
  t.throws(() => parseIperf('{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}'), /iperf3: unable to connect/)
})

function row (cells: Row['cells'], target: Row['target'], better: Row['better'] = 'higher'): Row {
  return { caseId: 1, caseName: 'c', metric: 'm', unit: 'u', better, reference: 'haproxy', cells, target }
}

t.test('a ratio target against the better of HAProxy and nginx uses the faster one', async (t) => {
  const target = { kind: 'ratio', against: 'best-proxy', min: 1, text: '' } as const
  t.equal(evaluateTarget(row({ 'haproxy-1': { value: 8 }, 'nginx-1': { value: 10 }, 'linkgate-1': { value: 9 } }, target)), 'missed')
  t.equal(evaluateTarget(row({ 'haproxy-1': { value: 8 }, 'nginx-1': { value: 10 }, 'linkgate-1': { value: 10 } }, target)), 'met')
})

t.test('a "≤ HAProxy" latency target is met at or below HAProxy\'s figure', async (t) => {
  const target = { kind: 'ratio', against: 'haproxy', max: 1, text: '' } as const
  t.equal(evaluateTarget(row({ 'haproxy-1': { value: 2 }, 'linkgate-1': { value: 2 } }, target, 'lower')), 'met')
  t.equal(evaluateTarget(row({ 'haproxy-1': { value: 2 }, 'linkgate-1': { value: 2.1 } }, target, 'lower')), 'missed')
})

t.test('targets are judged at equal threads: linkgate ×2 against HAProxy ×2, ×1 against ×1', async (t) => {
  const r = row({ 'haproxy-1': { value: 10 }, 'haproxy-2': { value: 20 }, 'linkgate-1': { value: 11 }, 'linkgate-2': { value: 15 } },
    { kind: 'ratio', against: 'haproxy', min: 1, text: '' })
  t.equal(evaluateTarget(r, 'linkgate-1'), 'met')
  t.equal(evaluateTarget(r, 'linkgate-2'), 'missed')
  t.equal(verdictText(r), '×1 met, ×2 missed')
})

t.test('the peers run at one and at two threads: HAProxy nbthread, nginx worker_processes', async (t) => {
  t.match(haproxyConfig({ threads: 2, address: '127.50.2.2' }), /^\s+nbthread 2$/m)
  t.match(haproxyConfig({ threads: 2, address: '127.50.2.2' }), 'bind 127.50.2.2:8080')
  t.match(haproxyConfig(), /^\s+nbthread 1$/m)
  t.match(nginxProxyConfig('/tmp/x', { workers: 2, address: '127.50.3.2' }), /^worker_processes 2;$/m)
  t.match(nginxProxyConfig('/tmp/x', { workers: 2, address: '127.50.3.2' }), 'listen 127.50.3.2:5353 udp;')
  t.match(nginxProxyConfig('/tmp/x'), /^worker_processes 1;$/m)
})

t.test('a target is n/a when linkgate has no figure', async (t) => {
  const target = { kind: 'absolute', max: 4, text: '' } as const
  t.equal(evaluateTarget(row({ 'haproxy-1': { value: 3 }, 'linkgate-1': { note: 'not available: x' } }, target)), 'n/a')
  t.equal(evaluateTarget(row({ 'linkgate-1': { value: 4.5 } }, target)), 'missed')
})

const sampleRun: RunResults = {
  date: '2026-01-02',
  quick: false,
  durationSeconds: 200,
  machine: { cpus: 2, memoryGiB: 24, kernel: 'k', node: 'v24.0.0', loadAverage: { start: 0.1, end: 0.2 } },
  versions: { HAProxy: '2.6' },
  peersUnavailable: { 'linkgate-1': 'dist/main.js not found' },
  rows: [
    { caseId: 2, caseName: 'HTTP keep-alive', metric: 'request rate', unit: 'req/s', better: 'higher', reference: 'haproxy',
      cells: { direct: { value: 50000 }, 'haproxy-1': { value: 25000 }, 'nginx-1': { value: 30000 }, 'linkgate-1': { note: 'not available: dist/main.js not found' } },
      target: { kind: 'ratio', against: 'haproxy', min: 1, text: '≥ 1.0× HAProxy' } }
  ]
}

t.test('the Markdown report gives each figure and its ratios to the reference and to direct', async (t) => {
  const md = toMarkdown(sampleRun)
  t.match(md, '**linkgate ×1 not available**: dist/main.js not found')
  t.match(md, '| 2. HTTP keep-alive | request rate (req/s) | 50,000 | 25,000 | 30,000 | n/a | ≥ 1.0× HAProxy | ×1 n/a |')
  t.match(md, '| 2 | request rate | HAProxy | 1.00× | 1.20× | — | 0.50× | 0.60× | — |')
})

t.test('the SVG chart is one well-formed svg element with a bar per figure', async (t) => {
  const svg = toSvg(sampleRun)
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/)
  t.match(svg, /<\/svg>\n$/)
  t.equal([...svg.matchAll(/<rect x="300"/g)].length, 3, 'direct, HAProxy and nginx bars')
  t.match(svg, 'linkgate ×1: not available')
})

t.test('cpuTime counts the user time of a child that burns CPU', { skip: process.platform === 'linux' ? false : 'reads /proc' }, async (t) => {
  // Busy for 600 ms, then waits on stdin, so it can be read after the burn and before it exits.
  const child = spawn(process.execPath, ['-e', 'const t = Date.now(); while (Date.now() - t < 600) {} process.stdout.write("done\\n"); process.stdin.resume()'],
    { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill('SIGKILL') })
  const pid = child.pid
  if (pid === undefined) throw new Error('child did not start')
  const before = cpuTime(pid)
  await once(child.stdout, 'data')
  const after = cpuTime(pid)
  child.stdin.end()
  const userMs = after.userMs - before.userMs
  // The burn is 600 ms of wall time; on a busy machine it gets less CPU, so only a sanity bound.
  t.ok(userMs > 100, `user time grew by ${userMs} ms`)
  t.ok(after.systemMs >= before.systemMs, `kernel time ${before.systemMs} -> ${after.systemMs} ms`)
})

t.test('cpuTime of a process that is gone is zero', async (t) => {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
  await once(child, 'exit')
  t.same(cpuTime(child.pid as number), { userMs: 0, systemMs: 0 })
})

t.test('CPU-per-operation rows get a ratio to the reference and stay off the chart', async (t) => {
  const cpuRow: Row = {
    caseId: 2, caseName: 'HTTP keep-alive', metric: 'proxy CPU per request, user', unit: 'µs', better: 'lower', reference: 'haproxy',
    cells: { direct: { note: 'n/a: no proxy process' }, 'haproxy-1': { value: 10 }, 'nginx-1': { value: 12 }, 'linkgate-1': { value: 25 } }
  }
  const run = { ...sampleRun, peersUnavailable: {}, rows: [...sampleRun.rows, cpuRow] }
  const md = toMarkdown(run)
  t.match(md, '| 2. HTTP keep-alive | proxy CPU per request, user (µs) | n/a | 10.0 | 12.0 | 25.0 |  |  | direct: n/a: no proxy process |')
  t.match(md, '| 2 | proxy CPU per request, user | HAProxy | 1.00× | 1.20× | 2.50× | — | — | — |')
  t.notMatch(toSvg(run), 'CPU per request')
})
