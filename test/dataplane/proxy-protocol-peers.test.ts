// PROXY protocol (SPEC §13) read by real third-party parsers: nginx (Debian's 1.22, `listen ...
// proxy_protocol`) reports the client's address and port and the endpoint's address and port
// from v1 and from v2 headers; HAProxy 2.6 (`bind ... accept-proxy`, which also verifies the
// CRC32C TLV) sees the client's address; HTTP health checks toward a backend that requires the
// header stay healthy thanks to the LOCAL header (and fail without it: the control).
// nginx and haproxy run from generated configs in a temp dir; a missing tool skips, or fails
// under CI=true. Addresses: 127.74.2.x.
import { connect } from 'node:net'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { Daemon, findTool, tcpAccepts, waitFor as waitUntil } from '../../bench/lib/proc.ts'
import type { EndpointService } from '../../src/control/model.ts'
import { createProxyHeaderEncoder } from '../../src/dataplane/proxy-protocol.ts'
import { freePort, makeBackend, startProxy, tempDir, updateService } from '../helpers/dataplane-fixtures.ts'
import { requireTools } from '../helpers/tools.ts'
import { backendOf, harness, putService, serviceId, serviceOf, waitForHealth } from './upstream/health-helpers.ts'

const ENDPOINT_IP = '127.74.2.10'
const CLIENT_IP = '127.74.2.20'
const NGINX_IP = '127.74.2.30'
const HAPROXY_IP = '127.74.2.31'

interface Peer { host: string, port: number }

/** nginx with one HTTP server that requires the PROXY header and answers with what it read. */
async function startNginx (t: Test): Promise<Peer> {
  const dir = await tempDir(t, 'linkgate-pp-nginx-')
  const port = await freePort(NGINX_IP)
  const file = join(dir, 'nginx.conf')
  await writeFile(file, [
    'worker_processes 1;',
    `pid ${join(dir, 'nginx.pid')};`,
    'error_log stderr warn;',
    'daemon off;',
    'events { worker_connections 64; }',
    'http {',
    '    access_log off;',
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((n) => `    ${n}_temp_path ${join(dir, n)};`),
    '    server {',
    `        listen ${NGINX_IP}:${port} proxy_protocol;`,
    '        default_type text/plain;',
    '        location / { return 200 "$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port|$remote_addr\\n"; }',
    '    }',
    '}',
    ''
  ].join('\n'))
  const daemon = new Daemon('nginx', findTool('nginx') as string, ['-e', 'stderr', '-p', dir, '-c', file], { cwd: dir })
  t.teardown(() => daemon.stop())
  await waitUntil('nginx to listen', 10_000, async () => {
    if (!daemon.running) throw new Error(`nginx exited: ${daemon.output()}`)
    return await tcpAccepts(NGINX_IP, port)
  })
  return { host: NGINX_IP, port }
}

/** HAProxy 2.6 in HTTP mode with accept-proxy, answering with the addresses it took from the header. */
async function startHaproxy (t: Test): Promise<Peer> {
  const dir = await tempDir(t, 'linkgate-pp-haproxy-')
  const port = await freePort(HAPROXY_IP)
  const file = join(dir, 'haproxy.cfg')
  await writeFile(file, [
    'defaults',
    '    mode http',
    '    timeout connect 3s',
    '    timeout client 10s',
    '    timeout server 10s',
    'frontend fe',
    `    bind ${HAPROXY_IP}:${port} accept-proxy`,
    '    http-request return status 200 content-type text/plain lf-string "%[src] %[src_port] %[dst] %[dst_port]\\n"',
    ''
  ].join('\n'))
  const daemon = new Daemon('haproxy', findTool('haproxy') as string, ['-db', '-f', file], { cwd: dir })
  t.teardown(() => daemon.stop())
  await waitUntil('haproxy to listen', 10_000, async () => {
    if (!daemon.running) throw new Error(`haproxy exited: ${daemon.output()}`)
    return await tcpAccepts(HAPROXY_IP, port)
  })
  return { host: HAPROXY_IP, port }
}

