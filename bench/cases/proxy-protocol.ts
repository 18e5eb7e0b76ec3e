// Case 9: what the PROXY protocol (SPEC §13) costs linkgate per new connection. Two services
// created through the running linkgate's API, identical but for `proxyProtocol` (off / v2), each
// with an endpoint of its own, in front of one nginx that listens twice on the backend address:
// plainly, and with `proxy_protocol` (so the v2 header is really parsed, and a wrong one fails).
// wrk with `Connection: close` against both endpoints, interleaved and alternating which goes
// first, in the same linkgate process: conn/s and linkgate's CPU per connection, off and v2, and
// the cost (1 − v2 ÷ off); the issue's bound is 5%.
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Daemon, findTool, tcpAccepts, waitFor } from '../lib/proc.ts'
import type { Row } from '../lib/results.ts'
import { benchIds, topology } from '../lib/topology.ts'
import { median, microsPerOp, unavailableCell, type BenchContext, type PeerState } from './context.ts'
import { wrkAgainst, wrkConnections, type WrkRun } from './http.ts'

/** The backend's two listeners (on topology.backend) and the two endpoints (in linkgate's bench subnet). */
const PLAIN_PORT = 8081
const PP_PORT = 8082
const ENDPOINT_OFF = '127.50.4.11'
const ENDPOINT_V2 = '127.50.4.12'
/** wrk targets `ports.http` on the peer address: the endpoints map it to the backend's ports. */
const TERMINAL_PORT = 8080

const body = 'hello from the PROXY protocol backend\n'

export function proxyProtocolBackendConfig (dir: string): string {
  return [
    '# written by bench/cases/proxy-protocol.ts',
    'worker_processes auto;',
    `pid ${join(dir, 'nginx.pid')};`,
    'daemon off;',
    'events { worker_connections 16384; }',
    'http {',
    '    access_log off;',
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((n) => `    ${n}_temp_path ${join(dir, n)};`),
    '    server {',
    `        listen ${topology.backend}:${PLAIN_PORT} backlog=4096;`,
    `        listen ${topology.backend}:${PP_PORT} proxy_protocol backlog=4096;`,
    '        default_type text/plain;',
    `        location / { return 200 ${JSON.stringify(body)}; }`,
    '    }',
    '}',
    ''
  ].join('\n')
}

