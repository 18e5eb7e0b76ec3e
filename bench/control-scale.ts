// "Control plane at scale" (issue 14): what an API change costs, and what it does to traffic,
// when the store holds many resources. Runnable alone:
//
//   node bench/control-scale.ts [--sizes 100,1000,10000] [--creates 40] [--main PATH/dist/main.js] [--json FILE]
//                               [--label TEXT] [--node-args "--trace-gc"] [--gateway-log FILE] [--workers auto|N]
//
// For each size N the store is seeded directly with N services + N accepted endpoints (a
// `state.json` of format 1 in a fresh stateDir: every version of linkgate reads it, the
// SQLite store imports it on its first start), then the gateway is started through its CLI as
// a user would, and:
// - start: spawn until the start-up banner (the API answers), the first start and a restart;
// - create: p50/p99 of `POST /v1/endpoint-services` and `POST /v1/endpoints`, one at a time;
// - at the largest size, a TCP ping (1 byte echoed, every 2 ms, on one kept connection) through
//   a seeded accepted endpoint while 50 creates and 8 list calls run: RTT p50, p99, max; and the
//   same ping for 1 s before, without API calls, for what the machine itself adds.
// `--main` runs another build (e.g. a checkout of an older revision) with the same method.
// `--workers` is the config's `workers` (SPEC §11, default auto as `linkgate start` runs it): each
// worker binds every endpoint's listener (reusePort), so N endpoints cost N × workers listening
// descriptors — 10,000 endpoints at `workers: 2` need more than an open-file limit of 20,000.
// Addresses: 127.73.0.0/16 only (issue 14's range). Health checks are off in the seeded and
// created services: 10,000 services probing one echo server would measure the prober instead.
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { loadavg, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { stringify } from 'yaml'

const repoRoot = resolve(import.meta.dirname, '..')

export interface ControlScaleOptions {
  readonly sizes: readonly number[]
  readonly creates: number
  /** The build to run: its dist/main.js. */
  readonly main: string
  /** Extra Node flags for the gateway (e.g. --trace-gc). */
  readonly nodeArgs?: readonly string[]
  /** A file that gets the gateway's output. */
  readonly gatewayLog?: string
  readonly log?: (message: string) => void
  /** The config's `workers`; default `auto`. */
  readonly workers?: number | 'auto'
}

let opts: ControlScaleOptions = { sizes: [], creates: 0, main: join(repoRoot, 'dist', 'main.js') }

const REGION = 'bench-1'
const SUFFIX = 'privatelink.internal'
const ACCOUNT = '100000000001'
const TOKEN = 'scale-bench-token'
const HOST = '127.73.200.2'
const BACKEND = '127.73.200.1'
const SUBNET = '127.73.0.0/17'
const TERMINAL_PORT = 7000
const HEALTH_OFF = { enabled: false, protocol: 'TCP', path: '/', intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 3 }

const log = (m: string): void => { (opts.log ?? ((x: string) => { process.stderr.write(`[control-scale] ${x}\n`) }))(m) }
const hex = (n: number, width: number): string => n.toString(16).padStart(width, '0')
const ipOf = (n: number): string => `127.73.${(n >> 8) & 0x7f}.${n & 0xff}`

function quantile (sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] as number
}
const stats = (xs: number[]): { p50: number, p99: number, max: number, n: number } => {
  const s = [...xs].sort((a, b) => a - b)
  return { p50: quantile(s, 0.5), p99: quantile(s, 0.99), max: s[s.length - 1] ?? NaN, n: s.length }
}

