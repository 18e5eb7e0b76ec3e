// Active HTTP health checks against real HTTP servers on 127.24.2.x.
import { createServer, type Socket } from 'node:net'
import t from 'tap'
import { probeHttp } from '../../../src/dataplane/upstream/health-check-http.ts'
import { backendOf, harness, putService, serviceId, serviceOf, startBackends, waitForHealth, FAST_CHECK, TestBackend, type BackendKind, type TestLike } from './health-helpers.ts'

const intervalMs = FAST_CHECK.intervalSeconds * 1000
const timeoutMs = FAST_CHECK.timeoutSeconds * 1000
const verdictWithinMs = intervalMs * FAST_CHECK.unhealthyThreshold + timeoutMs + 1000

const answering = (status: number): BackendKind => ({
  kind: 'http',
  handler: (_req, res) => { res.writeHead(status, { 'content-type': 'text/plain' }).end(`status ${status}\n`) }
})

async function checkedService (t: TestLike, server: TestBackend, backendId: string): Promise<{ h: Awaited<ReturnType<typeof harness>>, id: string }> {
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, {
    port: server.port,
    backends: [backendOf(backendId, server.host)],
    healthCheck: { protocol: 'HTTP', path: '/healthz' }
  }))
  h.checker.start()
  return { h, id }
}

t.test('a backend answering 500 is unhealthy, with reason "HTTP 500"', async (t) => {
  const [server] = await startBackends(t, ['127.24.2.1'], answering(500)) as [TestBackend]
  const { h, id } = await checkedService(t, server, 'be-00000201')
  const down = await waitForHealth(h.upstream, id, 'be-00000201', 'unhealthy', verdictWithinMs)
  t.match(down.transition?.reason, /^HTTP 500 \(HTTP check failed 3 time\(s\) in a row\)$/)
})

t.test('a backend answering 200 is healthy', async (t) => {
  const [server] = await startBackends(t, ['127.24.2.2'], answering(200)) as [TestBackend]
  const { h, id } = await checkedService(t, server, 'be-00000202')
  const up = await waitForHealth(h.upstream, id, 'be-00000202', 'healthy', intervalMs * 3 + 1000)
  t.equal(up.transition?.from, 'unknown')
})

t.test('a backend that accepts but never answers fails the check as a timeout', async (t) => {
  const [server] = await startBackends(t, ['127.24.2.3'], { kind: 'hang' }) as [TestBackend]
  const { h, id } = await checkedService(t, server, 'be-00000203')
  const down = await waitForHealth(h.upstream, id, 'be-00000203', 'unhealthy', verdictWithinMs)
  t.match(down.transition?.reason, /^timeout \(HTTP check failed 3 time\(s\) in a row\)$/)
  t.ok(server.accepted.length >= 3, 'each probe did connect')
})

t.test('a 500 backend that recovers to 200 becomes healthy again', async (t) => {
  let status = 500
  const [server] = await startBackends(t, ['127.24.2.4'], {
    kind: 'http',
    handler: (_req, res) => { res.writeHead(status).end() }
  }) as [TestBackend]
  const { h, id } = await checkedService(t, server, 'be-00000204')
  await waitForHealth(h.upstream, id, 'be-00000204', 'unhealthy', verdictWithinMs)
  status = 204
  const up = await waitForHealth(h.upstream, id, 'be-00000204', 'healthy', intervalMs * FAST_CHECK.healthyThreshold + 1000)
  t.equal(up.transition?.from, 'unhealthy')
})

t.test('the check request is GET path with Host = backend address and Connection: close', async (t) => {
  const seen: Array<{ method?: string, url?: string, host?: string, connection?: string, version: string }> = []
  const [server] = await startBackends(t, ['127.24.2.5'], {
    kind: 'http',
    handler: (req, res) => {
      seen.push({ method: req.method, url: req.url, host: req.headers.host, connection: req.headers.connection, version: req.httpVersion })
      res.end('ok')
    }
  }) as [TestBackend]
  const result = await probeHttp({ host: server.host, port: server.port, path: '/healthz?deep=1', timeoutMs: 1000 })
  t.same(result, { ok: true })
  t.same(seen, [{ method: 'GET', url: '/healthz?deep=1', host: `127.24.2.5:${server.port}`, connection: 'close', version: '1.1' }])
})

