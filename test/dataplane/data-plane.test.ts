// The listener reconciler: store changes → listeners, real sockets on 127.21.10.0 - 127.21.29.255
// (each test takes its own /24).
import { createServer, type Socket } from 'node:net'
import t from 'tap'
import type { ListenerContext, ListenerFactory, ProxyListener } from '../../src/dataplane/listener.ts'
import {
  RecordingAccessLog, canConnect, closed, connectTo, deleteEndpoint, freePort, makeBackend, makeEndpoint, makeService,
  openStore, putEndpoint, putService, roundTrip, startDataPlane, startEchoServer, updateEndpoint, updateService, waitFor
} from '../helpers/dataplane-fixtures.ts'

/** Echo backends on `hosts`, all on one service port. */
async function echoBackends (t: Parameters<typeof startEchoServer>[0], hosts: string[]): Promise<{ port: number, servers: Array<Awaited<ReturnType<typeof startEchoServer>>> }> {
  const port = await freePort(hosts[0] as string)
  const servers = []
  for (const host of hosts) servers.push(await startEchoServer(t, host, port))
  return { port, servers }
}

t.test('an endpoint that becomes accepted listens within 1 s', async (t) => {
  const { port } = await echoBackends(t, ['127.21.10.1'])
  const store = await openStore(t)
  const terminalPort = await freePort('127.21.10.100')
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }], backends: [makeBackend('127.21.10.1')] })
  const endpoint = makeEndpoint(service, { ip: '127.21.10.100', status: 'pendingAcceptance' })
  await putService(store, service)
  await putEndpoint(store, endpoint)
  await startDataPlane(t, { store })
  t.equal(await canConnect('127.21.10.100', terminalPort), false, 'pendingAcceptance: nothing answers')
  await updateEndpoint(store, endpoint.id, { status: 'accepted' })
  const took = await waitFor(() => canConnect('127.21.10.100', terminalPort), 1000, 'listening after accept')
  t.ok(took <= 1000, `listening ${took} ms after the change was stored`)
  const client = await connectTo(t, '127.21.10.100', terminalPort)
  t.equal((await roundTrip(client, 'accepted')).toString(), 'accepted')
})

for (const [n, how] of [[11, 'rejected'], [12, 'deleted']] as const) {
  t.test(`an endpoint that is ${how} stops listening and its connections end`, async (t) => {
    const { port } = await echoBackends(t, [`127.21.${n}.1`])
    const store = await openStore(t)
    const ip = `127.21.${n}.100`
    const terminalPort = await freePort(ip)
    const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }], backends: [makeBackend(`127.21.${n}.1`)] })
    const endpoint = makeEndpoint(service, { ip })
    await putService(store, service)
    await putEndpoint(store, endpoint)
    const log = new RecordingAccessLog()
    const fx = await startDataPlane(t, { store, accessLog: log })
    const live = await connectTo(t, ip, terminalPort)
    t.equal((await roundTrip(live, 'before')).toString(), 'before')
    if (how === 'rejected') await updateEndpoint(store, endpoint.id, { status: 'rejected' })
    else await deleteEndpoint(store, endpoint.id)
    await closed(live, 1000)
    t.equal(await canConnect(ip, terminalPort), false, 'the port refuses')
    await waitFor(() => log.entries.length === 1, 1000, 'access log entry')
    t.equal(log.entries[0]?.closeReason, 'removed')
    t.same(fx.dataPlane.listeningEndpoints(), [])
  })
}

