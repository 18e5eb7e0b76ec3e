// DnsServer over real sockets: the real `dig` over UDP and TCP, records following the endpoint
// lifecycle through store.transact, TCP framing and lifetime, binding, metrics.
// Addresses: 127.23.1.x.
import dgram from 'node:dgram'
import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { Registry } from 'prom-client'
import t, { type Test } from 'tap'
import { buildConfig } from '../../src/config/load-config.ts'
import type { Store } from '../../src/control/store.ts'
import { SqliteStore } from '../../src/control/store-sqlite.ts'
import { DnsServer } from '../../src/dns/server.ts'
import { createMetrics } from '../../src/metrics/metrics.ts'
import {
  deleteEndpoint, dig, encodeQuery, eventually, frame, loopback, makeEndpoint, Packet, putEndpoint, query, regionalName,
  requireDig, setStatus, startDns, tcpExchange, udpExchange, waitForAnswer, zonalName
} from './helpers.ts'

const TTL = 37
const ep4 = makeEndpoint({ id: 'vpce-0000000000a4', ip: '127.10.1.5', zone: 'zone-a' })
const ep6 = makeEndpoint({ id: 'vpce-0000000000a6', ip: '::1', zone: 'zone-b', subnetId: 'subnet-v6' })
const host = (n: number): string => loopback(1, n)
const base = { dns: { ttl: TTL } }

t.test('dig over UDP: A for the regional name, aa set, TTL = dns.ttl', async (t) => {
  if (!requireDig(t)) return
  const fx = await startDns(t, { host: host(1), config: base, endpoints: [ep4] })
  const r = await dig(fx.host, fx.udpPort, regionalName(ep4, fx.config))
  t.equal(r.status, 'NOERROR')
  t.ok(r.flags.includes('aa'), `flags: ${r.flags.join(' ')}`)
  t.ok(r.flags.includes('qr'))
  t.same(r.answer, [{ name: `${regionalName(ep4, fx.config)}.`, ttl: TTL, class: 'IN', type: 'A', data: '127.10.1.5' }])
})

t.test('dig over TCP: A for the zonal name', async (t) => {
  if (!requireDig(t)) return
  const fx = await startDns(t, { host: host(2), config: base, endpoints: [ep4] })
  t.equal(fx.tcpPort, fx.udpPort, 'UDP and TCP on the same port')
  const r = await dig(fx.host, fx.tcpPort, zonalName(ep4, fx.config), 'A', ['+tcp'])
  t.match(r.output, /\(TCP\)/)
  t.equal(r.status, 'NOERROR')
  t.ok(r.flags.includes('aa'))
  t.same(r.answer, [{ name: `${zonalName(ep4, fx.config)}.`, ttl: TTL, class: 'IN', type: 'A', data: '127.10.1.5' }])
})

t.test('dig: an unknown name under the suffix is NXDOMAIN with the SOA in authority, over UDP and TCP', async (t) => {
  if (!requireDig(t)) return
  const fx = await startDns(t, { host: host(3), config: base, endpoints: [ep4] })
  for (const extra of [[], ['+tcp']]) {
    const r = await dig(fx.host, fx.udpPort, `vpce-ffffffffffff.${ep4.serviceId}.local-1.privatelink.internal`, 'A', extra)
    t.equal(r.status, 'NXDOMAIN', extra.join())
    t.ok(r.flags.includes('aa'))
    t.same(r.answer, [])
    t.equal(r.authority.length, 1)
    t.match(r.authority[0], { name: 'privatelink.internal.', ttl: TTL, type: 'SOA', data: /^ns\.privatelink\.internal\. hostmaster\.privatelink\.internal\. \d+ 3600 600 86400 37$/ })
  }
})

