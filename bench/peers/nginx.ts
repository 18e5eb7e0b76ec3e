// nginx twice: as the HTTP backend of cases 2, 3 and 7 (small fixed responses), and as a peer
// TCP/UDP proxy through its stream module. The backend at defaults (worker_processes auto), the
// proxy at 1 or 2 worker processes (one instance each, issue 15). Both raise worker_connections:
// its default of 512 per worker cannot hold case 6's 8,000 idle sessions (two connections each).
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Daemon, findTool, run, tcpAccepts, waitFor } from '../lib/proc.ts'
import { ports, topology } from '../lib/topology.ts'

/** Where Debian's libnginx-mod-stream puts the module. */
export const streamModule = '/usr/lib/nginx/modules/ngx_stream_module.so'

/** The small response body of the HTTP backend. */
export const httpBody = 'hello from the bench backend\n'

function common (dir: string, workers: number | 'auto' = 'auto'): string[] {
  return [
    '# written by bench/peers/nginx.ts',
    `worker_processes ${workers};`,
    `pid ${join(dir, 'nginx.pid')};`,
    `error_log ${join(dir, 'error.log')} warn;`,
    'daemon off;'
  ]
}

export interface NginxProxyOptions {
  readonly accessLog?: boolean
  /** `worker_processes` of the proxy (default 1; issue 15 runs 1 and 2). */
  readonly workers?: 1 | 2
  /** Where it listens (default topology.nginx, the ×1 instance's address). */
  readonly address?: string
}

/** nginx as a TCP and UDP proxy (stream module) in front of the bench backend. */
export function nginxProxyConfig (dir: string, options: NginxProxyOptions = {}): string {
  const tcp = [ports.iperf, ports.http, ports.idle]
  const address = options.address ?? topology.nginx
  const lines = [
    `load_module ${streamModule};`,
    ...common(dir, options.workers ?? 1),
    'events { worker_connections 16384; }',
    'stream {',
    ...(options.accessLog === true
      ? [
          '    log_format basic \'$remote_addr [$time_local] $protocol $status $bytes_sent $bytes_received $session_time\';',
          `    access_log ${join(dir, 'stream-access.log')} basic buffer=32k;`
        ]
      : []),
    // The same timeouts as linkgate's defaults: connect 3 s, TCP idle 350 s, UDP idle 120 s.
    '    proxy_connect_timeout 3s;'
  ]
  for (const port of tcp) {
    lines.push(`    server { listen ${address}:${port}; proxy_pass ${topology.backend}:${port}; proxy_timeout 350s; }`)
  }
  lines.push(`    server { listen ${address}:${ports.dns} udp; proxy_pass ${topology.backend}:${ports.dns}; proxy_timeout 120s; }`)
  lines.push('}', '')
  return lines.join('\n')
}

/** nginx as the HTTP backend: one tiny response, no access log, long keep-alive. */
export function nginxBackendConfig (dir: string): string {
  const temp = (name: string): string => join(dir, name)
  return [
    ...common(dir),
    'events { worker_connections 16384; }',
    'http {',
    '    access_log off;',
    `    client_body_temp_path ${temp('client_body')};`,
    `    proxy_temp_path ${temp('proxy')};`,
    `    fastcgi_temp_path ${temp('fastcgi')};`,
    `    uwsgi_temp_path ${temp('uwsgi')};`,
    `    scgi_temp_path ${temp('scgi')};`,
    // A backend, not a peer: keep-alive connections are not recycled during a run.
    '    keepalive_requests 1000000;',
    '    keepalive_timeout 350s;',
    '    server {',
    `        listen ${topology.backend}:${ports.http} backlog=4096;`,
    '        default_type text/plain;',
    `        location / { return 200 ${JSON.stringify(httpBody)}; }`,
    '    }',
    '}',
    ''
  ].join('\n')
}

/** `nginx -t -c FILE`: the config check the tests run. */
export async function checkNginxConfig (file: string, prefix: string): Promise<{ ok: boolean, output: string }> {
  const bin = findTool('nginx')
  if (bin === undefined) return { ok: false, output: 'nginx not installed' }
  const r = await run(bin, ['-t', '-q', '-p', prefix, '-e', join(prefix, 'error.log'), '-c', file], { timeoutMs: 10_000 })
  return { ok: r.code === 0, output: (r.stdout + r.stderr).trim() }
}

async function start (name: string, dir: string, config: string, host: string, port: number): Promise<Daemon> {
  const bin = findTool('nginx')
  if (bin === undefined) throw new Error('nginx is not installed (Debian packages nginx, libnginx-mod-stream)')
  await mkdir(dir, { recursive: true })
  const file = join(dir, 'nginx.conf')
  await writeFile(file, config)
  const daemon = new Daemon(name, bin, ['-p', dir, '-e', join(dir, 'error.log'), '-c', file], { cwd: dir })
  try {
    await waitFor(`${name} to listen`, 10_000, async () => {
      if (!daemon.running) throw new Error(`${name} exited: ${daemon.output()}`)
      return await tcpAccepts(host, port)
    })
  } catch (err) {
    await daemon.stop()
    throw err
  }
  return daemon
}

export function startNginxProxy (dir: string, options: NginxProxyOptions = {}): Promise<Daemon> {
  return start('nginx', dir, nginxProxyConfig(dir, options), options.address ?? topology.nginx, ports.http)
}

export function startNginxBackend (dir: string): Promise<Daemon> {
  return start('nginx-backend', dir, nginxBackendConfig(dir), topology.backend, ports.http)
}
