// UDP data plane (SPEC §5 "UDP"), through real sockets on 127.22.0.0/16 (and ::1).
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { createSocket } from 'node:dgram'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import dns2 from 'dns2'
import pino from 'pino'
import t, { type Test } from 'tap'
import { buildConfig } from '../../src/config/load-config.ts'
import { createAccessLog, disabledAccessLog, type AccessLogEntry } from '../../src/dataplane/access-log.ts'
import { createUdpListener } from '../../src/dataplane/udp-proxy.ts'
import {
  ENDPOINT_ID, SERVICE_ID, metricValue, request, sleep, udpBackend, udpClient, udpEndpoint
} from './udp-fixtures.ts'

const { Packet, UDPServer } = dns2

async function accessLogFile (t: Test): Promise<{ log: ReturnType<typeof createAccessLog>, read: () => Promise<AccessLogEntry[]> }> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-udp-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'access.log')
  const log = createAccessLog(file)
  await sleep(50) // pino opens the file asynchronously; flushSync needs it open
  return {
    log,
    read: async () => {
      log.flush()
      const text = await readFile(file, 'utf8').catch(() => '')
      return text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as AccessLogEntry)
    }
  }
}

function flowsTotal (h: { metrics: { connectionsTotal: Parameters<typeof metricValue>[0] }, port: number }): Promise<number> {
  return metricValue(h.metrics.connectionsTotal, { endpoint_id: ENDPOINT_ID, protocol: 'UDP', terminal_port: String(h.port) })
}

function refused (h: { metrics: { connectionsRefusedTotal: Parameters<typeof metricValue>[0] } }, reason: string): Promise<number> {
  return metricValue(h.metrics.connectionsRefusedTotal, { endpoint_id: ENDPOINT_ID, reason })
}

function runDig (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string, missing: boolean }> {
  return new Promise((resolve) => {
    execFile('dig', args, { timeout: 10_000 }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: string | number }) | null
      resolve({ code: e === null ? 0 : typeof e.code === 'number' ? e.code : null, stdout, stderr, missing: e?.code === 'ENOENT' })
    })
  })
}

// dig is the client a user would type; under CI=true its absence is a failure, not a skip.
const digMissing = (await runDig(['-v'])).missing
const digSkip = digMissing && process.env.CI !== 'true' ? 'dig is not installed (apt-get install -y bind9-dnsutils)' : false

t.test('dig through a UDP endpoint gets the answer of the DNS backend behind it', { skip: digSkip }, async (t) => {
  if (digMissing) {
    t.fail('dig is not installed (apt-get install -y bind9-dnsutils); required under CI=true')
    return
  }
  const server = new UDPServer({ type: 'udp4' })
  server.on('error', () => {})
  server.on('requestError', () => {})
  server.on('request', (request, send) => {
    const response = Packet.createResponseFromRequest(request)
    response.header.aa = 1
    const question = request.questions[0]
    if (question !== undefined && question.type === Packet.TYPE.A) {
      response.answers.push({ name: question.name, type: Packet.TYPE.A, class: Packet.CLASS.IN, ttl: 42, address: '10.20.30.40' } as (typeof response.answers)[number])
    }
    Promise.resolve(send(response)).catch(() => {})
  })
  await server.listen(0, '127.22.1.11')
  t.teardown(() => new Promise<void>((resolve) => { server.close(() => { resolve() }) }))
  const h = await udpEndpoint(t, { ip: '127.22.1.1', servicePort: server.address().port, backends: [{ address: '127.22.1.11' }] })

  const out = await runDig(['@127.22.1.1', '-p', String(h.port), '+tries=1', '+time=3', '+noall', '+answer', '+comments', 'db.example.test', 'A'])
  t.equal(out.code, 0, `dig exits 0 (stderr: ${out.stderr.trim()})`)
  t.match(out.stdout, /status: NOERROR/)
  t.match(out.stdout, /flags: qr aa/, 'the backend\'s authoritative flag comes through')
  t.match(out.stdout, /^db\.example\.test\.\s+42\s+IN\s+A\s+10\.20\.30\.40$/m, 'the backend\'s A record, with its TTL')
  t.equal(await flowsTotal(h), 1, 'one flow for the one query')
})

