// Quick UDP proxy sanity check (not a test, not part of bench/run.ts): dnsperf (-c 4 -q 100,
// as bench case 4) against a dnsmasq backend directly, through nginx's stream UDP proxy, and
// through linkgate's UDP listener alone (src/dataplane/udp-proxy.ts in its own process, no
// control plane). Loopback only, in 127.22.250.0/24; every load bounded in time.
//
//   npx node bench/udp-proxy-qps.ts [--seconds 5]
//   npx node bench/udp-proxy-qps.ts --serve IP:PORT BACKEND:PORT     (the linkgate child)
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

const NET = '127.22.250'
const BACKEND = `${NET}.1`
const NGINX = `${NET}.3`
const LINKGATE = `${NET}.4`
const PORT = 5353
const NAME = 'bench.example.test'

const { values: opts } = parseArgs({
  options: { seconds: { type: 'string', default: '5' }, serve: { type: 'string', multiple: true } },
  strict: true,
  allowPositionals: true
})

async function serve (listen: string, backend: string): Promise<void> {
  const [{ default: pino }, { Registry }, { buildConfig }, { EndpointRuntime }, { createUdpListener }, { ServiceBalancer }, { UpstreamState }, { createMetrics }, { disabledAccessLog }] = await Promise.all([
    import('pino'), import('prom-client'), import('../src/config/load-config.ts'), import('../src/dataplane/endpoint-runtime.ts'),
    import('../src/dataplane/udp-proxy.ts'), import('../src/dataplane/upstream/balancer.ts'),
    import('../src/dataplane/upstream/upstream-state.ts'), import('../src/metrics/metrics.ts'), import('../src/dataplane/access-log.ts')
  ])
  const [ip, port] = listen.split(':') as [string, string]
  const [bip, bport] = backend.split(':') as [string, string]
  const at = new Date().toISOString()
  const service = {
    id: 'vpcesvc-00000000be0c', serviceName: 'bench', ownerAccountId: '100000000001', status: 'available' as const,
    acceptanceRequired: false, sameZonePreferred: true,
    portMappings: [{ protocol: 'UDP' as const, servicePort: Number(bport), terminalPort: Number(port) }],
    backends: [{ id: 'be-00000001', address: bip, zone: 'zone-a', weight: 100 }],
    healthCheck: { enabled: false, protocol: 'TCP' as const, path: '/', intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 3 },
    allowedAccounts: [], createdAt: at
  }
  const endpoint = {
    id: 'vpce-00000000be0e', serviceId: service.id, serviceName: 'bench', ownerAccountId: '100000000001', subnetId: 's', zone: 'zone-a',
    ip, privateDns: false, allowedSources: ['0.0.0.0/0', '::/0'], status: 'accepted' as const, dnsNames: [], createdAt: at
  }
  const metrics = createMetrics(new Registry())
  const upstream = new UpstreamState()
  const runtime = new EndpointRuntime(endpoint, service, new ServiceBalancer(service, upstream), metrics)
  const mapping = service.portMappings[0] as (typeof service.portMappings)[number]
  const listener = createUdpListener({
    runtime, mapping, limits: buildConfig().limits, metrics, logger: pino({ level: 'warn' }), upstream, accessLog: disabledAccessLog
  })
  await listener.listen()
  process.stdout.write('ready\n')
  process.on('SIGTERM', () => { void listener.close().then(() => process.exit(0)) })
}

function dnsperf (server: string, seconds: number, queries: string): { qps: number, lost: string } {
  const r = spawnSync('dnsperf', ['-s', server, '-p', String(PORT), '-d', queries, '-l', String(seconds), '-c', '4', '-q', '100', '-t', '1'], {
    encoding: 'utf8', timeout: (seconds + 15) * 1000
  })
  const out = r.stdout + r.stderr
  const qps = /Queries per second:\s+([\d.]+)/.exec(out)?.[1]
  const lost = /Queries lost:\s+(\d+ \([\d.]+%\))/.exec(out)?.[1] ?? '?'
  if (qps === undefined) throw new Error(`dnsperf against ${server}: ${out.slice(0, 400)}`)
  return { qps: Number(qps), lost }
}

function daemon (cmd: string, args: string[], children: ChildProcess[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(child)
  return child
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

async function main (): Promise<void> {
  const seconds = Number(opts.seconds)
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-udp-qps-'))
  const children: ChildProcess[] = []
  try {
    const queries = join(dir, 'queries.txt')
    await writeFile(queries, `${NAME} A\n`)
    await writeFile(join(dir, 'dnsmasq.conf'), [
      `listen-address=${BACKEND}`, 'bind-interfaces', `port=${PORT}`, 'no-resolv', 'no-hosts', 'no-poll', 'no-negcache',
      `host-record=${NAME},10.0.0.1`, `pid-file=${join(dir, 'dnsmasq.pid')}`, ''
    ].join('\n'))
    daemon('dnsmasq', ['--keep-in-foreground', `--conf-file=${join(dir, 'dnsmasq.conf')}`], children)
    await writeFile(join(dir, 'nginx.conf'), [
      'load_module /usr/lib/nginx/modules/ngx_stream_module.so;', 'worker_processes auto;', `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${join(dir, 'error.log')} warn;`, 'daemon off;', 'events { worker_connections 16384; }',
      'stream {', `    server { listen ${NGINX}:${PORT} udp; proxy_pass ${BACKEND}:${PORT}; proxy_timeout 120s; }`, '}', ''
    ].join('\n'))
    daemon('nginx', ['-p', dir, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf')], children)
    const lg = daemon(process.execPath, [new URL(import.meta.url).pathname, '--serve', `${LINKGATE}:${PORT}`, '--serve', `${BACKEND}:${PORT}`], children)
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error('linkgate child did not start')) }, 10_000)
      lg.stdout?.on('data', (d: Buffer) => { if (d.toString().includes('ready')) { clearTimeout(timer); resolve() } })
      lg.stderr?.on('data', (d: Buffer) => { process.stderr.write(d) })
    })
    await sleep(500)
    const rounds = 2
    for (const [name, server] of [['direct', BACKEND], ['nginx', NGINX], ['linkgate', LINKGATE]] as const) {
      const figures: string[] = []
      for (let i = 0; i < rounds; i++) {
        const r = dnsperf(server, seconds, queries)
        figures.push(`${Math.round(r.qps)} qps (lost ${r.lost})`)
      }
      process.stdout.write(`${name.padEnd(9)} ${figures.join(', ')}\n`)
    }
  } finally {
    for (const c of children) c.kill('SIGTERM')
    await sleep(300)
    await rm(dir, { recursive: true, force: true })
  }
}

const serveArgs = opts.serve
if (serveArgs !== undefined && serveArgs.length === 2) await serve(serveArgs[0] as string, serveArgs[1] as string)
else await main()
