// TCP proxy behaviour through a real DataPlane, real sockets on 127.21.0.0/16 (this file:
// 127.21.1.0 - 127.21.9.255, 127.21.30.0/24 and 127.21.31.0/24). Each test takes its own /24.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import {
  RecordingAccessLog, canConnect, closed, connectTo, fetchId, freePort, makeBackend, makeEndpoint, makeService, metricValue,
  openStore, putEndpoint, putService, readAll, roundTrip, startEchoServer, startIdServer, startProxy, startTcpServer,
  waitFor, type Teardown
} from '../helpers/dataplane-fixtures.ts'

t.test('bytes pass unchanged both ways and are counted', async (t) => {
  const port = await freePort('127.21.1.1')
  await startEchoServer(t, '127.21.1.1', port)
  const px = await startProxy(t, { ip: '127.21.1.100', servicePort: port, backends: [makeBackend('127.21.1.1')] })
  const payload = randomBytes(8 * 1024 * 1024)
  const client = await connectTo(t, '127.21.1.100', px.port, { allowHalfOpen: true })
  const received = readAll(client)
  client.end(payload)
  const got = await received
  t.equal(got.error, null)
  t.equal(got.data.length, payload.length)
  t.ok(got.data.equals(payload), 'echoed bytes are identical')
  const labels = { endpoint_id: px.endpoint.id, protocol: 'TCP' }
  t.equal(await metricValue(px.metrics, 'linkgate_bytes_total', { ...labels, direction: 'client_to_backend' }), payload.length)
  t.equal(await metricValue(px.metrics, 'linkgate_bytes_total', { ...labels, direction: 'backend_to_client' }), payload.length)
  t.equal(await metricValue(px.metrics, 'linkgate_connections_total', { ...labels, terminal_port: String(px.port) }), 1)
})

t.test('bytes from the backend stay intact when a slow client makes the proxy queue its writes', async (t) => {
  const payload = randomBytes(24 * 1024 * 1024)
  const port = await freePort('127.21.1.4')
  await startTcpServer(t, '127.21.1.4', (s) => { s.on('error', () => {}); s.end(payload) }, port)
  const px = await startProxy(t, { ip: '127.21.1.103', servicePort: port, backends: [makeBackend('127.21.1.4')] })
  const client = await connectTo(t, '127.21.1.103', px.port)
  const chunks: Buffer[] = []
  let got = 0
  // Stall the reader for 5 ms after every 256 KiB, so the proxy's writes to it back up.
  const done = new Promise<void>((resolve, reject) => {
    let sinceStall = 0
    client.on('data', (c: Buffer) => {
      chunks.push(c)
      got += c.length
      sinceStall += c.length
      if (sinceStall >= 256 * 1024) {
        sinceStall = 0
        client.pause()
        setTimeout(() => client.resume(), 5)
      }
    })
    client.on('end', resolve)
    client.on('error', reject)
  })
  await done
  t.equal(got, payload.length)
  t.ok(Buffer.concat(chunks).equals(payload), 'byte for byte the same')
})

t.test('1,000 connections over weights 100 and 50 split 2:1, never more than 2 in a row to the heavy one', async (t) => {
  const port = await freePort('127.21.2.1')
  await startIdServer(t, '127.21.2.1', 'heavy', port)
  await startIdServer(t, '127.21.2.2', 'light', port)
  const heavy = makeBackend('127.21.2.1', 'zone-a', 100)
  const light = makeBackend('127.21.2.2', 'zone-a', 50)
  const px = await startProxy(t, { ip: '127.21.2.100', servicePort: port, backends: [heavy, light] })
  const seq: string[] = []
  const deadline = Date.now() + 60_000
  for (let i = 0; i < 1000 && Date.now() < deadline; i++) seq.push(await fetchId('127.21.2.100', px.port))
  t.equal(seq.length, 1000)
  const heavyCount = seq.filter((id) => id === 'heavy').length
  t.ok(Math.abs(heavyCount / 1000 - 2 / 3) <= 0.02, `heavy share ${heavyCount / 10}% is 66.7% ± 2%`)
  t.equal(seq.length - heavyCount, seq.filter((id) => id === 'light').length, 'every answer came from one of the two')
  let run = 0
  let longest = 0
  for (const id of seq) {
    run = id === 'heavy' ? run + 1 : 0
    longest = Math.max(longest, run)
  }
  t.equal(longest, 2, 'longest run to the heavy backend')
  const perBackend = async (id: string): Promise<number> =>
    metricValue(px.metrics, 'linkgate_backend_connections_total', { service_id: px.service.id, backend_id: id })
  t.equal(await perBackend(heavy.id), heavyCount)
  t.equal(await perBackend(light.id), 1000 - heavyCount)
})