t.test('dig: AAAA of an IPv4 endpoint is NODATA (NOERROR, no answer, SOA in authority)', async (t) => {
  if (!requireDig(t)) return
  const fx = await startDns(t, { host: host(4), config: base, endpoints: [ep4] })
  const r = await dig(fx.host, fx.udpPort, regionalName(ep4, fx.config), 'AAAA')
  t.equal(r.status, 'NOERROR')
  t.ok(r.flags.includes('aa'))
  t.same(r.answer, [])
  t.match(r.authority, [{ name: 'privatelink.internal.', type: 'SOA' }])
})

t.test('dig: AAAA for an IPv6 endpoint record', async (t) => {
  if (!requireDig(t)) return
  const fx = await startDns(t, { host: host(5), config: base, endpoints: [ep6] })
  const r = await dig(fx.host, fx.udpPort, zonalName(ep6, fx.config), 'AAAA')
  t.equal(r.status, 'NOERROR')
  t.same(r.answer, [{ name: `${zonalName(ep6, fx.config)}.`, ttl: TTL, class: 'IN', type: 'AAAA', data: '::1' }])
  const tcp = await dig(fx.host, fx.udpPort, regionalName(ep6, fx.config), 'AAAA', ['+tcp'])
  t.same(tcp.answer.map((a) => a.data), ['::1'])
})

t.test('dig: a name outside the suffix is REFUSED without upstreams', async (t) => {
  if (!requireDig(t)) return
  const fx = await startDns(t, { host: host(6), config: base, endpoints: [ep4] })
  for (const extra of [[], ['+tcp']]) {
    const r = await dig(fx.host, fx.udpPort, 'www.example.com', 'A', extra)
    t.equal(r.status, 'REFUSED', extra.join())
    t.notOk(r.flags.includes('aa'))
    t.same(r.answer, [])
  }
})

t.test('dig: a mixed-case name is answered, in the case it was asked', async (t) => {
  if (!requireDig(t)) return
  const fx = await startDns(t, { host: host(7), config: base, endpoints: [ep4] })
  const name = regionalName(ep4, fx.config).toUpperCase().replace('LOCAL', 'local')
  for (const extra of [[], ['+tcp']]) {
    const r = await dig(fx.host, fx.udpPort, name, 'A', extra)
    t.equal(r.status, 'NOERROR')
    t.same(r.answer, [{ name: `${name}.`, ttl: TTL, class: 'IN', type: 'A', data: '127.10.1.5' }])
  }
})

t.test('dig: SOA and NS of the suffix itself', async (t) => {
  if (!requireDig(t)) return
  const fx = await startDns(t, { host: host(8), config: base, endpoints: [ep4] })
  const soa = await dig(fx.host, fx.udpPort, 'privatelink.internal', 'SOA')
  t.match(soa.answer, [{ name: 'privatelink.internal.', type: 'SOA', data: /^ns\.privatelink\.internal\. hostmaster\.privatelink\.internal\. \d+ 3600 600 86400 37$/ }])
  const ns = await dig(fx.host, fx.udpPort, 'privatelink.internal', 'NS')
  t.match(ns.answer, [{ type: 'NS', data: 'ns.privatelink.internal.' }])
})

t.test('records follow the endpoint lifecycle: pending → no name, accepted → name, deleted → NXDOMAIN, each within 1 s', async (t) => {
  const fx = await startDns(t, { host: host(9), config: base })
  const ep = makeEndpoint({ id: 'vpce-0000000000b1', ip: '127.10.1.9', status: 'pendingAcceptance' })
  const name = regionalName(ep, fx.config)
  const zonal = zonalName(ep, fx.config)
  const isA = (p: ReturnType<typeof Packet.parse>): boolean => p.header.rcode === 0 && p.answers[0]?.address === '127.10.1.9'
  const isNx = (p: ReturnType<typeof Packet.parse>): boolean => p.header.rcode === 3

  await putEndpoint(fx.store, ep)
  // Give the change event its turn, then check that nothing was published for a pending endpoint.
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal((await query(fx, name, Packet.TYPE.A)).header.rcode, 3, 'pendingAcceptance: NXDOMAIN')

  await setStatus(fx.store, ep.id, 'accepted')
  const up = await waitForAnswer(fx, name, Packet.TYPE.A, isA)
  t.ok(up >= 0, `accepted: the regional name answers within 1 s (took ${up.toFixed(0)} ms)`)
  t.ok(isA(await query(fx, zonal, Packet.TYPE.A)), 'and the zonal one')

  await deleteEndpoint(fx.store, ep.id)
  const gone = await waitForAnswer(fx, name, Packet.TYPE.A, isNx)
  t.ok(gone >= 0, `deleted: NXDOMAIN within 1 s (took ${gone.toFixed(0)} ms)`)
  t.ok(isNx(await query(fx, zonal, Packet.TYPE.A)), 'zonal name gone too')
})

