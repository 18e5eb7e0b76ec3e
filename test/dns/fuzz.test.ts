// Garbage at the DNS ports (SPEC §6: "Malformed packets are dropped or answered FORMERR; the
// server keeps running"): 10,000 random, truncated and mangled packets at the UDP port and 10,000
// frames at the TCP port, bounded in count and time; then a valid query still gets its answer.
// Addresses: 127.23.3.x. The PRNG is seeded, so a failure can be replayed.
import dgram from 'node:dgram'
import net from 'node:net'
import t from 'tap'
import {
  dig, encodeQuery, eventually, frame, loopback, makeEndpoint, Packet, query, regionalName, digOrComment, startDns, zonalName
} from './helpers.ts'

const PACKETS = 10_000
const PHASE_DEADLINE_MS = 30_000
const ep4 = makeEndpoint({ id: 'vpce-00000000fa11', ip: '127.10.1.77' })

function prng (seed: number): (n: number) => number {
  let s = seed >>> 0
  return (n) => {
    // xorshift32
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s % n
  }
}

function garbage (rand: (n: number) => number, templates: readonly Buffer[]): Buffer {
  const template = templates[rand(templates.length)] as Buffer
  switch (rand(5)) {
    case 0: { // random bytes, any length (0 included)
      const b = Buffer.alloc(rand(600))
      for (let i = 0; i < b.length; i++) b[i] = rand(256)
      return b
    }
    case 1: // a valid query cut short
      return Buffer.from(template.subarray(0, rand(template.length)))
    case 2: { // a valid query with a few bytes changed
      const b = Buffer.from(template)
      for (let k = 1 + rand(4); k > 0; k--) b[rand(b.length)] = rand(256)
      return b
    }
    case 3: { // the header scrambled (counts, opcode, QR, rcode)
      const b = Buffer.from(template)
      for (let i = 2; i < 12; i++) if (rand(2) === 0) b[i] = rand(256)
      return b
    }
    default: { // a question of random label lengths, pointers and loops
      const b = Buffer.alloc(12 + rand(80))
      b.writeUInt16BE(rand(65536), 0)
      b[5] = 1
      for (let i = 12; i < b.length; i++) b[i] = rand(4) === 0 ? 0xc0 | rand(64) : rand(70)
      return b
    }
  }
}

t.test('10,000 garbage datagrams and 10,000 garbage TCP frames leave the server answering correctly', async (t) => {
  const dead = dgram.createSocket('udp4')
  t.teardown(() => dead.close())
  await new Promise<void>((resolve) => dead.bind(0, loopback(3, 100), resolve))
  const fx = await startDns(t, {
    host: loopback(3, 1),
    // Names outside the suffix go to a silent upstream, so garbage exercises forwarding too.
    config: { dns: { upstreams: [`${loopback(3, 100)}:${dead.address().port}`] } },
    endpoints: [ep4],
    server: { forwardTimeoutMs: 100, tcpIdleTimeoutMs: 2000 }
  })
  const rand = prng(0x5eed)
  const templates = [
    encodeQuery(regionalName(ep4, fx.config), Packet.TYPE.A),
    encodeQuery(zonalName(ep4, fx.config), Packet.TYPE.AAAA, { ednsVersion: 0 }),
    encodeQuery('privatelink.internal', Packet.TYPE.SOA),
    encodeQuery('outside.example.test', Packet.TYPE.A)
  ]

  // ---- UDP ----
  const client = dgram.createSocket('udp4')
  t.teardown(() => client.close())
  let udpReplies = 0
  let udpWithoutQr = 0
  client.on('message', (msg) => {
    udpReplies++
    if (msg.length < 12 || ((msg[2] as number) & 0x80) === 0) udpWithoutQr++
  })
  client.on('error', () => {})
  await new Promise<void>((resolve) => client.bind(0, loopback(3, 2), resolve))
  const udpDeadline = Date.now() + PHASE_DEADLINE_MS
  for (let sent = 0; sent < PACKETS && Date.now() < udpDeadline;) {
    for (let k = 0; k < 50 && sent < PACKETS; k++, sent++) client.send(garbage(rand, templates), fx.udpPort, fx.host)
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.ok(udpReplies > 1000, `UDP: ${udpReplies} replies to ${PACKETS} datagrams`)
  t.equal(udpWithoutQr, 0, 'every UDP reply is a well-formed response (QR set)')

  // ---- TCP: 50 connections x 200 frames, 10 connections at a time ----
  let tcpFrames = 0
  let tcpReplies = 0
  const tcpDeadline = Date.now() + PHASE_DEADLINE_MS
  const connection = (frames: Buffer[]): Promise<void> => new Promise((resolve) => {
    const socket = net.connect({ host: fx.host, port: fx.tcpPort })
    const timer = setTimeout(() => socket.destroy(), 5000)
    let buf = Buffer.alloc(0)
    socket.on('error', () => {})
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk])
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        tcpReplies++
        buf = buf.subarray(2 + buf.readUInt16BE(0))
      }
    })
    socket.on('close', () => {
      clearTimeout(timer)
      resolve()
    })
    socket.on('connect', () => socket.end(Buffer.concat(frames)))
  })
  for (let group = 0; group < 5 && Date.now() < tcpDeadline; group++) {
    const batch: Array<Promise<void>> = []
    for (let c = 0; c < 10; c++) {
      const frames: Buffer[] = []
      for (let f = 0; f < 200; f++, tcpFrames++) {
        const g = garbage(rand, templates)
        if (f === 199 || rand(100) === 0) {
          // A lying length prefix (the last frame always): the stream loses its framing, or
          // ends inside a message the server must then forget.
          const len = Buffer.alloc(2)
          len.writeUInt16BE(rand(65536))
          frames.push(len, g)
        } else {
          frames.push(frame(g))
        }
      }
      batch.push(connection(frames))
    }
    await Promise.all(batch)
  }
  t.equal(tcpFrames, PACKETS, `TCP: ${tcpFrames} frames sent, ${tcpReplies} replies`)
  t.ok(tcpReplies > 0)
  t.ok(await eventually(() => fx.server.tcpConnections === 0, 3000), 'no TCP connection left behind')

  // ---- still serving ----
  const after = await query(fx, regionalName(ep4, fx.config), Packet.TYPE.A)
  t.equal(after.header.rcode, 0)
  t.equal(after.answers[0]?.address, '127.10.1.77')
  if (digOrComment(t)) {
    for (const extra of [[], ['+tcp']]) {
      const r = await dig(fx.host, fx.udpPort, zonalName(ep4, fx.config), 'A', extra)
      t.equal(r.status, 'NOERROR', `dig ${extra.join()}`)
      t.same(r.answer.map((a) => a.data), ['127.10.1.77'])
    }
  }
  const metrics = await fx.metrics.registry.metrics()
  t.match(metrics, /linkgate_dns_queries_total\{qtype="none",rcode="FORMERR"\} \d+/, 'FORMERR answers were counted')
  const series = metrics.split('\n').filter((l) => l.startsWith('linkgate_dns_queries_total{')).length
  t.ok(series < 600, `label cardinality stays bounded (${series} series)`)
})