t.test('an endpoint in zone-a reaches only zone-a backends while one is eligible', async (t) => {
  const port = await freePort('127.21.3.1')
  await startIdServer(t, '127.21.3.1', 'a', port)
  await startIdServer(t, '127.21.3.2', 'b', port)
  const px = await startProxy(t, {
    ip: '127.21.3.100', zone: 'zone-a', servicePort: port,
    backends: [makeBackend('127.21.3.1', 'zone-a', 10), makeBackend('127.21.3.2', 'zone-b', 100)]
  })
  const seen = new Set<string>()
  for (let i = 0; i < 50; i++) seen.add(await fetchId('127.21.3.100', px.port))
  t.same([...seen], ['a'])
})

t.test('an endpoint in zone-a reaches zone-b when no zone-a backend is eligible', async (t) => {
  const port = await freePort('127.21.4.1')
  await startIdServer(t, '127.21.4.1', 'a', port)
  await startIdServer(t, '127.21.4.2', 'b', port)
  const zoneA = makeBackend('127.21.4.1', 'zone-a', 10)
  const px = await startProxy(t, {
    ip: '127.21.4.100', zone: 'zone-a', servicePort: port, backends: [zoneA, makeBackend('127.21.4.2', 'zone-b', 100)]
  })
  t.equal(await fetchId('127.21.4.100', px.port), 'a')
  px.upstream.setHealth(px.upstream.record(px.service.id, zoneA.id), 'unhealthy', 'test verdict')
  const seen = new Set<string>()
  for (let i = 0; i < 20; i++) seen.add(await fetchId('127.21.4.100', px.port))
  t.same([...seen], ['b'])
})

t.test('a backend that refuses connections is skipped and every client gets through', async (t) => {
  const port = await freePort('127.21.5.1')
  await startIdServer(t, '127.21.5.2', 'live', port)
  const dead = makeBackend('127.21.5.1', 'zone-a', 100) // nothing listens there: connect is refused
  const px = await startProxy(t, { ip: '127.21.5.100', servicePort: port, backends: [dead, makeBackend('127.21.5.2', 'zone-a', 100)] })
  for (let i = 0; i < 10; i++) t.equal(await fetchId('127.21.5.100', px.port), 'live', `connection ${i}`)
  t.equal(await metricValue(px.metrics, 'linkgate_connections_refused_total', { endpoint_id: px.endpoint.id }), 0)
  t.equal(px.upstream.backendHealth(px.service.id, dead.id), 'unhealthy', 'three failed connects mark it unhealthy')
})

/**
 * A backend whose connects hang: a child process listening with backlog 1, stopped (SIGSTOP),
 * its accept queue filled. The kernel then drops further SYNs, so a connect neither succeeds nor
 * is refused — what a blackholed or overloaded host looks like.
 */