/** A GET through the endpoint from CLIENT_IP: the response body and the client's local port. */
function get (host: string, port: number): Promise<{ status: number, body: string, localPort: number }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, localAddress: CLIENT_IP })
    const chunks: Buffer[] = []
    let localPort = 0
    const timer = setTimeout(() => { socket.destroy(); reject(new Error('no response within 5 s')) }, 5000)
    socket.on('connect', () => {
      localPort = socket.localPort as number
      socket.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`)
    })
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', (err) => { clearTimeout(timer); reject(err) })
    socket.on('close', () => {
      clearTimeout(timer)
      const text = Buffer.concat(chunks).toString()
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0)
      resolve({ status, body: text.slice(text.indexOf('\r\n\r\n') + 4), localPort })
    })
  })
}

async function proxyTo (t: Test, peer: Peer, proxyProtocol: EndpointService['proxyProtocol']): Promise<{ port: number }> {
  const fx = await startProxy(t, { ip: ENDPOINT_IP, backends: [makeBackend(peer.host)], servicePort: peer.port })
  await updateService(fx.store, fx.service.id, () => ({ proxyProtocol }))
  return { port: fx.port }
}

for (const version of ['v1', 'v2'] as const) {
  t.test(`nginx reads the ${version} header: client address and port, endpoint address and port`, async (t) => {
    if (!requireTools(t, ['nginx'])) return
    const nginx = await startNginx(t)
    const { port } = await proxyTo(t, nginx, version)
    const r = await get(ENDPOINT_IP, port)
    t.equal(r.status, 200)
    const [fromHeader, remote] = r.body.trim().split('|')
    t.equal(fromHeader, `${CLIENT_IP} ${r.localPort} ${ENDPOINT_IP} ${port}`)
    t.not(remote, CLIENT_IP, 'the TCP peer nginx sees is linkgate, not the client: the address came from the header')
  })
}

t.test('nginx refuses a connection without the header (the control: off really sends nothing)', async (t) => {
  if (!requireTools(t, ['nginx'])) return
  const nginx = await startNginx(t)
  const { port } = await proxyTo(t, nginx, 'off')
  const r = await get(ENDPOINT_IP, port).catch(() => ({ status: 0, body: '', localPort: 0 }))
  t.not(r.status, 200)
})

for (const version of ['v1', 'v2'] as const) {
  t.test(`HAProxy accept-proxy reads the ${version} header (v2: with its CRC32C verified)`, async (t) => {
    if (!requireTools(t, ['haproxy'])) return
    const haproxy = await startHaproxy(t)
    const { port } = await proxyTo(t, haproxy, version)
    const r = await get(ENDPOINT_IP, port)
    t.equal(r.status, 200)
    t.equal(r.body.trim(), `${CLIENT_IP} ${r.localPort} ${ENDPOINT_IP} ${port}`)
  })
}

/** Send `header` + a GET straight to `peer` (no linkgate in between); the status, 0 when refused. */
function rawGet (peer: Peer, header: Buffer): Promise<number> {
  return new Promise((resolve) => {
    const socket = connect({ host: peer.host, port: peer.port, localAddress: CLIENT_IP })
    const chunks: Buffer[] = []
    const timer = setTimeout(() => socket.destroy(), 5000)
    socket.on('connect', () => socket.write(Buffer.concat([header, Buffer.from(`GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)])))
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', () => {})
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(Number(/^HTTP\/1\.[01] (\d{3})/.exec(Buffer.concat(chunks).toString())?.[1] ?? 0))
    })
  })
}

t.test('HAProxy checks the CRC32C TLV: a header from the encoder passes, the same header with one CRC bit flipped is refused', async (t) => {
  if (!requireTools(t, ['haproxy'])) return
  const haproxy = await startHaproxy(t)
  const header = createProxyHeaderEncoder('v2', ENDPOINT_IP, 443, 'vpce-0123456789ab').encode(CLIENT_IP, 40000) as Buffer
  t.equal(await rawGet(haproxy, header), 200)
  const bad = Buffer.from(header)
  bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 0x01 // the CRC TLV is the last field
  t.equal(await rawGet(haproxy, bad), 0, 'refused: HAProxy closes without a response')
})

for (const [version, tool] of [['v2', 'nginx'], ['v1', 'nginx'], ['v2', 'haproxy']] as const) {
  t.test(`an HTTP health check of a ${version} service keeps a ${tool} backend that requires the header healthy; without the header it fails`, async (t) => {
    if (!requireTools(t, [tool])) return
    const peer = tool === 'nginx' ? await startNginx(t) : await startHaproxy(t)
    const h = await harness(t)
    const id = serviceId()
    const be = backendOf('be-00007401', peer.host)
    const svc: EndpointService = {
      ...serviceOf(id, { backends: [be], port: peer.port, healthCheck: { protocol: 'HTTP', healthyThreshold: 2, unhealthyThreshold: 2 } }),
      proxyProtocol: version
    }
    await putService(h.store, svc)
    h.checker.start()
    await waitForHealth(h.upstream, id, be.id, 'healthy', 5000)
    t.equal(h.upstream.backendHealth(id, be.id), 'healthy')
    // The same backend checked without the header: the backend refuses, the check fails.
    await putService(h.store, { ...svc, proxyProtocol: 'off' }, 'updated')
    await waitForHealth(h.upstream, id, be.id, 'unhealthy', 5000)
    t.equal(h.upstream.backendHealth(id, be.id), 'unhealthy')
  })
}