/** N services + N accepted endpoints in the format-1 state document. */
function seedState (n: number, echoPort: number): string {
  const services: Record<string, unknown> = {}
  const endpoints: Record<string, unknown> = {}
  const createdAt = new Date().toISOString()
  for (let i = 0; i < n; i++) {
    const sid = `vpcesvc-${hex(i, 12)}`
    services[sid] = {
      id: sid,
      serviceName: `${REGION}.${sid}`,
      ownerAccountId: ACCOUNT,
      status: 'available',
      acceptanceRequired: false,
      sameZonePreferred: true,
      portMappings: [{ protocol: 'TCP', servicePort: echoPort, terminalPort: TERMINAL_PORT }],
      backends: [{ id: 'be-00000001', address: BACKEND, zone: 'zone-a', weight: 100 }],
      healthCheck: HEALTH_OFF,
      allowedAccounts: [],
      createdAt
    }
    const eid = `vpce-${hex(i, 12)}`
    endpoints[eid] = {
      id: eid,
      serviceId: sid,
      serviceName: `${REGION}.${sid}`,
      ownerAccountId: ACCOUNT,
      subnetId: 'subnet-a',
      zone: 'zone-a',
      ip: ipOf(i + 2),
      privateDns: true,
      allowedSources: ['0.0.0.0/0', '::/0'],
      status: 'accepted',
      dnsNames: [`${eid}.${sid}.${REGION}.${SUFFIX}`, `${eid}-zone-a.${sid}.${REGION}.${SUFFIX}`],
      createdAt
    }
  }
  return JSON.stringify({ version: 1, services, endpoints })
}

interface Gateway { proc: ChildProcess, apiUrl: string, startMs: number, exited: Promise<unknown> }