async function startStalledBackend (t: Teardown, host: string): Promise<number> {
  const script = "const s = require('node:net').createServer(() => {}); " +
    `s.listen({ host: '${host}', port: 0, backlog: 1 }, () => console.log(s.address().port))`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill('SIGKILL') })
  const [line] = await once(child.stdout, 'data') as [Buffer]
  const port = Number(line.toString().trim())
  child.kill('SIGSTOP')
  const fillers: Socket[] = []
  t.teardown(() => { for (const s of fillers) s.destroy() })
  for (let i = 0; i < 4; i++) {
    const s = connect({ host, port })
    s.on('error', () => {})
    fillers.push(s)
  }
  // The queue is full once a further connect stays pending.
  await waitFor(async () => !(await canConnect(host, port, 200)), 5000, 'the stalled backend to stop completing connects')
  return port
}

t.test('a backend whose connect hangs is given up after connectTimeoutMs and the next candidate serves', async (t) => {
  const stalledPort = await startStalledBackend(t, '127.21.31.1')
  // Both backends on the stalled port number: linkgate maps one servicePort for all backends.
  await startIdServer(t, '127.21.31.2', 'live', stalledPort)
  const stalled = makeBackend('127.21.31.1', 'zone-a', 200)
  const live = makeBackend('127.21.31.2', 'zone-a', 100)
  const px = await startProxy(t, {
    ip: '127.21.31.100', servicePort: stalledPort, backends: [stalled, live], config: { limits: { connectTimeoutMs: 300 } }
  })
  const started = performance.now()
  // Weight 200 against 100: smooth WRR picks the stalled backend first.
  t.equal(await fetchId('127.21.31.100', px.port), 'live', 'the client is served by the next candidate')
  const waited = performance.now() - started
  t.ok(waited >= 290, `the first attempt was given its connectTimeoutMs before failing over (${Math.round(waited)} ms)`)
  t.equal(await metricValue(px.metrics, 'linkgate_connections_refused_total', { endpoint_id: px.endpoint.id }), 0)
  t.equal(await metricValue(px.metrics, 'linkgate_backend_connections_total', { backend_id: stalled.id }), 0)
})

t.test('when the only backend hangs, the client is reset once connectTimeoutMs passes and counted as connect_failed', async (t) => {
  const port = await startStalledBackend(t, '127.21.31.3')
  const px = await startProxy(t, {
    ip: '127.21.31.101', servicePort: port, backends: [makeBackend('127.21.31.3')], config: { limits: { connectTimeoutMs: 200 } }
  })
  const started = performance.now()
  const client = await connectTo(t, '127.21.31.101', px.port)
  const got = await readAll(client)
  const waited = performance.now() - started
  t.equal(got.error?.code, 'ECONNRESET')
  // One backend: the attempts after the first find no untried candidate, so one timeout ends it.
  t.ok(waited >= 190, `reset only after the connect timed out (${Math.round(waited)} ms)`)
  t.equal(await metricValue(px.metrics, 'linkgate_connections_refused_total', { endpoint_id: px.endpoint.id, reason: 'connect_failed' }), 1)
  t.equal(px.upstream.backendHealth(px.service.id, px.service.backends[0]?.id ?? ''), 'unknown', 'one timeout is not three failures')
})

t.test('when every backend refuses, the client is reset and the refusal counted as connect_failed', async (t) => {
  const port = await freePort('127.21.6.1')
  const px = await startProxy(t, {
    ip: '127.21.6.100', servicePort: port, backends: [makeBackend('127.21.6.1'), makeBackend('127.21.6.2')]
  })
  const client = await connectTo(t, '127.21.6.100', px.port)
  const got = await readAll(client)
  t.equal(got.error?.code, 'ECONNRESET')
  t.equal(got.data.length, 0)
  t.equal(await metricValue(px.metrics, 'linkgate_connections_refused_total', { endpoint_id: px.endpoint.id, reason: 'connect_failed' }), 1)
  t.equal(await metricValue(px.metrics, 'linkgate_connections_total', { endpoint_id: px.endpoint.id }), 0, 'not admitted')
})