t.test('300 clients over backends weighted 100:50 split 2:1, and each client stays on one backend', async (t) => {
  const a = await udpBackend(t, '127.22.2.11', 0, { id: 'be-0000000a', tag: true })
  const b = await udpBackend(t, '127.22.2.12', a.port, { id: 'be-0000000b', tag: true })
  const h = await udpEndpoint(t, {
    ip: '127.22.2.1',
    servicePort: a.port,
    backends: [{ id: a.id, address: a.address, weight: 100 }, { id: b.id, address: b.address, weight: 50 }]
  })
  const perBackend = new Map<string, number>()
  const sticky: boolean[] = []
  const clients = 300
  for (let batch = 0; batch < clients; batch += 50) {
    await Promise.all(Array.from({ length: 50 }, async (_, i) => {
      const client = await udpClient(t, '127.22.2.100')
      const seen = new Set<string>()
      for (let k = 0; k < 4; k++) {
        const r = await request(client, h, `c${batch + i}-${k}`)
        seen.add(r === null ? 'lost' : r.msg.toString().split('|')[0] as string)
      }
      sticky.push(seen.size === 1 && !seen.has('lost'))
      const id = [...seen][0] as string
      perBackend.set(id, (perBackend.get(id) ?? 0) + 1)
    }))
  }
  t.equal(sticky.filter(Boolean).length, clients, 'every client got all 4 replies from a single backend')
  const na = perBackend.get(a.id) ?? 0
  const nb = perBackend.get(b.id) ?? 0
  t.equal(na + nb, clients)
  t.ok(Math.abs(na - 200) <= 9, `weight 100 backend got ${na} of 300 clients (expected 200 ± 3%)`)
  t.ok(Math.abs(nb - 100) <= 9, `weight 50 backend got ${nb} of 300 clients (expected 100 ± 3%)`)
  t.equal(a.sources.size + b.sources.size, clients, 'the backends saw one source (flow socket) per client')
  t.equal(await flowsTotal(h), clients, 'linkgate_connections_total counts one flow per client')
  t.equal(await metricValue(h.metrics.backendConnectionsTotal, { backend_id: a.id }), na, 'backend_connections_total of the heavy backend')
  t.equal(h.listener.flows, clients)
  t.equal(h.runtime.active, clients, 'each flow holds one connection slot')
})

t.test('a flow idle longer than udpIdleTimeoutSeconds expires; the next datagram opens a new flow', async (t) => {
  const access = await accessLogFile(t)
  const be = await udpBackend(t, '127.22.3.11', 0)
  const h = await udpEndpoint(t, {
    ip: '127.22.3.1', servicePort: be.port, backends: [{ address: be.address }], limits: { udpIdleTimeoutSeconds: 0.5 }, accessLog: access.log
  })
  const client = await udpClient(t, '127.22.3.100')
  t.equal((await request(client, h, 'first'))?.msg.toString(), 'first')
  t.equal(h.listener.flows, 1)
  await sleep(1200)
  t.equal(h.listener.flows, 0, 'the flow is gone after 1.2 s of silence (timeout 0.5 s)')
  t.equal(h.runtime.active, 0, 'its connection slot is released')
  t.equal(h.runtime.udp.active, 0)
  const lines = await access.read()
  t.equal(lines.length, 1, 'one access log line for the expired flow')
  t.match(lines[0], {
    endpointId: ENDPOINT_ID, serviceId: SERVICE_ID, protocol: 'UDP', terminalPort: h.port, client: `127.22.3.100:${client.address().port}`,
    backendAddress: '127.22.3.11', bytesToBackend: 5, bytesToClient: 5, closeReason: 'idle'
  })
  t.equal((await request(client, h, 'second'))?.msg.toString(), 'second')
  t.equal(await flowsTotal(h), 2, 'the same client after expiry is counted as a new flow')
  t.equal(be.sources.size, 2, 'the new flow reached the backend from a new flow socket')
})

t.test('a flow kept busy outlives the idle timeout and keeps its backend socket', async (t) => {
  const be = await udpBackend(t, '127.22.4.11', 0)
  const h = await udpEndpoint(t, { ip: '127.22.4.1', servicePort: be.port, backends: [{ address: be.address }], limits: { udpIdleTimeoutSeconds: 0.5 } })
  const client = await udpClient(t, '127.22.4.100')
  let answered = 0
  for (let i = 0; i < 15; i++) { // 15 × 100 ms = 3 idle timeouts
    if ((await request(client, h, `tick ${i}`))?.msg.toString() === `tick ${i}`) answered++
    await sleep(100)
  }
  t.equal(answered, 15)
  t.equal(await flowsTotal(h), 1, 'still the first flow')
  t.equal(be.sources.size, 1, 'every datagram reached the backend from the same flow socket')
  t.equal(h.listener.flows, 1)
})