t.test('a terminal port already taken fails that endpoint with EADDRINUSE; the rest keeps serving', async (t) => {
  const { port } = await echoBackends(t, ['127.21.13.1'])
  const store = await openStore(t)
  const ip = '127.21.13.100'
  const freeTerminal = await freePort(ip)
  const squatter = createServer()
  await new Promise<void>((resolve) => squatter.listen({ host: ip, port: 0 }, resolve))
  t.teardown(() => squatter.close())
  const takenTerminal = (squatter.address() as { port: number }).port
  const service = makeService({
    portMappings: [
      { protocol: 'TCP', servicePort: port, terminalPort: freeTerminal },
      { protocol: 'TCP', servicePort: port, terminalPort: takenTerminal }
    ],
    backends: [makeBackend('127.21.13.1')]
  })
  const victim = makeEndpoint(service, { ip })
  const healthy = makeEndpoint(service, { ip: '127.21.13.101' })
  await putService(store, service)
  await putEndpoint(store, victim)
  await putEndpoint(store, healthy)
  const fx = await startDataPlane(t, { store })
  t.equal(fx.failures.length, 1)
  t.equal(fx.failures[0]?.endpointId, victim.id)
  t.match(fx.failures[0]?.reason, new RegExp(`^bind 127\\.21\\.13\\.100:${takenTerminal}: EADDRINUSE`))
  t.equal(await canConnect(ip, freeTerminal), false, "the endpoint's other listener was released")
  t.same(fx.dataPlane.listeningEndpoints(), [healthy.id])
  const client = await connectTo(t, '127.21.13.101', takenTerminal)
  t.equal((await roundTrip(client, 'alive')).toString(), 'alive', 'the other endpoint serves')
  // An unrelated change does not retry the failed bind over and over.
  await updateService(store, service.id, (s) => ({ backends: [...s.backends] }))
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(fx.failures.length, 1)
})

t.test('weights, backends and another endpoint change under 100 live connections, and every one keeps echoing', async (t) => {
  const { port, servers } = await echoBackends(t, ['127.21.14.1', '127.21.14.2', '127.21.14.3'])
  const [serverA, serverB, serverC] = servers as [typeof servers[0], typeof servers[0], typeof servers[0]]
  const store = await openStore(t)
  const terminalPort = await freePort('127.21.14.100')
  const a = makeBackend('127.21.14.1')
  const b = makeBackend('127.21.14.2')
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }], backends: [a, b] })
  const mine = makeEndpoint(service, { ip: '127.21.14.100' })
  const other = makeEndpoint(service, { ip: '127.21.14.101' })
  await putService(store, service)
  await putEndpoint(store, mine)
  await putEndpoint(store, other)
  const fx = await startDataPlane(t, { store })

  const live: Socket[] = []
  for (let i = 0; i < 100; i++) {
    const s = await connectTo(t, '127.21.14.100', terminalPort)
    t.equal((await roundTrip(s, `c${i}`)).toString(), `c${i}`)
    live.push(s)
  }
  t.equal(serverA.sockets.size, 50, 'half of them on backend a')
  t.equal(serverB.sockets.size, 50, 'half of them on backend b')
  const otherConn = await connectTo(t, '127.21.14.101', terminalPort)

  await updateService(store, service.id, () => ({ backends: [{ ...a, weight: 10 }, { ...b, weight: 90 }] }))
  const c = makeBackend('127.21.14.3')
  await updateService(store, service.id, (s) => ({ backends: [...s.backends, c] }))
  await updateService(store, service.id, () => ({ backends: [{ ...b, weight: 0 }, c] })) // a removed, b drained
  await deleteEndpoint(store, other.id)
  await closed(otherConn, 1000)
  await waitFor(async () => !(await canConnect('127.21.14.101', terminalPort)), 1000, 'deleted endpoint stops listening')

  let echoing = 0
  for (const [i, s] of live.entries()) {
    if ((await roundTrip(s, `after${i}`)).toString() === `after${i}`) echoing++
  }
  t.equal(echoing, 100, 'all 100 connections still echo')
  t.equal(live.filter((s) => s.closed).length, 0, 'none was closed')
  t.equal(serverA.sockets.size, 50, 'the removed backend keeps its live connections')

  const acceptedBefore = [serverA.accepted, serverB.accepted, serverC.accepted]
  for (let i = 0; i < 10; i++) {
    const s = await connectTo(t, '127.21.14.100', terminalPort)
    t.equal((await roundTrip(s, `new${i}`)).toString(), `new${i}`)
    s.destroy()
  }
  t.same([serverA.accepted - acceptedBefore[0]!, serverB.accepted - acceptedBefore[1]!, serverC.accepted - acceptedBefore[2]!], [0, 0, 10],
    'new connections avoid the removed and the weight-0 backend')
  t.same(fx.failures, [])
})