t.test('with no backend at all, the client is reset and the refusal counted as no_backend', async (t) => {
  const px = await startProxy(t, { ip: '127.21.6.101', servicePort: 9, backends: [] })
  // The reset can come before the client has seen its own connect complete: read errors from the start.
  const client = connect({ host: '127.21.6.101', port: px.port })
  t.teardown(() => client.destroy())
  const got = await readAll(client)
  t.equal(got.error?.code, 'ECONNRESET')
  t.equal(await metricValue(px.metrics, 'linkgate_connections_refused_total', { endpoint_id: px.endpoint.id, reason: 'no_backend' }), 1)
})

t.test('half-close: a client that shuts its write side still receives everything the backend sends afterwards', async (t) => {
  const tail = randomBytes(2 * 1024 * 1024)
  const port = await freePort('127.21.7.1')
  await startTcpServer(t, '127.21.7.1', (s) => {
    const chunks: Buffer[] = []
    s.on('data', (c: Buffer) => chunks.push(c))
    // Only after the client's FIN has arrived does the backend answer.
    s.on('end', () => { s.write(`got:${Buffer.concat(chunks).toString()};`); s.end(tail) })
  }, port)
  const px = await startProxy(t, { ip: '127.21.7.100', servicePort: port, backends: [makeBackend('127.21.7.1')] })
  const client = await connectTo(t, '127.21.7.100', px.port, { allowHalfOpen: true })
  const received = readAll(client)
  client.end('hello')
  const got = await received
  t.equal(got.error, null)
  const head = Buffer.from('got:hello;')
  t.equal(got.data.length, head.length + tail.length)
  t.ok(got.data.subarray(0, head.length).equals(head), 'the backend saw the data and the FIN')
  t.ok(got.data.subarray(head.length).equals(tail), 'everything sent after the FIN arrived')
})

t.test('half-close: after the backend shuts its write side the client can still send to it', async (t) => {
  const port = await freePort('127.21.7.2')
  let backendGot: Promise<string> | undefined
  await startTcpServer(t, '127.21.7.2', (s) => {
    s.end('bye')
    backendGot = new Promise((resolve) => {
      const chunks: Buffer[] = []
      s.on('data', (c: Buffer) => chunks.push(c))
      s.on('end', () => resolve(Buffer.concat(chunks).toString()))
    })
  }, port)
  const px = await startProxy(t, { ip: '127.21.7.101', servicePort: port, backends: [makeBackend('127.21.7.2')] })
  const client = await connectTo(t, '127.21.7.101', px.port, { allowHalfOpen: true })
  const fromBackend = await new Promise<string>((resolve) => {
    const chunks: Buffer[] = []
    client.on('data', (c: Buffer) => chunks.push(c))
    client.on('end', () => resolve(Buffer.concat(chunks).toString()))
  })
  t.equal(fromBackend, 'bye')
  client.end('still here')
  t.equal(await backendGot, 'still here')
  await closed(client)
})

t.test('the connection past maxConnectionsPerEndpoint is closed at once while the others stay up', async (t) => {
  const port = await freePort('127.21.8.1')
  await startEchoServer(t, '127.21.8.1', port)
  const px = await startProxy(t, {
    ip: '127.21.8.100', servicePort: port, backends: [makeBackend('127.21.8.1')], config: { limits: { maxConnectionsPerEndpoint: 3 } }
  })
  const live: Socket[] = []
  for (let i = 0; i < 3; i++) {
    const s = await connectTo(t, '127.21.8.100', px.port)
    t.equal((await roundTrip(s, `hi ${i}`)).toString(), `hi ${i}`)
    live.push(s)
  }
  const extra = await connectTo(t, '127.21.8.100', px.port)
  const got = readAll(extra)
  extra.write('anyone?')
  t.equal((await got).data.length, 0, 'the fourth gets nothing back')
  t.equal(await metricValue(px.metrics, 'linkgate_connections_refused_total', { endpoint_id: px.endpoint.id, reason: 'limit' }), 1)
  for (const [i, s] of live.entries()) t.equal((await roundTrip(s, `still ${i}`)).toString(), `still ${i}`)
  live[0]?.destroy()
  await waitFor(async () => {
    const s = connect({ host: '127.21.8.100', port: px.port })
    s.on('error', () => {})
    try {
      return (await roundTrip(s, 'slot', 300)).toString() === 'slot'
    } catch {
      return false
    } finally {
      s.destroy()
    }
  }, 2000, 'a freed slot is usable again')
})