async function startGateway (configFile: string): Promise<Gateway> {
  const started = performance.now()
  const proc = spawn(process.execPath, ['--max-semi-space-size=8', ...(opts.nodeArgs ?? []), opts.main, 'start', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] })
  if (opts.gatewayLog !== undefined) {
    const sink = createWriteStream(opts.gatewayLog, { flags: 'a' })
    proc.stdout?.pipe(sink, { end: false })
    proc.stderr?.pipe(sink, { end: false })
  }
  const exited = new Promise((resolve) => proc.on('exit', resolve))
  let out = ''
  const apiUrl = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no start within 120 s:\n${out.slice(-2000)}`)), 120_000)
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString()
      const m = /control API\s+(http:\/\/\S+)\/v1/.exec(out)
      if (m !== null) { clearTimeout(timer); resolve(m[1] as string) }
    })
    proc.stderr?.on('data', (d: Buffer) => { out += d.toString() })
    void exited.then((code) => { clearTimeout(timer); reject(new Error(`gateway exited (${String(code)}):\n${out.slice(-2000)}`)) })
  })
  return { proc, apiUrl, startMs: performance.now() - started, exited }
}

async function stopGateway (gw: Gateway): Promise<void> {
  const t0 = performance.now()
  gw.proc.kill('SIGTERM')
  let killed = false
  const timer = setTimeout(() => { killed = true; gw.proc.kill('SIGKILL') }, 15_000)
  await gw.exited
  clearTimeout(timer)
  log(`stopped in ${(performance.now() - t0).toFixed(0)} ms${killed ? ' (SIGKILL after 15 s)' : ''}`)
}

async function call (gw: Gateway, method: string, path: string, body?: unknown): Promise<{ status: number, body: any, ms: number }> {
  const t0 = performance.now()
  const res = await fetch(gw.apiUrl + path, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await res.text()
  const ms = performance.now() - t0
  return { status: res.status, body: text === '' ? undefined : JSON.parse(text), ms }
}

let createSeq = 0
async function createPair (gw: Gateway, echoPort: number): Promise<{ service: number, endpoint: number }> {
  const n = ++createSeq
  const svc = await call(gw, 'POST', '/v1/endpoint-services', {
    name: `c${n}`,
    portMappings: [{ protocol: 'TCP', servicePort: echoPort, terminalPort: TERMINAL_PORT }],
    backends: [{ address: BACKEND, zone: 'zone-a' }],
    healthCheck: { enabled: false }
  })
  if (svc.status !== 201) throw new Error(`create service: ${svc.status} ${JSON.stringify(svc.body)}`)
  const ep = await call(gw, 'POST', '/v1/endpoints', { serviceId: svc.body.id, subnetId: 'subnet-a' })
  if (ep.status !== 201) throw new Error(`create endpoint: ${ep.status} ${JSON.stringify(ep.body)}`)
  return { service: svc.ms, endpoint: ep.ms }
}

/** One kept TCP connection through the endpoint; one byte out, the echo back, every 2 ms. */
async function pinger (ip: string, port: number): Promise<{ stop: () => Promise<number[]> }> {
  const socket: Socket = connect({ host: ip, port })
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
  socket.setNoDelay(true)
  const rtts: number[] = []
  let stopped = false
  const loop = (async () => {
    while (!stopped) {
      const t0 = performance.now()
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('ping lost (no echo within 5 s)')), 5000)
        socket.once('data', () => { clearTimeout(timer); resolve() })
        socket.write('p')
      })
      rtts.push(performance.now() - t0)
      await new Promise((r) => setTimeout(r, 2))
    }
  })()
  return {
    stop: async () => { stopped = true; await loop; socket.destroy(); return rtts }
  }
}

export interface SizeResult {
  size: number
  firstStartMs: number
  restartMs: number
  createService: ReturnType<typeof stats>
  createEndpoint: ReturnType<typeof stats>
  ping?: ReturnType<typeof stats> & { creates: number, lists: number, loadMs: number }
  /** The same ping for 1 s with no API calls: what the machine itself adds. */
  pingIdle?: ReturnType<typeof stats>
}

async function runSize (dir: string, n: number, echoPort: number, creates: number, withPing: boolean): Promise<SizeResult> {
  const sub = join(dir, `n${n}`)
  const stateDir = join(sub, 'state')
  await mkdir(stateDir, { recursive: true })
  await writeFile(join(stateDir, 'state.json'), seedState(n, echoPort))
  const configFile = join(sub, 'config.yaml')
  await writeFile(configFile, stringify({
    region: REGION,
    listen: { api: `${HOST}:0`, dns: `${HOST}:0` },
    stateDir,
    dns: { suffix: SUFFIX, ttl: 30, upstreams: [] },
    zones: ['zone-a'],
    subnets: [{ id: 'subnet-a', cidr: SUBNET, zone: 'zone-a' }],
    accounts: [{ id: ACCOUNT, name: 'bench', token: TOKEN }],
    quotas: { servicesPerAccount: 100_000, endpointsPerAccount: 100_000 },
    ...(opts.workers === undefined || opts.workers === 'auto' ? {} : { workers: opts.workers }),
    log: { level: 'warn' }
  }))
  let gw = await startGateway(configFile)
  const firstStartMs = gw.startMs
  await stopGateway(gw)
  gw = await startGateway(configFile)
  const restartMs = gw.startMs
  log(`N=${n}: first start ${firstStartMs.toFixed(0)} ms, restart ${restartMs.toFixed(0)} ms`)
  try {
    for (let i = 0; i < 5; i++) await createPair(gw, echoPort) // warm-up
    const svcMs: number[] = []
    const epMs: number[] = []
    for (let i = 0; i < creates; i++) {
      const r = await createPair(gw, echoPort)
      svcMs.push(r.service)
      epMs.push(r.endpoint)
    }
    const result: SizeResult = { size: n, firstStartMs, restartMs, createService: stats(svcMs), createEndpoint: stats(epMs) }
    log(`N=${n}: create service p50 ${result.createService.p50.toFixed(2)} ms, endpoint p50 ${result.createEndpoint.p50.toFixed(2)} ms`)
    if (withPing) {
      const idle = await pinger(ipOf(2), TERMINAL_PORT)
      await new Promise((r) => setTimeout(r, 1000))
      const pingIdle = stats(await idle.stop())
      const ping = await pinger(ipOf(2), TERMINAL_PORT)
      const t0 = performance.now()
      const createLoop = (async () => { for (let i = 0; i < 25; i++) await createPair(gw, echoPort) })()
      const listLoop = (async () => {
        for (let i = 0; i < 8; i++) {
          const r = await call(gw, 'GET', i % 2 === 0 ? '/v1/endpoint-services' : '/v1/endpoints')
          if (r.status !== 200) throw new Error(`list: ${r.status}`)
        }
      })()
      await Promise.all([createLoop, listLoop])
      const loadMs = performance.now() - t0
      const rtts = await ping.stop()
      result.ping = { ...stats(rtts), creates: 50, lists: 8, loadMs }
      result.pingIdle = pingIdle
      log(`N=${n}: ping under load p50 ${result.ping.p50.toFixed(2)} p99 ${result.ping.p99.toFixed(2)} max ${result.ping.max.toFixed(2)} ms over ${rtts.length} pings`)
    }
    return result
  } finally {
    await stopGateway(gw)
  }
}

export function controlScaleTable (results: readonly SizeResult[], label: string): string {
  const f = (x: number): string => (Number.isFinite(x) ? x.toFixed(x < 10 ? 2 : x < 100 ? 1 : 0) : '—')
  const lines = [
    `| ${label}services + endpoints | first start | restart | create service p50 / p99 | create endpoint p50 / p99 |`,
    '|---:|---:|---:|---:|---:|'
  ]
  for (const r of results) {
    lines.push(`| ${r.size.toLocaleString('en')} + ${r.size.toLocaleString('en')} | ${f(r.firstStartMs / 1000)} s | ${f(r.restartMs / 1000)} s | ` +
      `${f(r.createService.p50)} / ${f(r.createService.p99)} ms | ${f(r.createEndpoint.p50)} / ${f(r.createEndpoint.p99)} ms |`)
  }
  for (const r of results) {
    if (r.ping === undefined) continue
    lines.push('', `Ping through an accepted endpoint at ${r.size.toLocaleString('en')} + ${r.size.toLocaleString('en')} while ${r.ping.creates} creates and ${r.ping.lists} list calls run ` +
      `(${f(r.ping.loadMs / 1000)} s, ${r.ping.n} pings): RTT p50 ${f(r.ping.p50)} ms, p99 ${f(r.ping.p99)} ms, max ${f(r.ping.max)} ms` +
      (r.pingIdle === undefined ? '' : `; the same ping for 1 s without API calls (${r.pingIdle.n} pings): p50 ${f(r.pingIdle.p50)} ms, p99 ${f(r.pingIdle.p99)} ms, max ${f(r.pingIdle.max)} ms`))
  }
  const first = results[0]
  const last = results[results.length - 1]
  if (first !== undefined && last !== undefined && first !== last) {
    lines.push('', `p50 create at ${last.size.toLocaleString('en')} ÷ at ${first.size.toLocaleString('en')}: service ${f(last.createService.p50 / first.createService.p50)}×, endpoint ${f(last.createEndpoint.p50 / first.createEndpoint.p50)}×`)
  }
  return lines.join('\n')
}

/** Seed, start and measure every size in turn (the largest also with the ping). */
export async function runControlScale (options: ControlScaleOptions): Promise<SizeResult[]> {
  opts = options
  const { sizes, creates } = options
  if (sizes.length === 0 || sizes.some((n) => !Number.isInteger(n) || n < 1 || n > 30000)) throw new Error('sizes: integers 1..30000')
  if (!Number.isInteger(creates) || creates < 1 || creates > 1000) throw new Error('creates: 1..1000')
  const echo = createServer((s) => { s.on('error', () => {}); s.pipe(s) })
  await new Promise<void>((resolve, reject) => { echo.once('error', reject); echo.listen(0, BACKEND, resolve) })
  const echoPort = (echo.address() as AddressInfo).port
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-control-scale-'))
  log(`${options.main}, working directory ${dir}, load average ${loadavg()[0]?.toFixed(2)}`)
  const results: SizeResult[] = []
  try {
    const largest = Math.max(...sizes)
    for (const n of sizes) results.push(await runSize(dir, n, echoPort, creates, n === largest))
  } finally {
    echo.close()
    await rm(dir, { recursive: true, force: true })
  }
  return results
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '100,1000,10000' },
      creates: { type: 'string', default: '40' },
      main: { type: 'string', default: join(repoRoot, 'dist', 'main.js') },
      json: { type: 'string' },
      label: { type: 'string', default: '' },
      'node-args': { type: 'string', default: '' },
      'gateway-log': { type: 'string' },
      workers: { type: 'string', default: 'auto' }
    },
    strict: true
  })
  const results = await runControlScale({
    sizes: values.sizes.split(',').map(Number),
    creates: Number(values.creates),
    main: values.main,
    nodeArgs: values['node-args'].split(' ').filter((a) => a !== ''),
    workers: values.workers === 'auto' ? 'auto' : Number(values.workers),
    ...(values['gateway-log'] === undefined ? {} : { gatewayLog: values['gateway-log'] })
  })
  process.stdout.write(controlScaleTable(results, values.label === '' ? '' : `${values.label}: `) + '\n')
  if (values.json !== undefined) {
    await writeFile(values.json, JSON.stringify({ main: values.main, date: new Date().toISOString(), loadAverage: loadavg()[0], results }, null, 2) + '\n')
  }
}

if (import.meta.main) {
  main().catch((err: unknown) => {
    process.stderr.write(`control-scale: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
    process.exitCode = 1
  })
}
