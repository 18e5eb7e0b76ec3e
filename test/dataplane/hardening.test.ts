// SPEC §10, data-plane half, with real sockets in this process: bind retries back off and end
// with a delete; a backend that accepts and resets before its first byte; the connection budget
// shared by endpoints; the socket-error classifier and the budget's arithmetic.
// Addresses: 127.71.10.0 - 127.71.19.255.
import { createServer, type Server } from 'node:net'
import { performance } from 'node:perf_hooks'
import t from 'tap'
import {
  ConnectionBudget, defaultMaxConnections, resolveMaxConnections, softOpenFileLimit
} from '../../src/dataplane/connection-budget.ts'
import type { ListenerFactory } from '../../src/dataplane/listener.ts'
import { classifySocketError, isLocalTrouble } from '../../src/dataplane/socket-errors.ts'
import { createTcpListener } from '../../src/dataplane/tcp-proxy.ts'
import {
  canConnect, closed, connectTo, deleteEndpoint, makeBackend, makeEndpoint, makeService, metricValue, openStore, putEndpoint,
  putService, roundTrip, startDataPlane, startEchoServer, startProxy, startTcpServer, updateEndpoint, waitFor
} from '../helpers/dataplane-fixtures.ts'

async function squat (host: string): Promise<{ server: Server, port: number }> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen({ host, port: 0 }, resolve))
  return { server, port: (server.address() as { port: number }).port }
}

/** A TCP factory that records when each listener's bind is attempted. */
function countingFactory (attempts: number[]): ListenerFactory {
  return (ctx) => {
    const inner = createTcpListener(ctx)
    return {
      listen () { attempts.push(performance.now()); return inner.listen() },
      destroy (reason) { inner.destroy(reason) },
      close () { return inner.close() }
    }
  }
}

t.test('a failed bind is retried with a doubling delay up to the ceiling, and a delete ends the retries', async (t) => {
  const echo = await startEchoServer(t, '127.71.10.20')
  const ip = '127.71.10.10'
  const { server: squatter, port } = await squat(ip)
  t.teardown(() => squatter.close())
  const store = await openStore(t)
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: echo.port, terminalPort: port }], backends: [makeBackend('127.71.10.20')] })
  const endpoint = makeEndpoint(service, { ip })
  await putService(store, service)
  await putEndpoint(store, endpoint)
  const attempts: number[] = []
  const fx = await startDataPlane(t, {
    store,
    options: {
      tcpFactory: countingFactory(attempts),
      bindRetryMs: { first: 100, max: 400 },
      onEndpointFailed: (id, reason) => { void updateEndpoint(store, id, { status: 'failed', statusReason: reason }) }
    }
  })
  t.same(fx.dataPlane.listeningEndpoints(), [])
  await waitFor(() => attempts.length >= 5, 3000, 'five bind attempts')
  const gaps = attempts.slice(1, 5).map((at, i) => at - (attempts[i] as number))
  t.ok(gaps[0]! >= 95 && gaps[0]! < 250, `first retry after ~100 ms (${Math.round(gaps[0]!)})`)
  t.ok(gaps[1]! >= 195 && gaps[1]! < 350, `then ~200 ms (${Math.round(gaps[1]!)})`)
  t.ok(gaps[2]! >= 395 && gaps[2]! < 550, `then ~400 ms (${Math.round(gaps[2]!)})`)
  t.ok(gaps[3]! >= 395 && gaps[3]! < 550, `and no more than the ceiling, 400 ms (${Math.round(gaps[3]!)})`)
  t.equal(store.state.endpoints[endpoint.id]?.status, 'failed')

  await deleteEndpoint(store, endpoint.id)
  const after = attempts.length
  await new Promise((resolve) => setTimeout(resolve, 1000))
  t.equal(attempts.length, after, 'no bind attempt after the delete')
})

