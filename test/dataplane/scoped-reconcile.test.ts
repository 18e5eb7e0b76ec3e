// The data plane acts on the resources a change names (SPEC §11): a change to one endpoint
// leaves every other endpoint's listener and live connections alone, and an endpoint that goes
// takes every one of its metric series with it (found by its label sets, not by a scan).
import t from 'tap'
import {
  canConnect, connectTo, deleteEndpoint, freePort, makeBackend, makeEndpoint, makeService, openStore, putEndpoint, putService,
  roundTrip, startDataPlane, startEchoServer, updateEndpoint, waitFor
} from '../helpers/dataplane-fixtures.ts'

t.test('deleting one endpoint ends its listener and series only; the others keep their connections', async (t) => {
  const echo = await startEchoServer(t, '127.73.30.1')
  const store = await openStore(t)
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: echo.port, terminalPort: await freePort('127.73.30.10') }], backends: [makeBackend('127.73.30.1')] })
  await putService(store, service)
  const a = makeEndpoint(service, { ip: '127.73.30.10' })
  const b = makeEndpoint(service, { ip: '127.73.30.11' })
  await putEndpoint(store, a)
  await putEndpoint(store, b)
  const fx = await startDataPlane(t, { store })
  const port = service.portMappings[0]?.terminalPort as number
  const live = await connectTo(t, b.ip, port)
  t.equal((await roundTrip(live, 'one')).toString(), 'one')
  const viaA = await connectTo(t, a.ip, port)
  t.equal((await roundTrip(viaA, 'two')).toString(), 'two')
  const text = async (): Promise<string> => fx.metrics.registry.metrics()
  t.match(await text(), new RegExp(`endpoint_id="${a.id}"`))

  await deleteEndpoint(store, a.id)
  await waitFor(async () => !(await canConnect(a.ip, port, 200)), 1000, 'endpoint a stops listening')
  t.notMatch(await text(), new RegExp(`endpoint_id="${a.id}"`), 'no series of the deleted endpoint is left')
  t.match(await text(), new RegExp(`linkgate_connections_total\\{[^}]*endpoint_id="${b.id}"[^}]*\\} 1`), 'the other endpoint keeps its series')
  t.equal((await roundTrip(live, 'three')).toString(), 'three', 'the other endpoint\'s live connection is untouched')

  // A change of one endpoint (its allowed sources) reaches only that endpoint's runtime.
  await updateEndpoint(store, b.id, { allowedSources: ['127.73.0.0/16'] })
  t.equal((await roundTrip(live, 'four')).toString(), 'four')
  t.same(fx.dataPlane.listeningEndpoints(), [b.id])
})