t.test('flows over maxConnectionsPerEndpoint are dropped and counted as refused (limit)', async (t) => {
  const be = await udpBackend(t, '127.22.5.11', 0)
  const h = await udpEndpoint(t, { ip: '127.22.5.1', servicePort: be.port, backends: [{ address: be.address }], limits: { maxConnectionsPerEndpoint: 2 } })
  const c1 = await udpClient(t, '127.22.5.100')
  const c2 = await udpClient(t, '127.22.5.100')
  const c3 = await udpClient(t, '127.22.5.100')
  t.equal((await request(c1, h, 'one'))?.msg.toString(), 'one')
  t.equal((await request(c2, h, 'two'))?.msg.toString(), 'two')
  t.equal(await request(c3, h, 'three', 300), null, 'the third client gets no answer')
  t.equal(await request(c3, h, 'three again', 300), null)
  t.equal(await refused(h, 'limit'), 2, 'each refused datagram counts in connections_refused_total{reason="limit"}')
  t.equal(be.received, 2, 'nothing of the refused client reached the backend')
  t.equal(await flowsTotal(h), 2, 'refused flows are not counted as flows')
  t.equal((await request(c1, h, 'still'))?.msg.toString(), 'still', 'admitted flows keep working')
})

t.test('a backend that answers with ICMP unreachable is failed over: the client\'s later datagrams reach another backend', async (t) => {
  const a = await udpBackend(t, '127.22.6.11', 0, { id: 'be-0000000a', tag: true })
  const b = await udpBackend(t, '127.22.6.12', a.port, { id: 'be-0000000b', tag: true })
  // 100:1 — smooth WRR alone would pick `a` again for the next flow.
  const h = await udpEndpoint(t, {
    ip: '127.22.6.1',
    servicePort: a.port,
    backends: [{ id: a.id, address: a.address, weight: 100 }, { id: b.id, address: b.address, weight: 1 }]
  })
  const client = await udpClient(t, '127.22.6.100')
  t.equal((await request(client, h, 'hello'))?.msg.toString(), `${a.id}|hello`)
  await new Promise<void>((resolve) => { a.socket.close(() => { resolve() }) })

  t.equal(await request(client, h, 'lost', 400), null, 'the datagram sent to the closed backend gets no answer')
  const record = h.upstream.record(SERVICE_ID, a.id)
  t.equal(record.passiveFailures, 1, 'the ICMP port unreachable counts as a failed connect of that backend')
  t.equal(h.listener.flows, 0, 'the flow ended')
  const replies: string[] = []
  for (let i = 0; i < 3; i++) replies.push((await request(client, h, `retry ${i}`))?.msg.toString() ?? 'lost')
  t.same(replies, [`${b.id}|retry 0`, `${b.id}|retry 1`, `${b.id}|retry 2`], 'the next datagrams reach the other backend')
  t.equal(await flowsTotal(h), 2)
})

t.test('100,000 datagrams through one endpoint arrive in order per flow with no loss, and every echo comes back', async (t) => {
  const FLOWS = 4
  const PER_FLOW = 25_000
  const WINDOW = 64 // 4 × 64 = 256 datagrams in flight
  const SIZE = 64
  const lastSeq = new Map<number, number>() // backend side: last seq per source port
  let backendOutOfOrder = 0
  const be = await udpBackend(t, '127.22.7.11', 0, {
    onDatagram: (msg, rinfo) => {
      const seq = msg.readUInt32BE(0)
      if (seq !== (lastSeq.get(rinfo.port) ?? -1) + 1) backendOutOfOrder++
      lastSeq.set(rinfo.port, seq)
    }
  })
  const h = await udpEndpoint(t, { ip: '127.22.7.1', servicePort: be.port, backends: [{ address: be.address }] })
  const deadline = Date.now() + 40_000
  const results = await Promise.all(Array.from({ length: FLOWS }, async (_, f) => {
    const client = await udpClient(t, '127.22.7.100')
    let sent = 0
    let received = 0
    let outOfOrder = 0
    const sendNext = (): void => {
      const payload = Buffer.alloc(SIZE, f) // dgram sends asynchronously: a buffer per datagram
      payload.writeUInt32BE(sent++, 0)
      client.send(payload, h.port, h.ip)
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, deadline - Date.now())
      client.on('message', (msg) => {
        if (msg.readUInt32BE(0) !== received || msg.length !== SIZE || msg[SIZE - 1] !== f) outOfOrder++
        received++
        if (sent < PER_FLOW) sendNext()
        if (received === PER_FLOW) { clearTimeout(timer); resolve() }
      })
      for (let i = 0; i < WINDOW; i++) sendNext()
    })
    return { received, outOfOrder }
  }))
  for (const [f, r] of results.entries()) {
    t.equal(r.received, PER_FLOW, `flow ${f}: all ${PER_FLOW} echoes came back (0 loss)`)
    t.equal(r.outOfOrder, 0, `flow ${f}: echoes in order and intact`)
  }
  t.equal(be.received, FLOWS * PER_FLOW, 'the backend received every datagram')
  t.equal(backendOutOfOrder, 0, 'the backend received each flow\'s datagrams in order')
  t.equal(h.runtime.udp.bytesToBackend, FLOWS * PER_FLOW * SIZE, 'bytes client → backend counted')
  t.equal(h.runtime.udp.bytesToClient, FLOWS * PER_FLOW * SIZE, 'bytes backend → client counted')
  t.equal(await flowsTotal(h), FLOWS)
})