t.test('rejecting an endpoint or turning privateDns off removes its names within 1 s', async (t) => {
  const a = makeEndpoint({ id: 'vpce-0000000000c1', ip: '127.10.1.11' })
  const b = makeEndpoint({ id: 'vpce-0000000000c2', ip: '127.10.1.12' })
  const fx = await startDns(t, { host: host(10), config: base, endpoints: [a, b] })
  const isNx = (p: ReturnType<typeof Packet.parse>): boolean => p.header.rcode === 3
  t.equal((await query(fx, regionalName(a, fx.config), Packet.TYPE.A)).answers[0]?.address, '127.10.1.11')
  await setStatus(fx.store, a.id, 'rejected')
  t.ok(await waitForAnswer(fx, regionalName(a, fx.config), Packet.TYPE.A, isNx) >= 0, 'rejected: NXDOMAIN')
  await putEndpoint(fx.store, { ...b, privateDns: false }, 'updated')
  t.ok(await waitForAnswer(fx, regionalName(b, fx.config), Packet.TYPE.A, isNx) >= 0, 'privateDns false: NXDOMAIN')
})

t.test('the SOA serial increases when the records change', async (t) => {
  const fx = await startDns(t, { host: host(11), config: base, endpoints: [ep4] })
  const serialOf = async (): Promise<number> =>
    ((await query(fx, 'privatelink.internal', Packet.TYPE.SOA)).answers[0] as unknown as { serial: number }).serial
  const before = await serialOf()
  await putEndpoint(fx.store, makeEndpoint({ id: 'vpce-0000000000d1', ip: '127.10.1.13' }))
  const elapsed = await waitForAnswer(fx, 'privatelink.internal', Packet.TYPE.SOA,
    (p) => (p.answers[0] as unknown as { serial: number }).serial > before)
  t.ok(elapsed >= 0, 'serial went up')
})

t.test('TCP: several pipelined queries on one connection, and a query split across writes, are all answered', async (t) => {
  const fx = await startDns(t, { host: host(12), config: base, endpoints: [ep4] })
  const queries = [
    encodeQuery(regionalName(ep4, fx.config), Packet.TYPE.A, { id: 101 }),
    encodeQuery(zonalName(ep4, fx.config), Packet.TYPE.A, { id: 102 }),
    encodeQuery('nope.privatelink.internal', Packet.TYPE.A, { id: 103 })
  ]
  const responses = (await tcpExchange(fx.host, fx.tcpPort, Buffer.concat(queries.map(frame)), 3)).map((r) => Packet.parse(r))
  t.same(responses.map((r) => r.header.id), [101, 102, 103])
  t.same(responses.map((r) => r.header.rcode), [0, 0, 3])
  t.same(responses.map((r) => r.answers[0]?.address), ['127.10.1.5', '127.10.1.5', undefined])

  // One byte at a time.
  const bytes = frame(encodeQuery(regionalName(ep4, fx.config), Packet.TYPE.A, { id: 104 }))
  const got = await new Promise<Buffer>((resolve, reject) => {
    const socket = net.connect({ host: fx.host, port: fx.tcpPort })
    t.teardown(() => socket.destroy())
    let buf = Buffer.alloc(0)
    socket.on('error', reject)
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk])
      if (buf.length >= 2 && buf.length >= buf.readUInt16BE(0) + 2) resolve(buf.subarray(2))
    })
    socket.on('connect', async () => {
      for (const byte of bytes) {
        socket.write(Buffer.from([byte]))
        await new Promise((resolve) => setImmediate(resolve))
      }
    })
  })
  t.equal(Packet.parse(got).header.id, 104)
  t.equal(Packet.parse(got).answers[0]?.address, '127.10.1.5')
})

