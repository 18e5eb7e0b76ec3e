// linkgate itself, started through its CLI as a user would: `linkgate start --config FILE`, that
// is dist/main.js with the Node flags of its shebang line. The config declares one endpoint
// service (every bench port, one backend) and one accepted endpoint with fixed ids, so the DNS
// names are known in advance (SPEC §2, §6).
import { existsSync, readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { stringify } from 'yaml'
import { endpointDnsNames } from '../../src/control/dns-names.ts'
import { probeDns } from '../lib/dns-probe.ts'
import { Daemon, tcpAccepts, waitFor } from '../lib/proc.ts'
import { benchIds, linkgateInstance, ports, topology } from '../lib/topology.ts'

export const repoRoot = resolve(import.meta.dirname, '../..')
export const linkgateMain = join(repoRoot, 'dist', 'main.js')

export interface LinkgateOptions {
  /** `log.access`: `off`, or a file that gets one JSON line per finished connection. */
  readonly accessLog?: string
  /**
   * `workers` (SPEC §11; default 1), or 0: the data plane on the main thread, in the same event
   * loop as the control plane (what linkgate was before workers; case 10 compares with it). The
   * CLI always runs workers, so 0 starts bench/lib/linkgate-one-loop.ts, which calls buildApp
   * without them.
   */
  readonly workers?: 0 | 1 | 2
  /** Node flags after the shebang's, and environment variables over the harness's (hot-path experiments). */
  readonly nodeArgs?: readonly string[]
  readonly env?: Readonly<Record<string, string>>
}

/** The bench endpoint's [regional, zonal] DNS names. */
export function linkgateDnsNames (): [string, string] {
  return endpointDnsNames(
    { id: benchIds.endpointId, serviceId: benchIds.serviceId, zone: benchIds.zone },
    { region: benchIds.region, dns: { suffix: benchIds.suffix, ttl: 30, upstreams: [] } }
  )
}

/** The config as a plain object (written as YAML); `check-config` and the schema accept it. */
export function linkgateConfigObject (dir: string, options: LinkgateOptions = {}): Record<string, unknown> {
  const lg = linkgateInstance(options.workers ?? 1)
  return {
    region: benchIds.region,
    workers: Math.max(1, options.workers ?? 1),
    listen: { api: `${lg.api}:${lg.apiPort}`, dns: `${lg.dns}:${lg.dnsPort}` },
    stateDir: join(dir, 'state'),
    dns: { suffix: benchIds.suffix, ttl: 30, upstreams: [] },
    zones: [benchIds.zone],
    subnets: [{ id: benchIds.subnetId, cidr: lg.subnet, zone: benchIds.zone }],
    accounts: [{ id: benchIds.accountId, name: 'bench', token: benchIds.token }],
    // Case 6 holds 8,000 idle sessions on one endpoint; the default cap is 3,000.
    limits: { maxConnectionsPerEndpoint: 20000 },
    // Case 10 creates 50 services per run on top of the bench's own (the default quota is 20).
    quotas: { servicesPerAccount: 1000 },
    services: [{
      id: benchIds.serviceId,
      ownerAccountId: benchIds.accountId,
      name: 'bench',
      portMappings: [
        { protocol: 'TCP', servicePort: ports.http, terminalPort: ports.http },
        { protocol: 'TCP', servicePort: ports.iperf, terminalPort: ports.iperf },
        { protocol: 'TCP', servicePort: ports.idle, terminalPort: ports.idle },
        { protocol: 'UDP', servicePort: ports.dns, terminalPort: ports.dns }
      ],
      backends: [{ id: 'be-0000be01', address: topology.backend, zone: benchIds.zone, weight: 100 }],
      // Checks go to the HTTP backend: a bare connect to iperf3's port would disturb a test.
      healthCheck: { enabled: true, protocol: 'TCP', port: ports.http }
    }],
    endpoints: [{
      id: benchIds.endpointId,
      ownerAccountId: benchIds.accountId,
      serviceId: benchIds.serviceId,
      subnetId: benchIds.subnetId,
      ip: lg.endpoint,
      privateDns: true
    }],
    demo: false,
    log: { level: 'warn', access: options.accessLog ?? 'off' }
  }
}

export function linkgateConfig (dir: string, options: LinkgateOptions = {}): string {
  return '# written by bench/peers/linkgate.ts\n' + stringify(linkgateConfigObject(dir, options))
}

/** The Node flags on the shebang line of linkgate's `bin`, so the bench runs what `linkgate start` runs. */
export function linkgateNodeFlags (): string[] {
  const first = readFileSync(linkgateMain, 'utf8').split('\n', 1)[0] ?? ''
  const flags = /^#!\/usr\/bin\/env -S node\b(.*)$/.exec(first)?.[1] ?? ''
  return flags.split(/\s+/).filter((f) => f !== '')
}

/** Why linkgate cannot take part, or undefined when its CLI is built. */
export function linkgateUnavailable (): string | undefined {
  if (!existsSync(linkgateMain)) return `${linkgateMain} not found: run \`npm run build\` (src/main.ts must exist)`
  return undefined
}

export async function startLinkgate (dir: string, options: LinkgateOptions = {}): Promise<Daemon> {
  const missing = linkgateUnavailable()
  if (missing !== undefined) throw new Error(missing)
  const file = join(dir, 'linkgate.yaml')
  await writeFile(file, linkgateConfig(dir, options))
  const entry = options.workers === 0 ? [join(import.meta.dirname, '../lib/linkgate-one-loop.ts'), file] : [linkgateMain, 'start', '--config', file]
  const daemon = new Daemon('linkgate', process.execPath, [...linkgateNodeFlags(), ...(options.nodeArgs ?? []), ...entry],
    { cwd: dir, ...(options.env === undefined ? {} : { env: { ...process.env, ...options.env } }) })
  const lg = linkgateInstance(options.workers ?? 1)
  const [name] = linkgateDnsNames()
  try {
    await waitFor('linkgate to serve the bench endpoint', 20_000, async () => {
      if (!daemon.running) throw new Error(`linkgate exited: ${daemon.output()}`)
      return await tcpAccepts(lg.endpoint, ports.http) &&
        await tcpAccepts(lg.endpoint, ports.idle) &&
        await probeDns(lg.endpoint, ports.dns, name) &&
        await probeDns(lg.dns, lg.dnsPort, name)
    })
  } catch (err) {
    await daemon.stop()
    throw new Error(`${(err as Error).message}\n${daemon.output()}`.trim())
  }
  return daemon
}