async function api (method: string, path: string, payload?: unknown): Promise<any> {
  const lg = topology.linkgate
  const res = await fetch(`http://${lg.api}:${lg.apiPort}${path}`, {
    method,
    headers: { authorization: `Bearer ${benchIds.token}`, ...(payload === undefined ? {} : { 'content-type': 'application/json' }) },
    body: payload === undefined ? undefined : JSON.stringify(payload)
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`)
  return text === '' ? undefined : JSON.parse(text)
}

/** A service toward `servicePort` with `proxyProtocol`, and an accepted endpoint on `ip`; returns both ids. */
async function createPath (name: string, servicePort: number, proxyProtocol: 'off' | 'v2', ip: string): Promise<{ serviceId: string, endpointId: string }> {
  const svc = await api('POST', '/v1/endpoint-services', {
    name,
    portMappings: [{ protocol: 'TCP', servicePort, terminalPort: TERMINAL_PORT }],
    backends: [{ address: topology.backend, zone: benchIds.zone, weight: 100 }],
    healthCheck: { enabled: false },
    proxyProtocol
  })
  const ep = await api('POST', '/v1/endpoints', { serviceId: svc.id, subnetId: benchIds.subnetId, ip, privateDns: false })
  return { serviceId: svc.id as string, endpointId: ep.id as string }
}

export async function proxyProtocolCase (ctx: BenchContext): Promise<Row[]> {
  const base = { caseId: 9, caseName: 'PROXY protocol cost', reference: 'linkgate' as const }
  const lg = ctx.peers['linkgate-1']
  const missing = ctx.tools.wrk === undefined
    ? 'wrk not installed'
    : findTool('nginx') === undefined ? 'nginx not installed' : lg.unavailable ?? (lg.daemon === undefined ? 'linkgate not running' : undefined)
  if (missing !== undefined) {
    return [{ ...base, metric: 'connection rate, proxyProtocol v2', unit: 'conn/s', better: 'higher', cells: { 'linkgate-1': unavailableCell(missing) } }]
  }
  const dir = join(ctx.dir, 'proxy-protocol-backend')
  await mkdir(dir, { recursive: true })
  const file = join(dir, 'nginx.conf')
  await writeFile(file, proxyProtocolBackendConfig(dir))
  const nginx = new Daemon('nginx-pp-backend', findTool('nginx') as string, ['-p', dir, '-e', join(dir, 'error.log'), '-c', file], { cwd: dir })
  const created: Array<{ serviceId: string, endpointId: string }> = []
  try {
    await waitFor('the PROXY protocol backend to listen', 10_000, async () => {
      if (!nginx.running) throw new Error(`nginx exited: ${nginx.output()}`)
      return await tcpAccepts(topology.backend, PLAIN_PORT) && await tcpAccepts(topology.backend, PP_PORT)
    })
    created.push(await createPath('ppoff', PLAIN_PORT, 'off', ENDPOINT_OFF))
    created.push(await createPath('ppv2', PP_PORT, 'v2', ENDPOINT_V2))
    await waitFor('the two endpoints to listen', 10_000, async () =>
      await tcpAccepts(ENDPOINT_OFF, TERMINAL_PORT) && await tcpAccepts(ENDPOINT_V2, TERMINAL_PORT))
    const peerOff: PeerState = { name: 'linkgate-1', address: ENDPOINT_OFF, daemon: lg.daemon }
    const peerV2: PeerState = { name: 'linkgate-1', address: ENDPOINT_V2, daemon: lg.daemon }
    const off: WrkRun[] = []
    const v2: WrkRun[] = []
    // An even number of rounds, so each order comes as often; the machine's drift over a run
    // is larger than the effect measured, hence the ratio is taken within each round.
    const rounds = ctx.quick ? 1 : 4
    for (let round = 0; round < rounds; round++) {
      // Alternate which goes first, so neither always runs on a machine the other just warmed.
      const order = round % 2 === 0 ? [['off', peerOff], ['v2', peerV2]] as const : [['v2', peerV2], ['off', peerOff]] as const
      for (const [label, peer] of order) {
        ctx.log(`  proxyProtocol ${label}:`)
        const r = await wrkAgainst(ctx, peer, true, round === 0)
        if (r.errors > 0) throw new Error(`proxyProtocol ${label}: wrk counted ${r.errors} errors (is the header refused?)`)
        ;(label === 'off' ? off : v2).push(r)
      }
    }
    const rate = (runs: WrkRun[]): number => median(runs.map((r) => r.requestsPerSecond))
    const cpu = (runs: WrkRun[], kind: 'userMs' | 'systemMs'): number => median(runs.map((r) => microsPerOp(r.cpu, kind, r.requests)))
    const offRate = rate(off)
    const v2Rate = rate(v2)
    const ratios = v2.map((r, i) => r.requestsPerSecond / (off[i] as WrkRun).requestsPerSecond)
    const cost = (1 - median(ratios)) * 100
    ctx.log(`  v2 ÷ off per round: ${ratios.map((r) => r.toFixed(3)).join(', ')} (cost, from their median: ${cost.toFixed(1)}%)`)
    const note = `wrk -H "Connection: close", ${wrkConnections} connections, ${rounds > 1 ? `median of ${rounds} runs of ` : ''}${ctx.plan.seconds.wrk} s each way, interleaved; one linkgate process (workers: 1), one nginx backend (a plain listener and a proxy_protocol one)`
    const cell = (value: number, samples: readonly number[]): { value: number, samples?: readonly number[] } =>
      samples.length > 1 ? { value, samples } : { value }
    return [
      { ...base, metric: 'connection rate, proxyProtocol off', unit: 'conn/s', better: 'higher', cells: { 'linkgate-1': cell(offRate, off.map((r) => r.requestsPerSecond)) }, note },
      { ...base, metric: 'connection rate, proxyProtocol v2', unit: 'conn/s', better: 'higher', cells: { 'linkgate-1': cell(v2Rate, v2.map((r) => r.requestsPerSecond)) } },
      { ...base, metric: 'cost of v2 (1 − v2 ÷ off)', unit: '%', better: 'lower', cells: { 'linkgate-1': { value: cost } },
        target: { kind: 'absolute', max: 5, text: '≤ 5%' }, note: 'median of the per-round ratios (each round runs off and v2 back to back)' },
      { ...base, metric: 'linkgate CPU per connection, off (user + kernel)', unit: 'µs', better: 'lower',
        cells: { 'linkgate-1': { value: cpu(off, 'userMs') + cpu(off, 'systemMs') } } },
      { ...base, metric: 'linkgate CPU per connection, v2 (user + kernel)', unit: 'µs', better: 'lower',
        cells: { 'linkgate-1': { value: cpu(v2, 'userMs') + cpu(v2, 'systemMs') } } }
    ]
  } finally {
    for (const { serviceId, endpointId } of created.reverse()) {
      await api('DELETE', `/v1/endpoints/${endpointId}`).catch(() => {})
      await api('DELETE', `/v1/endpoint-services/${serviceId}`).catch(() => {})
    }
    await nginx.stop()
  }
}