t.test('TCP: a client that sends its query and half-closes still gets the answer', async (t) => {
  const fx = await startDns(t, { host: host(13), config: base, endpoints: [ep4] })
  const answer = await new Promise<Buffer>((resolve, reject) => {
    const socket = net.connect({ host: fx.host, port: fx.tcpPort })
    t.teardown(() => socket.destroy())
    let buf = Buffer.alloc(0)
    socket.on('error', reject)
    socket.on('data', (chunk: Buffer) => { buf = Buffer.concat([buf, chunk]) })
    socket.on('end', () => resolve(buf))
    socket.end(frame(encodeQuery(regionalName(ep4, fx.config), Packet.TYPE.A, { id: 7 })))
  })
  t.equal(Packet.parse(answer.subarray(2)).answers[0]?.address, '127.10.1.5')
})

t.test('TCP: an idle connection is closed after the idle timeout', async (t) => {
  const fx = await startDns(t, { host: host(14), config: base, server: { tcpIdleTimeoutMs: 200 } })
  const start = performance.now()
  const closedAfter = await new Promise<number>((resolve, reject) => {
    const socket = net.connect({ host: fx.host, port: fx.tcpPort })
    t.teardown(() => socket.destroy())
    socket.on('error', reject)
    socket.resume()
    socket.on('close', () => resolve(performance.now() - start))
  })
  t.ok(closedAfter >= 150, `closed after ${closedAfter.toFixed(0)} ms`)
  t.ok(await eventually(() => fx.server.tcpConnections === 0), 'the server forgot the connection')
})

t.test('TCP: a message too short for a header is skipped, and the next query on the connection is answered', async (t) => {
  const fx = await startDns(t, { host: host(15), config: base, endpoints: [ep4] })
  const payload = Buffer.concat([frame(Buffer.from('garbage')), frame(Buffer.alloc(0)),
    frame(encodeQuery(regionalName(ep4, fx.config), Packet.TYPE.A, { id: 515 }))])
  const [response] = await tcpExchange(fx.host, fx.tcpPort, payload, 1)
  t.equal(Packet.parse(response as Buffer).header.id, 515)
  t.equal(Packet.parse(response as Buffer).answers[0]?.address, '127.10.1.5')
})

t.test('close() ends open TCP connections and is safe to call twice', async (t) => {
  const fx = await startDns(t, { host: host(16), config: base })
  const socket = net.connect({ host: fx.host, port: fx.tcpPort })
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  await new Promise((resolve) => socket.on('connect', resolve))
  t.ok(await eventually(() => fx.server.tcpConnections === 1), 'the server tracks the connection')
  const closed = new Promise((resolve) => socket.on('close', resolve))
  await Promise.all([fx.server.close(), fx.server.close()])
  await closed
  t.equal(fx.server.tcpConnections, 0)
  t.equal(await udpAnswers(fx.host, fx.udpPort), false, 'UDP no longer answers')
})

async function udpAnswers (address: string, port: number): Promise<boolean> {
  return (await udpExchange(address, port, encodeQuery('privatelink.internal', Packet.TYPE.SOA), 300)) !== undefined
}

async function bareServer (t: Test, listen: string): Promise<DnsServer> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-dns-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const store = await SqliteStore.open(dir)
  const server = new DnsServer({ config: buildConfig({ listen: { dns: listen } }), store, metrics: createMetrics(new Registry(), { defaultMetrics: false }), logger: pino({ level: 'silent' }) })
  t.teardown(() => server.close())
  return server
}