t.test('datagram boundaries are kept: empty, one-byte and 65,507-byte datagrams pass unchanged', async (t) => {
  const be = await udpBackend(t, '127.22.8.11', 0)
  const h = await udpEndpoint(t, { ip: '127.22.8.1', servicePort: be.port, backends: [{ address: be.address }] })
  const client = await udpClient(t, '127.22.8.100')
  const big = Buffer.alloc(65_507)
  for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff
  for (const payload of [Buffer.alloc(0), Buffer.from('x'), big, Buffer.alloc(0)]) {
    const r = await request(client, h, payload)
    t.ok(r !== null && r.msg.equals(payload), `a ${payload.length}-byte datagram comes back as one ${payload.length}-byte datagram`)
    t.equal(r?.rinfo.address, '127.22.8.1', 'the reply comes from the endpoint ip')
    t.equal(r?.rinfo.port, h.port, 'the reply comes from the terminal port')
  }
  t.equal(be.received, 4)
  t.equal(h.runtime.udp.bytesToBackend, 1 + 65_507)
})

t.test('a source outside allowedSources is dropped and counted as refused (source)', async (t) => {
  const be = await udpBackend(t, '127.22.9.11', 0)
  const h = await udpEndpoint(t, {
    ip: '127.22.9.1', servicePort: be.port, backends: [{ address: be.address }], allowedSources: ['127.22.9.100/32']
  })
  const outsider = await udpClient(t, '127.22.9.101')
  const insider = await udpClient(t, '127.22.9.100')
  t.equal(await request(outsider, h, 'let me in', 300), null)
  t.equal(await refused(h, 'source'), 1)
  t.equal((await request(insider, h, 'hi'))?.msg.toString(), 'hi')
  t.equal(be.received, 1, 'only the allowed client reached the backend')
  t.equal(h.runtime.active, 1)
})

t.test('with no eligible backend a datagram is dropped, counted as refused (no_backend), and holds no slot', async (t) => {
  const be = await udpBackend(t, '127.22.10.11', 0)
  const h = await udpEndpoint(t, { ip: '127.22.10.1', servicePort: be.port, backends: [{ address: be.address, weight: 0 }] })
  const client = await udpClient(t, '127.22.10.100')
  t.equal(await request(client, h, 'anyone?', 300), null)
  t.equal(await refused(h, 'no_backend'), 1)
  t.equal(h.runtime.active, 0)
  t.equal(h.listener.flows, 0)
  t.equal(be.received, 0)
})

t.test('destroy ends every flow with its reason and releases the port', async (t) => {
  const access = await accessLogFile(t)
  const be = await udpBackend(t, '127.22.11.11', 0)
  const h = await udpEndpoint(t, { ip: '127.22.11.1', servicePort: be.port, backends: [{ address: be.address }], accessLog: access.log })
  for (let i = 0; i < 3; i++) {
    const c = await udpClient(t, '127.22.11.100')
    t.equal((await request(c, h, `c${i}`))?.msg.toString(), `c${i}`)
  }
  t.equal(h.runtime.active, 3)
  h.listener.destroy('removed')
  t.equal(h.listener.flows, 0)
  t.equal(h.runtime.active, 0, 'every slot released')
  t.equal(h.runtime.udp.active, 0)
  await h.listener.close() // idempotent; resolves once the socket is closed
  const lines = await access.read()
  t.same(lines.map((l) => l.closeReason), ['removed', 'removed', 'removed'])
  const again = createSocket('udp4')
  t.teardown(() => { try { again.close() } catch {} })
  again.bind(h.port, h.ip)
  await once(again, 'listening')
  t.pass('the terminal port can be bound again')
})

