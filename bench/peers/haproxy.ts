// HAProxy as a plain TCP proxy, at defaults as a user would run it but for `nbthread` (1 or 2,
// one instance each, issue 15); maxconn unset (derived from the open-file limit).
// HAProxy has no UDP proxy in its open-source edition, so it takes no part in case 4.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Daemon, findTool, run, tcpAccepts, waitFor } from '../lib/proc.ts'
import { ports, topology } from '../lib/topology.ts'

export interface HaproxyOptions {
  /** Log one line per connection to stdout (`option tcplog`), as case 7's "logging on" would. */
  readonly log?: boolean
  /** `nbthread` (default 1). */
  readonly threads?: 1 | 2
  /** Where it listens (default topology.haproxy, the ×1 instance's address). */
  readonly address?: string
}

export function haproxyConfig (options: HaproxyOptions = {}): string {
  const tcpPorts = [ports.iperf, ports.http, ports.idle]
  const lines = [
    '# written by bench/peers/haproxy.ts',
    'global',
    `    nbthread ${options.threads ?? 1}`,
    '    # maxconn left unset on purpose: HAProxy derives it from the open-file limit.',
    ...(options.log === true ? ['    log stdout format raw local0'] : []),
    '',
    'defaults',
    '    mode tcp',
    ...(options.log === true ? ['    log global', '    option tcplog'] : []),
    // The same timeouts as linkgate's defaults: connectTimeoutMs 3000, tcpIdleTimeoutSeconds 350.
    '    timeout connect 3s',
    '    timeout client 350s',
    '    timeout server 350s',
    ''
  ]
  for (const port of tcpPorts) {
    lines.push(
      `listen tcp_${port}`,
      `    bind ${options.address ?? topology.haproxy}:${port}`,
      `    server backend ${topology.backend}:${port}`,
      ''
    )
  }
  return lines.join('\n')
}

/** `haproxy -c -f FILE`: the config check the tests run. */
export async function checkHaproxyConfig (file: string): Promise<{ ok: boolean, output: string }> {
  const bin = findTool('haproxy')
  if (bin === undefined) return { ok: false, output: 'haproxy not installed' }
  const r = await run(bin, ['-c', '-f', file], { timeoutMs: 10_000 })
  return { ok: r.code === 0, output: (r.stdout + r.stderr).trim() }
}

export async function startHaproxy (dir: string, options: HaproxyOptions = {}): Promise<Daemon> {
  const bin = findTool('haproxy')
  if (bin === undefined) throw new Error('haproxy is not installed (Debian package haproxy)')
  const file = join(dir, 'haproxy.cfg')
  await writeFile(file, haproxyConfig(options))
  // -db: stay in the foreground, no daemon mode, so the harness owns the process.
  const daemon = new Daemon('haproxy', bin, ['-db', '-f', file], { cwd: dir })
  try {
    await waitFor('haproxy to listen', 10_000, async () => {
      if (!daemon.running) throw new Error(`haproxy exited: ${daemon.output()}`)
      return await tcpAccepts(options.address ?? topology.haproxy, ports.http)
    })
  } catch (err) {
    await daemon.stop()
    throw err
  }
  return daemon
}
