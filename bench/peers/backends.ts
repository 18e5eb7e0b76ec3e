// What every proxy forwards to, all on one address (topology.backend): an iperf3 server, the
// nginx HTTP backend, the idle-session server and dnsmasq over UDP. Each is its own process.
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { Daemon, findTool, tcpAccepts, waitFor } from '../lib/proc.ts'
import { ports, topology } from '../lib/topology.ts'
import { startDnsmasq } from './dnsmasq.ts'
import { linkgateDnsNames } from './linkgate.ts'
import { startNginxBackend } from './nginx.ts'

/** The names every DNS server of the bench holds (linkgate's, and dnsmasq with the same). */
export function benchDnsRecords (): Array<[string, string]> {
  return linkgateDnsNames().map((name) => [name, topology.linkgate.endpoint] as [string, string])
}

export interface Backends {
  readonly daemons: Daemon[]
  readonly dnsmasq: Daemon
  stop (): Promise<void>
}

export async function startIperfServer (): Promise<Daemon> {
  const bin = findTool('iperf3')
  if (bin === undefined) throw new Error('iperf3 is not installed (Debian package iperf3)')
  const daemon = new Daemon('iperf3', bin, ['-s', '-B', topology.backend, '-p', String(ports.iperf), '--forceflush'])
  // Not a connect probe: iperf3 would take a bare connect for a client that failed its test.
  await waitFor('iperf3 to listen', 10_000, () => {
    if (!daemon.running) throw new Error(`iperf3 exited: ${daemon.output()}`)
    return /Server listening/.test(daemon.printed)
  })
  return daemon
}

export async function startIdleServer (): Promise<Daemon> {
  const script = join(import.meta.dirname, '../lib/idle-server.ts')
  const daemon = new Daemon('idle-server', process.execPath, [script, topology.backend, String(ports.idle)], { stdin: 'pipe' })
  await waitFor('idle-server to listen', 10_000, async () => {
    if (!daemon.running) throw new Error(`idle-server exited: ${daemon.output()}`)
    return await tcpAccepts(topology.backend, ports.idle)
  })
  return daemon
}

export async function startBackends (dir: string): Promise<Backends> {
  const daemons: Daemon[] = []
  const stop = async (): Promise<void> => {
    await Promise.all(daemons.map((d) => d.stop()))
  }
  try {
    await mkdir(join(dir, 'nginx-backend'), { recursive: true })
    daemons.push(await startNginxBackend(join(dir, 'nginx-backend')))
    daemons.push(await startIdleServer())
    daemons.push(await startIperfServer())
    const dnsmasq = await startDnsmasq(dir, {
      address: topology.backend,
      port: ports.dns,
      records: benchDnsRecords(),
      ttl: 30
    })
    daemons.push(dnsmasq)
    return { daemons, dnsmasq, stop }
  } catch (err) {
    await stop()
    throw err
  }
}
