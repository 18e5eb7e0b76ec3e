// Names outside the suffix go to dns.upstreams (SPEC §6): real upstream DNS servers (dns2's
// UDPServer / TCPServer) started by the test on 127.23.2.x, asked through DnsServer with dig.
import dgram from 'node:dgram'
import dns2 from 'dns2'
import t, { type Test } from 'tap'
import { dig, encodeQuery, loopback, makeEndpoint, Packet, regionalName, requireDig, startDns, udpExchange } from './helpers.ts'

const { UDPServer, TCPServer } = dns2
const host = (n: number): string => loopback(2, n)
const ep4 = makeEndpoint({ id: 'vpce-0000000000f4', ip: '127.10.1.5' })

type Request = InstanceType<typeof Packet>
type Mode = 'answer' | 'refused' | 'truncated'

/** A dns2 UDP server answering every A query with `address` (or REFUSED / an empty TC answer). */
async function upstream (t: Test, address: string, answer: string, mode: Mode = 'answer', port = 0): Promise<{ port: number, seen: Request[] }> {
  const seen: Request[] = []
  const server = new UDPServer((request: Request, send: (r: Request) => unknown) => {
    seen.push(request)
    const response = Packet.createResponseFromRequest(request)
    response.header.ra = 1
    if (mode === 'refused') response.header.rcode = Packet.RCODE.REFUSED
    else if (mode === 'truncated') response.header.tc = 1
    else response.answers.push(answerFor(request, answer))
    Promise.resolve(send(response)).catch(() => {})
  })
  server.on('requestError', () => {})
  t.teardown(() => server.close())
  await server.listen(port, address)
  return { port: server.address().port, seen }
}

function answerFor (request: Request, address: string): InstanceType<typeof Packet.Resource> {
  return new Packet.Resource({ name: request.questions[0]?.name ?? '', type: Packet.TYPE.A, class: Packet.CLASS.IN, ttl: 60, address })
}

/** A UDP socket that takes queries and never answers; counts them. */
async function silent (t: Test, address: string): Promise<{ port: number, received: () => number }> {
  let received = 0
  const socket = dgram.createSocket('udp4')
  t.teardown(() => socket.close())
  socket.on('message', () => { received++ })
  await new Promise<void>((resolve) => socket.bind(0, address, resolve))
  return { port: socket.address().port, received: () => received }
}

t.test('a name outside the suffix is answered by the upstream, over UDP and TCP, with the client\'s id', async (t) => {
  if (!requireDig(t)) return
  const up = await upstream(t, host(100), '127.0.0.99')
  const fx = await startDns(t, { host: host(1), config: { dns: { upstreams: [`${host(100)}:${up.port}`] } }, endpoints: [ep4] })
  for (const extra of [[], ['+tcp']]) {
    const r = await dig(fx.host, fx.udpPort, 'Www.Example.Test', 'A', extra)
    t.equal(r.status, 'NOERROR', extra.join())
    t.same(r.answer, [{ name: 'Www.Example.Test.', ttl: 60, class: 'IN', type: 'A', data: '127.0.0.99' }])
    t.notOk(r.flags.includes('aa'), 'not authoritative for a forwarded name')
  }
  t.equal(up.seen.length, 2, 'the upstream was asked once per query')
  const raw = await udpExchange(fx.host, fx.udpPort, encodeQuery('id.example.test', Packet.TYPE.A, { id: 4321 }))
  t.equal(raw?.readUInt16BE(0), 4321, 'the reply carries the client\'s id')
  // Names under the suffix never leave the server.
  const own = await dig(fx.host, fx.udpPort, regionalName(ep4, fx.config))
  t.same(own.answer.map((a) => a.data), ['127.10.1.5'])
  t.equal(up.seen.length, 3)
})

t.test('an upstream that does not answer within 2 s is skipped for the next one', async (t) => {
  if (!requireDig(t)) return
  const dead = await silent(t, host(101))
  const up = await upstream(t, host(102), '127.0.0.98')
  const fx = await startDns(t, { host: host(2), config: { dns: { upstreams: [`${host(101)}:${dead.port}`, `${host(102)}:${up.port}`] } } })
  const started = performance.now()
  const r = await dig(fx.host, fx.udpPort, 'slow.example.test', 'A')
  const elapsed = performance.now() - started
  t.equal(r.status, 'NOERROR')
  t.same(r.answer.map((a) => a.data), ['127.0.0.98'])
  t.equal(dead.received(), 1, 'the first upstream was tried first')
  t.ok(elapsed >= 1900, `the first upstream had its 2 s (answered after ${elapsed.toFixed(0)} ms)`)
})

t.test('a REFUSED upstream is passed over for the next one', async (t) => {
  if (!requireDig(t)) return
  const refusing = await upstream(t, host(103), '127.0.0.1', 'refused')
  const up = await upstream(t, host(104), '127.0.0.97')
  const fx = await startDns(t, { host: host(3), config: { dns: { upstreams: [`${host(103)}:${refusing.port}`, `${host(104)}:${up.port}`] } } })
  const r = await dig(fx.host, fx.udpPort, 'picky.example.test', 'A')
  t.equal(r.status, 'NOERROR')
  t.same(r.answer.map((a) => a.data), ['127.0.0.97'])
  t.equal(refusing.seen.length, 1)
})

t.test('no upstream answering gives SERVFAIL, counted in the metrics', async (t) => {
  if (!requireDig(t)) return
  const dead = await silent(t, host(105))
  const fx = await startDns(t, {
    host: host(4),
    config: { dns: { upstreams: [`${host(105)}:${dead.port}`] } },
    server: { forwardTimeoutMs: 200 }
  })
  for (const extra of [[], ['+tcp']]) {
    const r = await dig(fx.host, fx.udpPort, 'void.example.test', 'A', extra)
    t.equal(r.status, 'SERVFAIL', extra.join())
  }
  t.match(await fx.metrics.registry.metrics(), /linkgate_dns_queries_total\{qtype="A",rcode="SERVFAIL"\} 2\n/)
})

t.test('a TCP client whose upstream UDP answer is truncated gets the full answer over TCP', async (t) => {
  if (!requireDig(t)) return
  const udp = await upstream(t, host(106), '', 'truncated')
  const tcp = new TCPServer((request: Request, send: (r: Request) => unknown) => {
    const response = Packet.createResponseFromRequest(request)
    response.answers.push(answerFor(request, '127.0.0.96'))
    Promise.resolve(send(response)).catch(() => {})
  })
  tcp.on('requestError', () => {})
  t.teardown(() => tcp.close())
  await new Promise<void>((resolve, reject) => {
    tcp.once('error', reject)
    tcp.listen(udp.port, host(106), () => resolve())
  })
  const fx = await startDns(t, { host: host(5), config: { dns: { upstreams: [`${host(106)}:${udp.port}`] } } })
  const overUdp = await dig(fx.host, fx.udpPort, 'big.example.test', 'A', ['+ignore'])
  t.ok(overUdp.flags.includes('tc'), 'a UDP client sees the truncation and may retry over TCP')
  const overTcp = await dig(fx.host, fx.udpPort, 'big.example.test', 'A', ['+tcp'])
  t.equal(overTcp.status, 'NOERROR')
  t.same(overTcp.answer.map((a) => a.data), ['127.0.0.96'])
})