t.test('close() resolves promptly and nothing answers afterwards', async (t) => {
  const be = await udpBackend(t, '127.22.12.11', 0)
  const h = await udpEndpoint(t, { ip: '127.22.12.1', servicePort: be.port, backends: [{ address: be.address }] })
  const client = await udpClient(t, '127.22.12.100')
  t.equal((await request(client, h, 'before'))?.msg.toString(), 'before')
  await h.listener.close()
  t.equal(h.runtime.active, 0)
  t.equal(await request(client, h, 'after', 300), null)
  t.equal(be.received, 1)
})

t.test('listen rejects with EADDRINUSE when the terminal port is taken, and holds nothing', async (t) => {
  const be = await udpBackend(t, '127.22.13.11', 0)
  const h = await udpEndpoint(t, { ip: '127.22.13.1', servicePort: be.port, backends: [{ address: be.address }] })
  const second = createUdpListener({
    runtime: h.runtime,
    mapping: { protocol: 'UDP', servicePort: be.port, terminalPort: h.port },
    limits: buildConfig().limits,
    metrics: h.metrics,
    logger: pino({ level: 'silent' }),
    upstream: h.upstream,
    accessLog: disabledAccessLog
  })
  await t.rejects(second.listen(), { code: 'EADDRINUSE' })
  await second.close()
  const client = await udpClient(t, '127.22.13.100')
  t.equal((await request(client, h, 'first still works'))?.msg.toString(), 'first still works')
})

t.test('out of file descriptors, a new flow is dropped, its slot released, and the listener keeps serving', async (t) => {
  // A child under `ulimit -n 100` with 60 clients: only the first flows get a backend socket.
  const child = join(import.meta.dirname, 'udp-emfile-child.ts')
  const out = await new Promise<{ code: number | null, stdout: string, stderr: string }>((resolve) => {
    execFile('bash', ['-c', 'ulimit -n 100 && exec "$0" "$1"', process.execPath, child], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : null, stdout, stderr })
    })
  })
  t.equal(out.code, 0, `the process survives (stderr: ${out.stderr.trim().slice(0, 300)})`)
  const r = JSON.parse(out.stdout.trim().split('\n').pop() ?? '{}') as { clients: number, answered: number, flowsAtPeak: number, activeAtPeak: number, flowsTotal: number, refused: number, retry: string | null }
  t.ok(r.flowsAtPeak > 0 && r.flowsAtPeak < r.clients, `some flows got a socket, not all (${r.flowsAtPeak} of ${r.clients})`)
  t.equal(r.answered, r.flowsAtPeak, 'every flow that exists was answered')
  t.equal(r.activeAtPeak, r.flowsAtPeak, 'the failed flows hold no connection slot')
  t.equal(r.flowsTotal, r.flowsAtPeak, 'only flows that got a socket count in connections_total')
  t.equal(r.refused, r.clients - r.flowsAtPeak, 'the others count in connections_refused_total{reason="overload"} (SPEC §10: local trouble)')
  t.equal(r.retry, 'again', 'once descriptors are free, a client whose flow failed gets through')
})

t.test('an IPv6 endpoint proxies to an IPv6 backend and answers from its own address', async (t) => {
  const be = await udpBackend(t, '::1', 0, { id: 'be-00000006', tag: true })
  const h = await udpEndpoint(t, { ip: '::1', servicePort: be.port, backends: [{ id: be.id, address: '::1' }] })
  const c1 = await udpClient(t, '::1')
  const c2 = await udpClient(t, '::1')
  const r1 = await request(c1, h, 'six')
  const r2 = await request(c2, h, 'six too')
  t.equal(r1?.msg.toString(), `${be.id}|six`)
  t.equal(r2?.msg.toString(), `${be.id}|six too`)
  t.equal(r1?.rinfo.port, h.port)
  t.equal((await request(c1, h, 'again'))?.msg.toString(), `${be.id}|again`)
  t.equal(await flowsTotal(h), 2, 'two IPv6 clients on one address, two flows')
  t.equal(be.sources.size, 2)
})