t.test('start() rejects, naming listen.dns, when the UDP port is taken', async (t) => {
  const taken = dgram.createSocket('udp4')
  t.teardown(() => taken.close())
  await new Promise<void>((resolve) => taken.bind(0, host(17), resolve))
  const listen = `${host(17)}:${taken.address().port}`
  const server = await bareServer(t, listen)
  await t.rejects(server.start(), { message: new RegExp(`^listen\\.dns ${listen.replace(/\./g, '\\.')}: cannot bind UDP: EADDRINUSE`), code: 'EADDRINUSE' })
})

t.test('start() rejects when the TCP port is taken, and releases the UDP port it had bound', async (t) => {
  const taken = net.createServer()
  t.teardown(() => taken.close())
  await new Promise<void>((resolve) => taken.listen(0, host(18), resolve))
  const port = (taken.address() as net.AddressInfo).port
  const server = await bareServer(t, `${host(18)}:${port}`)
  await t.rejects(server.start(), { message: /cannot bind TCP: EADDRINUSE/ })
  const probe = dgram.createSocket('udp4')
  t.teardown(() => probe.close())
  await t.resolves(new Promise<void>((resolve, reject) => {
    probe.once('error', reject)
    probe.bind(port, host(18), resolve)
  }), 'the UDP port is free again')
})

t.test('dns queries are counted in linkgate_dns_queries_total{qtype,rcode}', async (t) => {
  const fx = await startDns(t, { host: host(19), config: base, endpoints: [ep4] })
  await query(fx, regionalName(ep4, fx.config), Packet.TYPE.A)
  await query(fx, regionalName(ep4, fx.config), Packet.TYPE.A)
  await query(fx, 'nope.privatelink.internal', Packet.TYPE.AAAA)
  await query(fx, 'example.com', Packet.TYPE.A)
  await query(fx, 'privatelink.internal', Packet.TYPE.SOA)
  await tcpExchange(fx.host, fx.tcpPort, frame(encodeQuery(regionalName(ep4, fx.config), Packet.TYPE.A)), 1)
  const text = await fx.metrics.registry.metrics()
  t.match(text, /linkgate_dns_queries_total\{qtype="A",rcode="NOERROR"\} 3\n/)
  t.match(text, /linkgate_dns_queries_total\{qtype="AAAA",rcode="NXDOMAIN"\} 1\n/)
  t.match(text, /linkgate_dns_queries_total\{qtype="A",rcode="REFUSED"\} 1\n/)
  t.match(text, /linkgate_dns_queries_total\{qtype="SOA",rcode="NOERROR"\} 1\n/)
})

t.test('an IPv6 listen address ([::1]:0) serves over UDP and TCP', async (t) => {
  const fx = await startDns(t, { host: '::1', config: base, endpoints: [ep4, ep6] })
  t.equal(fx.udpPort, fx.tcpPort)
  const overUdp = await query(fx, regionalName(ep6, fx.config), Packet.TYPE.AAAA)
  t.same(overUdp.answers.map((a) => a.address), ['::1'])
  const [overTcp] = await tcpExchange('::1', fx.tcpPort, frame(encodeQuery(zonalName(ep4, fx.config), Packet.TYPE.A, { id: 66 })), 1)
  t.same(Packet.parse(overTcp as Buffer).answers.map((a) => a.address), ['127.10.1.5'])
  const glue = await query(fx, 'ns.privatelink.internal', Packet.TYPE.AAAA)
  t.same(glue.answers.map((a) => a.address), ['::1'], 'the NS target has the listener\'s IPv6 address')
})

t.test('close() before start() resolves, and start() then refuses', async (t) => {
  const server = await bareServer(t, `${host(20)}:0`)
  await server.close()
  await t.rejects(server.start(), { message: /closed while starting/ })
  t.equal(await udpAnswers(host(20), 53), false)
})