t.test('a source outside allowedSources is closed at once and counted', async (t) => {
  const port = await freePort('127.21.9.1')
  await startEchoServer(t, '127.21.9.1', port)
  const px = await startProxy(t, {
    ip: '127.21.9.100', servicePort: port, backends: [makeBackend('127.21.9.1')], allowedSources: ['127.21.9.0/28']
  })
  const outsider = await connectTo(t, '127.21.9.100', px.port, { localAddress: '127.21.9.200' })
  const got = readAll(outsider)
  outsider.write('let me in')
  t.equal((await got).data.length, 0)
  t.equal(await metricValue(px.metrics, 'linkgate_connections_refused_total', { endpoint_id: px.endpoint.id, reason: 'source' }), 1)
  const insider = await connectTo(t, '127.21.9.100', px.port, { localAddress: '127.21.9.5' })
  t.equal((await roundTrip(insider, 'hello')).toString(), 'hello')
})

t.test('tcpIdleTimeoutSeconds closes an idle pair, and the access log says idle', async (t) => {
  const port = await freePort('127.21.1.2')
  await startEchoServer(t, '127.21.1.2', port)
  const log = new RecordingAccessLog()
  const backend = makeBackend('127.21.1.2')
  const px = await startProxy(t, {
    ip: '127.21.1.101', servicePort: port, backends: [backend], accessLog: log, config: { limits: { tcpIdleTimeoutSeconds: 0.8 } }
  })
  const busy = await connectTo(t, '127.21.1.101', px.port)
  const idle = await connectTo(t, '127.21.1.101', px.port)
  t.equal((await roundTrip(idle, 'x')).toString(), 'x')
  const idleClosed = closed(idle, 4000)
  // The busy one keeps talking every 100 ms, well past the idle timeout.
  for (let i = 0; i < 15; i++) {
    t.equal((await roundTrip(busy, `b${i}`)).toString(), `b${i}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  await idleClosed
  t.notOk(busy.closed, 'a busy pair is not idle')
  await waitFor(() => log.entries.length === 1, 1000, 'access log entry')
  const entry = log.entries[0]
  t.match(entry, {
    endpointId: px.endpoint.id, serviceId: px.service.id, protocol: 'TCP', terminalPort: px.port,
    backendId: backend.id, backendAddress: '127.21.1.2', zone: 'zone-a', bytesToBackend: 1, bytesToClient: 1, closeReason: 'idle'
  })
  t.match(entry?.client, /^127\.\d+\.\d+\.\d+:\d+$/)
})

t.test('access log: a client that closes gets one entry with its bytes and reason client', async (t) => {
  const port = await freePort('127.21.1.3')
  await startEchoServer(t, '127.21.1.3', port)
  const log = new RecordingAccessLog()
  const px = await startProxy(t, { ip: '127.21.1.102', servicePort: port, backends: [makeBackend('127.21.1.3')], accessLog: log })
  const client = await connectTo(t, '127.21.1.102', px.port, { allowHalfOpen: true })
  const got = readAll(client)
  client.end('12345')
  t.equal((await got).data.toString(), '12345')
  await waitFor(() => log.entries.length === 1, 1000, 'access log entry')
  t.match(log.entries[0], { bytesToBackend: 5, bytesToClient: 5, closeReason: 'client' })
  t.equal(await metricValue(px.metrics, 'linkgate_active_connections', { endpoint_id: px.endpoint.id, protocol: 'TCP' }), 0)
})

function vmRssBytes (pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (m === null) throw new Error(`no VmRSS for ${pid}`)
  return Number(m[1]) * 1024
}

t.test('backpressure: 512 MiB to a slow reader grows the proxy RSS by less than 64 MiB', async (t) => {
  const TOTAL = 512 * 1024 * 1024
  const WARM_UP = 32 * 1024 * 1024
  const READ_RATE = 80 * 1024 * 1024 // bytes per second the client accepts; the backend sends as fast as it can
  const chunk = randomBytes(1024 * 1024)
  const port = await freePort('127.21.30.1')
  await startTcpServer(t, '127.21.30.1', (s) => {
    let sent = 0
    const pump = (): void => {
      while (sent < TOTAL && !s.destroyed) {
        sent += chunk.length
        if (!s.write(chunk)) { s.once('drain', pump); return }
      }
      s.end()
    }
    s.on('error', () => {})
    pump()
  }, port)

  const store = await openStore(t)
  const terminalPort = await freePort('127.21.30.100')
  const service = makeService({ portMappings: [{ protocol: 'TCP', servicePort: port, terminalPort }], backends: [makeBackend('127.21.30.1')] })
  const endpoint = makeEndpoint(service, { ip: '127.21.30.100' })
  await putService(store, service)
  await putEndpoint(store, endpoint)
  // The proxy runs alone in its process (without tap's preloads), so VmRSS is its own.
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const fixture = fileURLToPath(new URL('../fixtures/dataplane-proxy.ts', import.meta.url))
  const child = spawn(process.execPath, [fixture, dirname(store.file)], { stdio: ['pipe', 'pipe', 'inherit'], env })
  t.teardown(() => { child.stdin.end(); child.kill() })
  const ready = await new Promise<{ pid: number, listening: string[] }>((resolve, reject) => {
    let buf = ''
    child.stdout.on('data', (c: Buffer) => {
      buf += c.toString()
      const nl = buf.indexOf('\n')
      if (nl >= 0) resolve(JSON.parse(buf.slice(0, nl)) as { pid: number, listening: string[] })
    })
    child.once('exit', (code) => reject(new Error(`proxy exited early with ${code}`)))
  })
  t.same(ready.listening, [endpoint.id])

  // Warm up (code compiled, allocator and GC at their working size) before the baseline.
  const warm = await connectTo(t, '127.21.30.100', terminalPort)
  await new Promise<void>((resolve) => {
    let got = 0
    warm.on('data', (c: Buffer) => { got += c.length; if (got >= WARM_UP) { warm.destroy(); resolve() } })
  })
  await new Promise((resolve) => setTimeout(resolve, 200))
  const baseline = vmRssBytes(ready.pid)

  let maxRss = baseline
  const sampler = setInterval(() => { maxRss = Math.max(maxRss, vmRssBytes(ready.pid)) }, 50)
  t.teardown(() => clearInterval(sampler))
  const client = await connectTo(t, '127.21.30.100', terminalPort)
  client.pause()
  let received = 0
  let budget = 0
  const tick = 10
  const refill = setInterval(() => {
    budget = Math.min(budget + READ_RATE * tick / 1000, READ_RATE * tick / 1000)
    if (budget > 0 && client.isPaused()) client.resume()
  }, tick)
  t.teardown(() => clearInterval(refill))
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${received} of ${TOTAL} bytes within 45 s`)), 45_000)
    client.on('data', (c: Buffer) => {
      received += c.length
      budget -= c.length
      if (budget <= 0) client.pause()
    })
    client.on('end', () => { clearTimeout(timer); resolve() })
    client.on('error', (err) => { clearTimeout(timer); reject(err) })
  })
  clearInterval(refill)
  clearInterval(sampler)
  maxRss = Math.max(maxRss, vmRssBytes(ready.pid))
  t.equal(received, TOTAL, 'every byte arrived')
  const growth = maxRss - baseline
  t.ok(growth < 64 * 1024 * 1024, `RSS grew by ${(growth / 1048576).toFixed(1)} MiB (baseline ${(baseline / 1048576).toFixed(1)} MiB)`)
})
