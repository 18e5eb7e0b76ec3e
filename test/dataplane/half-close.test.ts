// A pair that one side half-closed lives only tcpHalfCloseTimeoutSeconds without traffic
// (HAProxy's timeout client-fin / server-fin), while bytes that keep flowing in the open
// direction keep it; a connect_failed access-log line names the backend tried last.
// Addresses: 127.84.0.0/16, ports 0.
import { performance } from 'node:perf_hooks'
import t from 'tap'
import { buildConfig } from '../../src/config/load-config.ts'
import {
  RecordingAccessLog, connectTo, freePort, makeBackend, metricValue, readAll, startProxy, startTcpServer, waitFor
} from '../helpers/dataplane-fixtures.ts'

t.test('a client that sent its FIN toward a silent backend is closed after tcpHalfCloseTimeoutSeconds, not tcpIdleTimeoutSeconds', async (t) => {
  const port = await freePort('127.84.2.1')
  // Reads the request, never answers, never closes: the backend a half-close leaves hanging.
  await startTcpServer(t, '127.84.2.1', (s) => { s.on('error', () => {}); s.resume() }, port)
  const px = await startProxy(t, {
    ip: '127.84.2.100', servicePort: port, backends: [makeBackend('127.84.2.1')],
    config: { limits: { tcpIdleTimeoutSeconds: 120, tcpHalfCloseTimeoutSeconds: 0.4 } }
  })
  const client = await connectTo(t, '127.84.2.100', px.port, { allowHalfOpen: true })
  const started = performance.now()
  const got = readAll(client)
  client.end('request, then FIN\n')
  const result = await Promise.race([got, new Promise<null>((resolve) => setTimeout(() => resolve(null), 5000))])
  const waited = performance.now() - started
  t.not(result, null, 'closed well before the 120 s idle timeout')
  t.ok(waited >= 350, `not before the half-close timeout (${Math.round(waited)} ms)`)
  t.ok(waited < 3000, `within the timeout plus one sweep (${Math.round(waited)} ms)`)
  await waitFor(async () => await metricValue(px.metrics, 'linkgate_active_connections', { endpoint_id: px.endpoint.id, protocol: 'TCP' }) === 0,
    2000, 'the pair is gone (the backend side closed too)')
})

t.test('a half-closed pair whose other direction keeps moving bytes stays open past the half-close timeout', async (t) => {
  const port = await freePort('127.84.2.2')
  const chunks = 12
  // Answers after the client's FIN with one line every 150 ms (1.8 s in all), then ends.
  await startTcpServer(t, '127.84.2.2', (s) => {
    s.on('error', () => {})
    s.resume()
    s.on('end', () => {
      let sent = 0
      const timer = setInterval(() => {
        if (s.destroyed) { clearInterval(timer); return }
        s.write(`line ${sent}\n`)
        if (++sent === chunks) { clearInterval(timer); s.end() }
      }, 150)
    })
  }, port)
  const px = await startProxy(t, {
    ip: '127.84.2.101', servicePort: port, backends: [makeBackend('127.84.2.2')],
    config: { limits: { tcpIdleTimeoutSeconds: 120, tcpHalfCloseTimeoutSeconds: 0.5 } }
  })
  const client = await connectTo(t, '127.84.2.101', px.port, { allowHalfOpen: true })
  const got = readAll(client)
  client.end('go\n')
  const result = await got
  t.equal(result.error, null)
  t.equal(result.data.toString().split('\n').filter((l) => l !== '').length, chunks, 'every line arrived: traffic resets the half-close clock')
})

t.test('tcpHalfCloseTimeoutSeconds is validated and defaults to 30', async (t) => {
  t.equal(buildConfig({}).limits.tcpHalfCloseTimeoutSeconds, 30)
  t.throws(() => buildConfig({ limits: { tcpHalfCloseTimeoutSeconds: 0 } }), /limits\.tcpHalfCloseTimeoutSeconds: must be >= 0\.1/)
  t.throws(() => buildConfig({ limits: { tcpHalfCloseTimeoutSeconds: 'soon' } }), /limits\.tcpHalfCloseTimeoutSeconds: must be number/)
})

t.test('a connect_failed access-log line names the backend tried last', async (t) => {
  const port = await freePort('127.84.3.1')
  const a = makeBackend('127.84.3.1') // nothing listens on either: both refuse
  const b = makeBackend('127.84.3.2')
  const log = new RecordingAccessLog()
  const px = await startProxy(t, { ip: '127.84.3.100', servicePort: port, backends: [a, b], accessLog: log })
  const client = await connectTo(t, '127.84.3.100', px.port)
  const got = await readAll(client)
  t.equal(got.error?.code, 'ECONNRESET')
  await waitFor(() => log.entries.length === 1, 2000, 'one access-log line')
  const entry = log.entries[0]
  t.equal(entry?.closeReason, 'connect_failed')
  t.ok(entry?.backendId === a.id || entry?.backendId === b.id, `backendId ${String(entry?.backendId)} is one of the tried backends`)
  const last = entry?.backendId === a.id ? a : b
  t.equal(entry?.backendAddress, last.address)
  t.equal(entry?.zone, last.zone)
  t.equal(entry?.bytesToBackend, 0)
})
