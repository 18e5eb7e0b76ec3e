// Issue 13's DNS defects: DNS over TCP reassembles a trickled message with one copy, not one
// copy of everything so far per chunk; the forwarder's in-flight cap counts its TCP fallbacks.
// Addresses: 127.71.30.0/24.
import dgram from 'node:dgram'
import net, { type AddressInfo } from 'node:net'
import pino from 'pino'
import t from 'tap'
import { Forwarder } from '../../src/dns/forwarder.ts'
import { FrameParts } from '../../src/dns/frame-parts.ts'
import { Packet, encodeQuery, frame, makeEndpoint, regionalName, startDns } from './helpers.ts'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

t.test('FrameParts: a 64 KiB message trickled a byte at a time is joined once, in linear time', async (t) => {
  const size = 65535
  const message = Buffer.alloc(size + 2 + 3, 7)
  message.writeUInt16BE(size, 0)
  const parts = new FrameParts()
  const started = performance.now()
  let complete: Buffer | undefined
  let completions = 0
  for (let i = 0; i < message.length; i++) {
    const got = parts.add(message.subarray(i, i + 1))
    if (got !== undefined) {
      completions++
      complete = got
      parts.keep(got.subarray(size + 2))
    }
  }
  const ms = performance.now() - started
  t.equal(completions, 1, 'one complete message')
  t.equal(complete?.length, size + 2, 'all of it, nothing more')
  t.ok(complete?.subarray(0, size + 2).equals(message.subarray(0, size + 2)), 'byte for byte')
  // A copy of everything so far per byte would move ~2 GB here: seconds, not milliseconds.
  t.ok(ms < 1000, `took ${ms.toFixed(0)} ms`)
})

t.test('FrameParts: a length prefix split across chunks, several messages in one chunk', async (t) => {
  const a = frame(Buffer.from('first'))
  const b = frame(Buffer.from('second!'))
  const parts = new FrameParts()
  t.equal(parts.add(a.subarray(0, 1)), undefined, 'one byte of the prefix')
  t.equal(parts.add(a.subarray(1, 3)), undefined, 'the other byte and one of the payload')
  const all = parts.add(Buffer.concat([a.subarray(3), b]))
  t.same(all, Buffer.concat([a, b]), 'both messages come back together for the caller to split')
  t.equal(parts.add(b), b, 'a complete message on its own is passed through without a copy')
})

t.test('the DNS server answers a query that arrives over TCP one byte at a time', async (t) => {
  const ep = makeEndpoint({ id: 'vpce-0000000071d1', ip: '127.71.31.5' })
  const fx = await startDns(t, { host: '127.71.30.1', endpoints: [ep] })
  const name = regionalName(ep, fx.config)
  const query = frame(encodeQuery(name, Packet.TYPE.A, { id: 7131 }))
  const socket = net.connect({ host: fx.host, port: fx.tcpPort })
  t.teardown(() => socket.destroy())
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
  socket.setNoDelay(true)
  const answer = new Promise<Buffer>((resolve) => {
    let buf = Buffer.alloc(0)
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      if (buf.length >= 2 && buf.length >= buf.readUInt16BE(0) + 2) resolve(buf.subarray(2))
    })
  })
  for (let i = 0; i < query.length; i++) {
    socket.write(query.subarray(i, i + 1))
    await sleep(2)
  }
  const response = Packet.parse(await answer)
  t.equal(response.header.id, 7131)
  t.equal((response.answers[0] as { address?: string } | undefined)?.address, '127.71.31.5')
})

t.test('300 TCP connections that trickle a byte now and then do not lock a real client out', async (t) => {
  const ep = makeEndpoint({ id: 'vpce-0000000071d2', ip: '127.71.31.6' })
  const fx = await startDns(t, { host: '127.71.30.2', endpoints: [ep] })
  const drips: net.Socket[] = []
  t.teardown(() => { for (const s of drips) s.destroy() })
  for (let i = 0; i < 300; i++) {
    const s = net.connect({ host: fx.host, port: fx.tcpPort })
    s.on('error', () => {})
    drips.push(s)
    await new Promise<void>((resolve) => { s.once('connect', () => resolve()); s.once('close', () => resolve()) })
    if (!s.destroyed) s.write(Buffer.from([0])) // half a length prefix: never a whole query
  }
  await sleep(200)
  const open = drips.filter((s) => !s.destroyed).length
  t.ok(open <= 256, `at most 256 held open (${open})`)
  const name = regionalName(ep, fx.config)
  const socket = net.connect({ host: fx.host, port: fx.tcpPort })
  t.teardown(() => socket.destroy())
  const answer = new Promise<Buffer>((resolve, reject) => {
    let buf = Buffer.alloc(0)
    socket.on('error', reject)
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      if (buf.length >= 2 && buf.length >= buf.readUInt16BE(0) + 2) resolve(buf.subarray(2))
    })
  })
  socket.write(frame(encodeQuery(name, Packet.TYPE.A, { id: 7132 })))
  const response = Packet.parse(await answer)
  t.equal(response.header.id, 7132)
  t.equal((response.answers[0] as { address?: string } | undefined)?.address, '127.71.31.6', 'answered while 256 drippers hold connections')
})

t.test('the forwarder\'s in-flight cap counts the TCP fallbacks of truncated answers', async (t) => {
  // Upstream: UDP answers every query truncated (TC); TCP accepts and never answers.
  const udp = dgram.createSocket('udp4')
  let udpQueries = 0
  udp.on('message', (msg, rinfo) => {
    udpQueries++
    const reply = Buffer.from(msg)
    reply[2] = ((reply[2] as number) | 0x80 | 0x02) // QR + TC
    udp.send(reply, rinfo.port, rinfo.address)
  })
  await new Promise<void>((resolve) => udp.bind(0, '127.71.30.50', resolve))
  t.teardown(() => udp.close())
  const port = udp.address().port
  const held: net.Socket[] = []
  const tcp = net.createServer((s) => { held.push(s); s.on('error', () => {}) })
  await new Promise<void>((resolve) => tcp.listen(port, '127.71.30.50', resolve))
  t.teardown(() => { for (const s of held) s.destroy(); tcp.close() })
  t.equal((tcp.address() as AddressInfo).port, port)

  const forwarder = new Forwarder({ upstreams: [`127.71.30.50:${port}`], logger: pino({ level: 'silent' }), timeoutMs: 1000, maxPending: 1 })
  t.teardown(() => forwarder.close())
  const q1 = encodeQuery('one.example.test', Packet.TYPE.A)
  const q2 = encodeQuery('two.example.test', Packet.TYPE.A)
  const questionEnd = (q: Buffer): number => q.length // no additional records in these queries
  const first = forwarder.forward(q1, questionEnd(q1), true)
  // Wait until the first query has moved on to its TCP fallback (UDP answered, TCP held).
  for (let i = 0; i < 100 && held.length === 0; i++) await sleep(10)
  t.equal(held.length, 1, 'the first query is on its TCP fallback')
  const started = performance.now()
  const second = await forwarder.forward(q2, questionEnd(q2), false)
  t.equal(second, undefined, 'at the cap, the second query fails at once (SERVFAIL) instead of going out')
  t.ok(performance.now() - started < 100, 'at once')
  t.equal(udpQueries, 1, 'the upstream never saw the second query')
  const r1 = await first
  t.ok(r1 !== undefined && ((r1[2] as number) & 0x02) !== 0, 'the first gets its truncated answer when the TCP fallback times out')
})
