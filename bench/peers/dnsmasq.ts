// dnsmasq as the UDP backend of case 4 and as the reference DNS server of case 5. It holds the
// same names as linkgate's embedded DNS (the bench endpoint's regional and zonal names), as
// host records, and nothing else: no upstream servers, no /etc/hosts, no cache misses.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Daemon, findTool, run, waitFor } from '../lib/proc.ts'
import { probeDns } from '../lib/dns-probe.ts'

export interface DnsmasqOptions {
  readonly address: string
  readonly port: number
  /** name -> IPv4 address */
  readonly records: ReadonlyArray<readonly [string, string]>
  readonly ttl: number
}

export function dnsmasqConfig (dir: string, options: DnsmasqOptions): string {
  return [
    '# written by bench/peers/dnsmasq.ts',
    `listen-address=${options.address}`,
    'bind-interfaces',
    `port=${options.port}`,
    'no-resolv',
    'no-hosts',
    'no-poll',
    'no-negcache',
    // dnsmasq's default of 150 concurrent forwarded queries does not matter: nothing is forwarded.
    `local-ttl=${options.ttl}`,
    `pid-file=${join(dir, 'dnsmasq.pid')}`,
    ...options.records.map(([name, ip]) => `host-record=${name},${ip}`),
    ''
  ].join('\n')
}

/** `dnsmasq --test`: the config check the tests run. */
export async function checkDnsmasqConfig (file: string): Promise<{ ok: boolean, output: string }> {
  const bin = findTool('dnsmasq')
  if (bin === undefined) return { ok: false, output: 'dnsmasq not installed' }
  const r = await run(bin, ['--test', `--conf-file=${file}`], { timeoutMs: 10_000 })
  return { ok: r.code === 0, output: (r.stdout + r.stderr).trim() }
}

export async function startDnsmasq (dir: string, options: DnsmasqOptions): Promise<Daemon> {
  const bin = findTool('dnsmasq')
  if (bin === undefined) throw new Error('dnsmasq is not installed (Debian package dnsmasq-base)')
  const file = join(dir, 'dnsmasq.conf')
  await writeFile(file, dnsmasqConfig(dir, options))
  const name = options.records[0]?.[0]
  if (name === undefined) throw new Error('dnsmasq: no records to serve')
  // --keep-in-foreground: the harness owns the process; it still drops root to `nobody`.
  const daemon = new Daemon('dnsmasq', bin, ['--keep-in-foreground', `--conf-file=${file}`], { cwd: dir })
  try {
    await waitFor('dnsmasq to answer', 10_000, async () => {
      if (!daemon.running) throw new Error(`dnsmasq exited: ${daemon.output()}`)
      return await probeDns(options.address, options.port, name)
    })
  } catch (err) {
    await daemon.stop()
    throw err
  }
  return daemon
}