t.test('a retry that binds reports the endpoint recovered, and it serves', async (t) => {
  const echo = await startEchoServer(t, '127.71.11.20')
  const ip = '127.71.11.10'
  const { server: squatter, port } = await squat(ip)
  const store = await openStore(t)
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: echo.port, terminalPort: port }], backends: [makeBackend('127.71.11.20')] })
  const endpoint = makeEndpoint(service, { ip })
  await putService(store, service)
  await putEndpoint(store, endpoint)
  const recovered: string[] = []
  const fx = await startDataPlane(t, {
    store,
    options: {
      bindRetryMs: { first: 100, max: 100 },
      onEndpointFailed: (id, reason) => { void updateEndpoint(store, id, { status: 'failed', statusReason: reason }) },
      onEndpointRecovered: (id) => {
        recovered.push(id)
        void updateEndpoint(store, id, { status: 'accepted', statusReason: undefined })
      }
    }
  })
  await waitFor(() => store.state.endpoints[endpoint.id]?.status === 'failed', 1000, 'recorded as failed')
  await new Promise<void>((resolve) => squatter.close(() => resolve()))
  await waitFor(() => recovered.length === 1, 2000, 'recovery reported')
  t.same(recovered, [endpoint.id])
  await waitFor(() => store.state.endpoints[endpoint.id]?.status === 'accepted', 1000, 'accepted again')
  t.same(fx.dataPlane.listeningEndpoints(), [endpoint.id])
  const client = await connectTo(t, ip, port)
  t.equal((await roundTrip(client, 'healed')).toString(), 'healed')
})

t.test('a backend that accepts, then resets before its first byte: the client is reset, the backend is not blamed', async (t) => {
  // The reset comes 100 ms after the accept, so the proxy has seen the connection established
  // (and forwarded the client's bytes): as nginx stream and HAProxy, no retry elsewhere and no
  // mark against the backend's health.
  const rude = await startTcpServer(t, '127.71.12.20', (s) => { setTimeout(() => s.resetAndDestroy(), 100) })
  const backend = makeBackend('127.71.12.20')
  const px = await startProxy(t, { ip: '127.71.12.10', servicePort: rude.port, backends: [backend] })
  for (let i = 0; i < 5; i++) {
    const client = await connectTo(t, '127.71.12.10', px.port)
    const error = await new Promise<string>((resolve) => {
      client.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
      client.on('close', () => resolve('closed without error'))
      client.write('hello')
    })
    t.equal(error, 'ECONNRESET', `connection ${i}: the client sees a reset, as it would from the backend itself`)
  }
  t.equal(px.upstream.backendHealth(px.service.id, backend.id), 'unknown', 'no passive verdict: every connection was established')
  t.equal(px.upstream.record(px.service.id, backend.id).passiveFailures, 0, 'no failed connect counted')
  t.equal(await metricValue(px.metrics, 'linkgate_connections_refused_total', { endpoint_id: px.endpoint.id }), 0, 'nothing refused')
  t.equal(await metricValue(px.metrics, 'linkgate_backend_connections_total', { backend_id: backend.id }), 5, 'each counts as a connection to it')
})

t.test('a backend that resets as it accepts fails the connect: the next backend serves the client', async (t) => {
  // A reset that lands before the proxy saw its connect complete is a failed connect
  // (ECONNRESET from the connect): nothing of the client's was sent yet, so the next candidate
  // is tried, and the failure counts toward the passive verdict, as nginx's
  // ngx_stream_proxy_test_connect does. On loopback within one process the reset wins the race;
  // if it did not, the previous test's rules apply and the client is reset.
  const rude = await startTcpServer(t, '127.71.14.20', (s) => { s.resetAndDestroy() })
  const good = await startEchoServer(t, '127.71.14.21', rude.port)
  t.ok(good.port === rude.port)
  const a = makeBackend('127.71.14.20')
  const b = makeBackend('127.71.14.21')
  const px = await startProxy(t, { ip: '127.71.14.10', servicePort: rude.port, backends: [a, b] })
  let served = 0
  let reset = 0
  for (let i = 0; i < 8; i++) {
    const client = await connectTo(t, '127.71.14.10', px.port)
    client.on('error', () => {})
    try {
      if ((await roundTrip(client, `m${i}`, 1000)).toString() === `m${i}`) served++
    } catch {
      reset++
    }
    client.destroy()
  }
  t.equal(served + reset, 8)
  t.ok(served >= 6, `the good backend served the clients whose first pick reset (${served} served, ${reset} reset)`)
  if (reset === 0) {
    t.equal(px.upstream.backendHealth(px.service.id, a.id), 'unhealthy', 'three failed connects: the resetting backend is unhealthy')
  }
})