t.test('narrowing allowedSources refuses new connections from outside and keeps the live ones', async (t) => {
  const { port } = await echoBackends(t, ['127.21.15.1'])
  const store = await openStore(t)
  const terminalPort = await freePort('127.21.15.100')
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }], backends: [makeBackend('127.21.15.1')] })
  const endpoint = makeEndpoint(service, { ip: '127.21.15.100' })
  await putService(store, service)
  await putEndpoint(store, endpoint)
  await startDataPlane(t, { store })
  const live = await connectTo(t, '127.21.15.100', terminalPort, { localAddress: '127.21.15.200' })
  t.equal((await roundTrip(live, 'one')).toString(), 'one')
  await updateEndpoint(store, endpoint.id, { allowedSources: ['127.21.15.0/25'] })
  await waitFor(async () => {
    const s = await connectTo(t, '127.21.15.100', terminalPort, { localAddress: '127.21.15.201' })
    try {
      await roundTrip(s, 'x', 200)
      return false
    } catch {
      return true
    } finally {
      s.destroy()
    }
  }, 1000, 'outsiders refused')
  t.equal((await roundTrip(live, 'two')).toString(), 'two', 'the live connection continues')
  const insider = await connectTo(t, '127.21.15.100', terminalPort, { localAddress: '127.21.15.20' })
  t.equal((await roundTrip(insider, 'in')).toString(), 'in')
})

t.test('close(grace) stops accepting at once, lets live connections run, then ends them at the deadline', async (t) => {
  const { port } = await echoBackends(t, ['127.21.16.1'])
  const store = await openStore(t)
  const terminalPort = await freePort('127.21.16.100')
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }], backends: [makeBackend('127.21.16.1')] })
  await putService(store, service)
  await putEndpoint(store, makeEndpoint(service, { ip: '127.21.16.100' }))
  const log = new RecordingAccessLog()
  const fx = await startDataPlane(t, { store, accessLog: log })
  const live = await connectTo(t, '127.21.16.100', terminalPort)
  const closing = fx.dataPlane.close(400)
  t.equal(fx.dataPlane.close(400), closing, 'a second close returns the same promise')
  t.equal(await canConnect('127.21.16.100', terminalPort), false, 'no new connections')
  t.equal((await roundTrip(live, 'grace')).toString(), 'grace', 'the live one still works during the grace period')
  await closing
  await closed(live, 1000)
  await waitFor(() => log.entries.length === 1, 1000, 'access log entry')
  t.equal(log.entries[0]?.closeReason, 'shutdown')
})

t.test('close(grace) resolves as soon as the last live connection finishes', async (t) => {
  const { port } = await echoBackends(t, ['127.21.17.1'])
  const store = await openStore(t)
  const terminalPort = await freePort('127.21.17.100')
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }], backends: [makeBackend('127.21.17.1')] })
  await putService(store, service)
  await putEndpoint(store, makeEndpoint(service, { ip: '127.21.17.100' }))
  const fx = await startDataPlane(t, { store })
  const live = await connectTo(t, '127.21.17.100', terminalPort)
  t.equal((await roundTrip(live, 'x')).toString(), 'x')
  let resolved = false
  const closing = fx.dataPlane.close(30_000).then(() => { resolved = true })
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(resolved, false, 'waits while a connection is live')
  live.end()
  await waitFor(() => resolved, 2000, 'close resolved after the client left')
  await closing
})

