// `npm run bench [-- --quick]`: linkgate against a direct connection, HAProxy and nginx (and
// dnsmasq for DNS serving), all on loopback in 127.50.0.0/16, in one run (issue 8); every proxy
// at one and at two threads side by side (issue 15: linkgate `workers`, HAProxy `nbthread`,
// nginx `worker_processes`).
//
//   node bench/run.ts [--quick] [--only 1,2,...] [--skip-install] [--keep]
//
// Installs its peers from Debian's packages when missing (scripts/install-test-tools.sh --bench),
// writes each peer's config into a temporary directory, starts everything, runs the cases one
// after another (every load bounded in time), stops everything, and writes
// bench/results/<date>.{json,md,svg} and bench/results/latest.{md,svg} (which the README shows);
// a quick or partial run writes to bench/results/tmp/ instead. A peer that cannot start is
// reported "not available" with the reason.
import { spawnSync } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { controlScaleCase } from './cases/control-scale.ts'
import { connectionRateCase, keepAliveCase, loggingCostCase } from './cases/http.ts'
import { dnsCase } from './cases/dns.ts'
import { isolationCase } from './cases/isolation.ts'
import { memoryCase } from './cases/memory.ts'
import { proxyProtocolCase } from './cases/proxy-protocol.ts'
import { throughputCase } from './cases/throughput.ts'
import { udpCase } from './cases/udp.ts'
import { fullPlan, quickPlan, type BenchContext, type PeerState } from './cases/context.ts'
import { findTool, run, tcpAccepts, type Daemon } from './lib/proc.ts'
import { toMarkdown, toSvg } from './lib/report.ts'
import type { Row, RunResults } from './lib/results.ts'
import { benchTcpListeners, kindOf, peerAddress, peerNames, proxyNames, threadsOf, type PeerName, type ProxyName } from './lib/topology.ts'
import { startBackends, type Backends } from './peers/backends.ts'
import { startHaproxy } from './peers/haproxy.ts'
import { linkgateUnavailable, repoRoot, startLinkgate } from './peers/linkgate.ts'
import { startNginxProxy } from './peers/nginx.ts'

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    'skip-install': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  },
  strict: true
})
if (opts.help) {
  process.stdout.write('usage: node bench/run.ts [--quick] [--only 1,2,...] [--skip-install] [--keep]\n')
  process.exit(0)
}
const only = opts.only === undefined ? undefined : new Set(opts.only.split(',').map(Number))
const wanted = (caseId: number): boolean => only === undefined || only.has(caseId)

const started = Date.now()
const log = (message: string): void => {
  process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${message}\n`)
}

function install (): void {
  if (opts['skip-install']) return
  const r = spawnSync('bash', [join(repoRoot, 'scripts/install-test-tools.sh'), '--bench'], { stdio: 'inherit', timeout: 300_000 })
  if (r.status !== 0) log('installing the peers failed: the cases that need a missing tool report it')
}

async function versionOf (bin: string | undefined, args: string[], pattern: RegExp): Promise<string | undefined> {
  if (bin === undefined) return undefined
  const r = await run(bin, args, { timeoutMs: 5000 })
  return pattern.exec(r.stdout + r.stderr)?.[1]
}

async function versions (): Promise<Record<string, string>> {
  const found: Array<[string, string | undefined]> = [
    ['HAProxy', await versionOf(findTool('haproxy'), ['-v'], /HAProxy version (\S+)/)],
    ['nginx', await versionOf(findTool('nginx'), ['-v'], /nginx\/(\S+)/)],
    ['dnsmasq', await versionOf(findTool('dnsmasq'), ['--version'], /Dnsmasq version (\S+)/)],
    ['iperf3', await versionOf(findTool('iperf3'), ['--version'], /iperf (\S+)/)],
    ['wrk', await versionOf(findTool('wrk'), ['-v'], /wrk (\S+)/)],
    ['dnsperf', await versionOf(findTool('dnsperf'), ['-h'], /Version (\S+)/)],
    ['node (linkgate)', process.version]
  ]
  return Object.fromEntries(found.filter((e): e is [string, string] => e[1] !== undefined))
}

const round2 = (n: number): number => Math.round(n * 100) / 100

function today (): string {
  const d = new Date()
  const pad = (n: number): string => String(n).padStart(2, '0')
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`
}