t.test('the connection budget is shared by every endpoint: past it, refused as overload on whichever endpoint', async (t) => {
  const echo = await startEchoServer(t, '127.71.13.20')
  const store = await openStore(t)
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: echo.port, terminalPort: 7313 }], backends: [makeBackend('127.71.13.20')] })
  const a = makeEndpoint(service, { ip: '127.71.13.10' })
  const b = makeEndpoint(service, { ip: '127.71.13.11' })
  await putService(store, service)
  await putEndpoint(store, a)
  await putEndpoint(store, b)
  const budget = new ConnectionBudget(3)
  const fx = await startDataPlane(t, { store, options: { budget } })
  const live = []
  for (const ip of ['127.71.13.10', '127.71.13.10', '127.71.13.11']) {
    const c = await connectTo(t, ip, 7313)
    t.equal((await roundTrip(c, 'in')).toString(), 'in')
    live.push(c)
  }
  t.equal(budget.active, 3)
  const refused = await connectTo(t, '127.71.13.11', 7313)
  await closed(refused, 1000)
  t.equal(await metricValue(fx.metrics, 'linkgate_connections_refused_total', { endpoint_id: b.id, reason: 'overload' }), 1)
  live[0]?.destroy()
  await waitFor(() => budget.active === 2, 1000, 'slot released')
  const again = await connectTo(t, '127.71.13.11', 7313)
  t.equal((await roundTrip(again, 'again')).toString(), 'again', 'a freed slot serves any endpoint')
  t.ok(await canConnect('127.71.13.10', 7313))
})

t.test('socket errors: local trouble is never the backend\'s fault', async (t) => {
  for (const code of ['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM', 'EADDRNOTAVAIL']) {
    t.equal(classifySocketError(Object.assign(new Error(code), { code })), 'local', code)
    t.ok(isLocalTrouble({ code }))
  }
  for (const code of ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH']) {
    t.equal(classifySocketError({ code }), 'backend', code)
  }
  t.equal(classifySocketError(new Error('no code')), 'other')
  t.equal(classifySocketError(undefined), 'other')
})

t.test('limits.maxConnections: derived from the soft open-file limit, an explicit value it cannot carry is refused', async (t) => {
  t.equal(defaultMaxConnections(20000), 9488, 'SPEC §10 example')
  t.equal(defaultMaxConnections(1024), 64, 'never under 64')
  t.equal(defaultMaxConnections(1200), 88)
  t.equal(softOpenFileLimit('Limit Soft Limit Hard Limit Units\nMax open files            1200                 4096                 files\n'), 1200)
  t.equal(softOpenFileLimit('Max open files            unlimited            unlimited            files\n'), undefined)
  t.equal(typeof softOpenFileLimit(), 'number', 'this Linux process has one')
  t.equal(resolveMaxConnections(undefined, 20000), 9488)
  t.equal(resolveMaxConnections(88, 1200), 88, '2 × 88 + 1024 = 1200 fits')
  t.throws(() => resolveMaxConnections(89, 1200), /limits\.maxConnections: 89 needs 1202 open files .* is 1200/)
  const budget = new ConnectionBudget(2)
  t.ok(budget.tryAcquire())
  t.ok(budget.tryAcquire())
  t.notOk(budget.tryAcquire(), 'full')
  budget.release()
  t.ok(budget.tryAcquire(), 'a released slot can be taken again')
})

t.test('a deleted endpoint leaves none of its series behind (removed by the label sets it created)', async (t) => {
  const echo = await startEchoServer(t, '127.71.15.20')
  const px = await startProxy(t, { ip: '127.71.15.10', servicePort: echo.port, backends: [makeBackend('127.71.15.20')], allowedSources: ['127.0.0.1/32'] })
  const client = await connectTo(t, '127.71.15.10', px.port)
  t.equal((await roundTrip(client, 'x')).toString(), 'x')
  const outsider = await connectTo(t, '127.71.15.10', px.port, { localAddress: '127.71.15.99' })
  await closed(outsider, 1000)
  const text = async (): Promise<string> => await px.metrics.registry.metrics()
  for (const name of ['linkgate_connections_total', 'linkgate_active_connections', 'linkgate_bytes_total', 'linkgate_connections_refused_total']) {
    t.match(await text(), new RegExp(`^${name}\\{[^}]*endpoint_id="${px.endpoint.id}"`, 'm'), `${name} has the endpoint's series`)
  }
  await deleteEndpoint(px.store, px.endpoint.id)
  await waitFor(async () => !(await text()).includes(px.endpoint.id), 1000, 'every series of the endpoint gone')
  t.notMatch(await text(), px.endpoint.id)
})