t.test('UDP mappings go to udpFactory, and are skipped without one', async (t) => {
  const { port } = await echoBackends(t, ['127.21.18.1'])
  const terminalPort = await freePort('127.21.18.100')
  const service = makeService({
    portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }, { protocol: 'UDP', servicePort: 53, terminalPort: 5353 }],
    backends: [makeBackend('127.21.18.1')]
  })
  const endpoint = makeEndpoint(service, { ip: '127.21.18.100' })

  t.test('with a factory', async (t) => {
    const store = await openStore(t)
    await putService(store, service)
    await putEndpoint(store, endpoint)
    const calls: ListenerContext[] = []
    const destroyed: string[] = []
    const udpFactory: ListenerFactory = (ctx) => {
      calls.push(ctx)
      const listener: ProxyListener = {
        listen: async () => {},
        destroy: (reason) => { destroyed.push(reason) },
        close: async () => {}
      }
      return listener
    }
    await startDataPlane(t, { store, udpFactory })
    t.equal(calls.length, 1)
    t.match(calls[0]?.mapping, { protocol: 'UDP', servicePort: 53, terminalPort: 5353 })
    t.equal(calls[0]?.runtime.id, endpoint.id)
    const client = await connectTo(t, '127.21.18.100', terminalPort)
    t.equal((await roundTrip(client, 'tcp')).toString(), 'tcp')
    await deleteEndpoint(store, endpoint.id)
    await waitFor(() => destroyed.length === 1, 1000, 'udp listener destroyed')
    t.same(destroyed, ['removed'])
  })

  t.test('without a factory', async (t) => {
    const store = await openStore(t)
    await putService(store, service)
    await putEndpoint(store, endpoint)
    const fx = await startDataPlane(t, { store })
    t.same(fx.failures, [])
    t.same(fx.dataPlane.listeningEndpoints(), [endpoint.id])
    const client = await connectTo(t, '127.21.18.100', terminalPort)
    t.equal((await roundTrip(client, 'tcp')).toString(), 'tcp')
  })
})

t.test('a burst of changes to one endpoint converges on the last state', async (t) => {
  const { port } = await echoBackends(t, ['127.21.19.1'])
  const store = await openStore(t)
  const terminalPort = await freePort('127.21.19.100')
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }], backends: [makeBackend('127.21.19.1')] })
  const endpoint = makeEndpoint(service, { ip: '127.21.19.100', status: 'pendingAcceptance' })
  await putService(store, service)
  await putEndpoint(store, endpoint)
  const fx = await startDataPlane(t, { store })
  const changes: Array<Promise<unknown>> = []
  for (let i = 0; i < 10; i++) {
    changes.push(updateEndpoint(store, endpoint.id, { status: 'accepted' }))
    changes.push(updateEndpoint(store, endpoint.id, { status: 'rejected' }))
  }
  changes.push(updateEndpoint(store, endpoint.id, { status: 'accepted' }))
  await Promise.all(changes)
  await waitFor(() => canConnect('127.21.19.100', terminalPort), 1000, 'listening')
  const client = await connectTo(t, '127.21.19.100', terminalPort)
  t.equal((await roundTrip(client, 'last')).toString(), 'last')
  t.same(fx.failures, [], 'no bind ever collided with a listener being released')
})

t.test('a removed backend and a deleted service leave no per-backend series behind', async (t) => {
  const { port } = await echoBackends(t, ['127.21.30.1', '127.21.30.2'])
  const store = await openStore(t)
  const terminalPort = await freePort('127.21.30.100')
  const a = makeBackend('127.21.30.1')
  const b = makeBackend('127.21.30.2')
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }], backends: [a, b] })
  const endpoint = makeEndpoint(service, { ip: '127.21.30.100' })
  await putService(store, service)
  await putEndpoint(store, endpoint)
  const fx = await startDataPlane(t, { store })
  for (let i = 0; i < 4; i++) {
    const s = await connectTo(t, '127.21.30.100', terminalPort)
    t.equal((await roundTrip(s, `x${i}`)).toString(), `x${i}`)
    s.destroy()
  }
  const series = async (): Promise<string> => (await fx.metrics.registry.getSingleMetricAsString('linkgate_backend_connections_total'))
  t.match(await series(), a.id)
  t.match(await series(), b.id)

  await updateService(store, service.id, () => ({ backends: [b] }))
  await waitFor(async () => !(await series()).includes(a.id), 1000, 'series of the removed backend gone')
  t.match(await series(), new RegExp(`backend_id="${b.id}".* 2$`, 'm'), 'the remaining backend keeps its count')

  await deleteEndpoint(store, endpoint.id)
  await store.transact((draft) => {
    delete draft.services[service.id]
    return undefined
  })
  await waitFor(async () => !(await series()).includes(b.id), 1000, 'series of the deleted service gone')
  const histogram = await fx.metrics.registry.getSingleMetricAsString('linkgate_backend_connect_duration_seconds')
  t.notMatch(histogram, service.id, 'the connect histogram of the deleted service is gone')
})