async function main (): Promise<void> {
  install()
  const loadAtStart = loadavg()[0] ?? 0
  if (loadAtStart > 0.5 * cpus().length) {
    log(`warning: the machine is busy (load average ${loadAtStart.toFixed(2)} on ${cpus().length} CPUs): the figures will be low and noisy`)
  }
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-bench-'))
  log(`working directory ${dir}${opts.quick ? ' (quick run)' : ''}`)
  const peers = Object.fromEntries(peerNames.map((name) => [
    name, { name, address: peerAddress(name) } satisfies PeerState
  ])) as Record<PeerName, PeerState>
  let backends: Backends | undefined
  let generation = 0
  const unavailable: Record<string, string> = {}

  const startPeer = async (name: ProxyName, logging: boolean): Promise<Daemon> => {
    const sub = join(dir, `${name}-${++generation}`)
    await mkdir(sub, { recursive: true })
    const threads = threadsOf(name)
    const address = peerAddress(name)
    switch (kindOf(name)) {
      case 'haproxy': return await startHaproxy(sub, { log: logging, threads, address })
      case 'nginx': return await startNginxProxy(sub, { accessLog: logging, workers: threads, address })
      default: return await startLinkgate(sub, { accessLog: logging ? join(sub, 'access.log') : 'off', workers: threads })
    }
  }
  const restart = async (name: ProxyName, logging: boolean): Promise<void> => {
    const peer = peers[name]
    await peer.daemon?.stop()
    peer.daemon = undefined
    try {
      peer.daemon = await startPeer(name, logging)
    } catch (err) {
      peer.unavailable = unavailable[name] = `restart failed: ${(err as Error).message.trim()}`
      throw err
    }
  }
  const stopAll = async (): Promise<void> => {
    await Promise.all(Object.values(peers).map((p) => p.daemon?.stop()))
    await backends?.stop()
  }
  process.once('SIGINT', () => {
    log('interrupted: stopping everything')
    stopAll().finally(() => process.exit(130))
  })

  const rows: Row[] = []
  // Case 8 runs its own gateways and needs no peer: alone, it starts none.
  const needsPeers = [1, 2, 3, 4, 5, 6, 7, 9, 10].some(wanted)
  try {
    // Something already serving a bench address would answer the readiness probes and take the
    // load in place of the peer the bench started (HAProxy even shares its ports): refuse.
    const taken = []
    for (const [host, port] of benchTcpListeners()) if (await tcpAccepts(host, port, 300)) taken.push(`${host}:${port}`)
    if (taken.length > 0) throw new Error(`already in use by another process: ${taken.join(', ')} (another bench or proxy on 127.50.0.0/16?)`)
    if (needsPeers) {
      log('starting the backends: nginx (HTTP), iperf3, idle-session server, dnsmasq')
      backends = await startBackends(dir)
    }
    for (const name of needsPeers ? proxyNames : []) {
      if (kindOf(name) === 'linkgate') {
        const missing = linkgateUnavailable()
        if (missing !== undefined) {
          peers[name].unavailable = unavailable[name] = missing
          log(`linkgate not available: ${missing}`)
          continue
        }
      }
      try {
        peers[name].daemon = await startPeer(name, false)
        log(`${name} started (pid ${peers[name].daemon?.pid})`)
      } catch (err) {
        const reason = (err as Error).message.trim()
        peers[name].unavailable = unavailable[name] = reason
        log(`${name} not available: ${reason}`)
      }
    }
    const ctx: BenchContext = {
      quick: opts.quick,
      plan: opts.quick ? quickPlan : fullPlan,
      dir,
      tools: { iperf3: findTool('iperf3'), wrk: findTool('wrk'), dnsperf: findTool('dnsperf') },
      peers,
      restart,
      log
    }
    const cases: Array<[number, string, () => Promise<Row[]>]> = [
      [1, 'TCP bulk throughput (iperf3)', () => throughputCase(ctx)],
      [2, 'HTTP over keep-alive (wrk, 50 connections)', () => keepAliveCase(ctx)],
      [3, 'new connection per request (wrk, Connection: close)', () => connectionRateCase(ctx)],
      [4, 'UDP through the proxies (dnsperf to dnsmasq)', () => udpCase(ctx)],
      [5, 'DNS serving (dnsperf)', () => {
        const dnsmasq = backends?.dnsmasq.running === true ? backends.dnsmasq : undefined
        return dnsCase(ctx, dnsmasq === undefined ? 'dnsmasq is not running' : undefined, dnsmasq?.pid)
      }],
      [6, 'memory per idle session', () => memoryCase(ctx)],
      [7, 'logging cost (case 2 with logging off, then on)', () => loggingCostCase(ctx)],
      [8, 'control plane at scale (services + endpoints in the store: 100, 1,000, 10,000)', () => controlScaleCase(ctx)],
      [9, 'PROXY protocol cost (case 3 through a v2 endpoint against an off one)', () => proxyProtocolCase(ctx)],
      [10, 'control-plane isolation (keep-alive p99 while the API works: workers against one loop)', () => isolationCase(ctx)]
    ]
    for (const [id, title, runCase] of cases) {
      if (!wanted(id)) continue
      log(`case ${id}: ${title}`)
      rows.push(...await runCase())
    }
  } finally {
    log('stopping everything')
    await stopAll()
    if (!opts.keep) await rm(dir, { recursive: true, force: true })
  }

  const results: RunResults = {
    date: today(),
    quick: opts.quick,
    durationSeconds: (Date.now() - started) / 1000,
    machine: {
      cpus: cpus().length,
      memoryGiB: Math.round(totalmem() / 2 ** 30),
      kernel: release(),
      node: process.version,
      loadAverage: { start: round2(loadAtStart), end: round2(loadavg()[0] ?? 0) }
    },
    versions: await versions(),
    peersUnavailable: unavailable,
    rows
  }
  // A full run is the record (bench/results/<date>.*, latest.* for the README); quick and
  // partial runs go to bench/results/tmp/, which git ignores.
  const full = !opts.quick && only === undefined
  const outDir = join(repoRoot, 'bench', 'results', ...(full ? [] : ['tmp']))
  await mkdir(outDir, { recursive: true })
  const stem = join(outDir, `${results.date}${opts.quick ? '-quick' : ''}${only === undefined ? '' : '-partial'}`)
  const markdown = toMarkdown(results)
  const svg = toSvg(results)
  await writeFile(`${stem}.json`, JSON.stringify(results, null, 2) + '\n')
  await writeFile(`${stem}.md`, markdown)
  await writeFile(`${stem}.svg`, svg)
  if (full) {
    await writeFile(join(outDir, 'latest.md'), markdown)
    await writeFile(join(outDir, 'latest.svg'), svg)
  }
  process.stdout.write('\n' + markdown + '\n')
  log(`results: ${stem}.{json,md,svg}`)
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