t.test('a 3xx answer passes the check', async (t) => {
  const [server] = await startBackends(t, ['127.24.2.6'], {
    kind: 'http',
    handler: (_req, res) => { res.writeHead(302, { location: '/elsewhere' }).end() }
  }) as [TestBackend]
  t.same(await probeHttp({ host: server.host, port: server.port, path: '/', timeoutMs: 1000 }), { ok: true })
})

t.test('a 404 answer fails the check with reason "HTTP 404"', async (t) => {
  const [server] = await startBackends(t, ['127.24.2.11'], answering(404)) as [TestBackend]
  t.same(await probeHttp({ host: server.host, port: server.port, path: '/', timeoutMs: 1000 }), { ok: false, reason: 'HTTP 404' })
})

/** A raw TCP server that writes `reply` (in pieces) to every connection once it has read a request head. */
async function rawServer (t: TestLike, host: string, reply: string[]): Promise<number> {
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    socket.on('close', () => { sockets.delete(socket) })
    let head = ''
    socket.on('data', (chunk) => {
      head += chunk.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      head = ''
      for (const piece of reply) socket.write(piece)
    })
  })
  await new Promise<void>((resolve) => { server.listen({ host, port: 0 }, resolve) })
  t.teardown(() => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy()
    server.close(() => { resolve() })
  }))
  return (server.address() as { port: number }).port
}

t.test('an interim 103 response is skipped and the final status decides', async (t) => {
  const port = await rawServer(t, '127.24.2.7', [
    'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n',
    'HTTP/1.1 503 Service Unavailable\r\n',
    'Content-Length: 0\r\n\r\n'
  ])
  t.same(await probeHttp({ host: '127.24.2.7', port, path: '/', timeoutMs: 1000 }), { ok: false, reason: 'HTTP 503' })
})

t.test('a status line split across packets is read whole', async (t) => {
  const port = await rawServer(t, '127.24.2.8', ['HTT', 'P/1.1 2', '00 OK\r', '\nContent-Length: 0\r\n\r\n'])
  t.same(await probeHttp({ host: '127.24.2.8', port, path: '/', timeoutMs: 1000 }), { ok: true })
})

t.test('a response that is not HTTP fails the check as "bad response"', async (t) => {
  const port = await rawServer(t, '127.24.2.9', ['SSH-2.0-OpenSSH_9.6\r\n'])
  t.same(await probeHttp({ host: '127.24.2.9', port, path: '/', timeoutMs: 1000 }), { ok: false, reason: 'bad response' })
})

t.test('a backend that closes without answering fails the check', async (t) => {
  const [server] = await startBackends(t, ['127.24.2.10'], {
    kind: 'http',
    handler: (req) => { req.socket.destroy() }
  }) as [TestBackend]
  t.same(await probeHttp({ host: server.host, port: server.port, path: '/', timeoutMs: 1000 }), { ok: false, reason: 'closed by backend' })
})

t.test('the Host header of an IPv6 backend is bracketed', async (t) => {
  const hosts: Array<string | undefined> = []
  let server: TestBackend
  try {
    [server] = await startBackends(t, ['::1'], {
      kind: 'http',
      handler: (req, res) => { hosts.push(req.headers.host); res.end() }
    }) as [TestBackend]
  } catch (err) {
    // A host without IPv6 on loopback (some containers) cannot run this one.
    if ((err as NodeJS.ErrnoException).code !== 'EADDRNOTAVAIL') throw err
    await t.skip('::1 is not available on this host', () => {})
    return
  }
  t.same(await probeHttp({ host: '::1', port: server.port, path: '/', timeoutMs: 1000 }), { ok: true })
  t.same(hosts, [`[::1]:${server.port}`])
})
