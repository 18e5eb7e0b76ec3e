// PROXY protocol toward backends (SPEC §13), read byte by byte on a raw TCP backend behind a real
// data plane: the v2 preamble, addresses, TLVs (0xEA/0x01 endpoint id, 0x03 CRC32C) and the
// client's bytes after it unchanged; v1's line; IPv6 (TCP6) on ::1; a server-first backend gets
// the header before anything; a PATCH to `off` reaches new connections while live ones go on.
// The parser here is written from haproxy's doc/proxy-protocol.txt, independently of the encoder.
// Addresses: 127.74.1.x (and ::1).
import { createSocket } from 'node:dgram'
import { createServer, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { createUdpListener } from '../../src/dataplane/udp-proxy.ts'
import { crc32c, createProxyHeaderEncoder, V1_UNKNOWN_HEADER, V2_LOCAL_HEADER } from '../../src/dataplane/proxy-protocol.ts'
import {
  connectTo, freePort, makeBackend, makeEndpoint, makeService, openStore, putEndpoint, putService, startDataPlane, startProxy,
  startTcpServer, updateService, waitFor, type TestServer
} from '../helpers/dataplane-fixtures.ts'

const ENDPOINT_IP = '127.74.1.10'
const BACKEND_IP = '127.74.1.30'
const CLIENT_IP = '127.74.1.20'
const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex')

interface ParsedV2 {
  command: number
  family: number
  src: string
  dst: string
  srcPort: number
  dstPort: number
  tlvs: Array<{ type: number, value: Buffer }>
  /** Total header length (16 + len). */
  length: number
  crcOk: boolean | null
}

function ipText (bytes: Buffer): string {
  if (bytes.length === 4) return [...bytes].join('.')
  const groups: string[] = []
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16))
  return groups.join(':')
}

/** A v2 header at the start of `buf`, parsed field by field (proxy-protocol.txt §2.2). */
function parseV2 (buf: Buffer): ParsedV2 {
  if (!buf.subarray(0, 12).equals(SIG)) throw new Error(`no v2 signature: ${buf.subarray(0, 16).toString('hex')}`)
  const verCmd = buf[12] as number
  if (verCmd >> 4 !== 2) throw new Error(`version ${verCmd >> 4}`)
  const family = buf[13] as number
  const len = buf.readUInt16BE(14)
  const length = 16 + len
  if (buf.length < length) throw new Error(`header says ${length} bytes, got ${buf.length}`)
  let off = 16
  let src = ''
  let dst = ''
  let srcPort = 0
  let dstPort = 0
  if (family === 0x11) {
    src = ipText(buf.subarray(off, off + 4)); dst = ipText(buf.subarray(off + 4, off + 8))
    srcPort = buf.readUInt16BE(off + 8); dstPort = buf.readUInt16BE(off + 10)
    off += 12
  } else if (family === 0x21) {
    src = ipText(buf.subarray(off, off + 16)); dst = ipText(buf.subarray(off + 16, off + 32))
    srcPort = buf.readUInt16BE(off + 32); dstPort = buf.readUInt16BE(off + 34)
    off += 36
  }
  const tlvs: ParsedV2['tlvs'] = []
  let crcOk: boolean | null = null
  while (off < length) {
    const type = buf[off] as number
    const vlen = buf.readUInt16BE(off + 1)
    if (off + 3 + vlen > length) throw new Error(`TLV 0x${type.toString(16)} overruns the header`)
    const value = buf.subarray(off + 3, off + 3 + vlen)
    tlvs.push({ type, value: Buffer.from(value) })
    if (type === 0x03) {
      const copy = Buffer.from(buf.subarray(0, length))
      copy.fill(0, off + 3, off + 7)
      crcOk = crc32c(copy) === value.readUInt32BE(0)
    }
    off += 3 + vlen
  }
  if (off !== length) throw new Error('TLVs do not end at the header end')
  return { command: verCmd & 0x0F, family, src, dst, srcPort, dstPort, tlvs, length, crcOk }
}

/** A backend that records every byte each connection sends, and echoes nothing. */
async function recordingBackend (t: Test, host: string, greet?: string): Promise<TestServer & { received: Buffer[], firstReads: Buffer[], conns: Socket[] }> {
  const received: Buffer[] = []
  const firstReads: Buffer[] = []
  const conns: Socket[] = []
  const server = await startTcpServer(t, host, (s) => {
    const index = received.length
    received.push(Buffer.alloc(0))
    conns.push(s)
    if (greet !== undefined) s.write(greet)
    s.on('data', (c: Buffer) => {
      firstReads[index] ??= Buffer.from(c)
      received[index] = Buffer.concat([received[index] as Buffer, c])
    })
  })
  return Object.assign(server, { received, firstReads, conns })
}

t.test('crc32c matches the Castagnoli check value: crc32c("123456789") = 0xE3069283', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xE3069283)
  t.equal(crc32c(Buffer.alloc(0)), 0)
  // RFC 3720 §B.4: 32 bytes of zeros -> 0x8A9136AA, of 0xFF -> 0x62A8AB43.
  t.equal(crc32c(Buffer.alloc(32, 0)), 0x8A9136AA)
  t.equal(crc32c(Buffer.alloc(32, 0xFF)), 0x62A8AB43)
})

t.test('LOCAL headers: v2 is the 16-byte LOCAL/UNSPEC preamble, v1 is PROXY UNKNOWN', async (t) => {
  const h = parseV2(V2_LOCAL_HEADER)
  t.equal(h.command, 0, 'LOCAL')
  t.equal(h.family, 0, 'UNSPEC')
  t.equal(h.length, 16)
  t.equal(V1_UNKNOWN_HEADER.toString(), 'PROXY UNKNOWN\r\n')
})

t.test('encoders: odd addresses give null, an IPv4 client of an IPv6 endpoint is ::ffff:-mapped, v1 stays within 107 bytes', async (t) => {
  const v2 = createProxyHeaderEncoder('v2', '127.74.1.10', 443, 'vpce-0123456789ab')
  for (const bad of ['', 'localhost', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1..2.3', '1.2.3.4 ', 'fe80::zz']) t.equal(v2.encode(bad, 1), null, JSON.stringify(bad))
  const mappedClient = parseV2(v2.encode('::ffff:127.74.1.20', 5000) as Buffer)
  t.same([mappedClient.family, mappedClient.src, mappedClient.crcOk], [0x11, '127.74.1.20', true], 'a ::ffff: client of an IPv4 endpoint is TCP4')
  const v6 = createProxyHeaderEncoder('v2', 'fd00::10', 443, 'vpce-0123456789ab')
  const h = parseV2(v6.encode('127.74.1.20', 5000) as Buffer)
  t.same([h.family, h.src, h.dst, h.crcOk], [0x21, '0:0:0:0:0:ffff:7f4a:114', 'fd00:0:0:0:0:0:0:10', true])
  t.equal(parseV2(v6.encode('fe80::1%eth0', 1) as Buffer).src, 'fe80:0:0:0:0:0:0:1', 'zone index dropped')
  const v1 = createProxyHeaderEncoder('v1', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe', 65535, 'vpce-0123456789ab')
  const longest = v1.encode('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 65535) as Buffer
  t.ok(longest.length <= 107, `${longest.length} bytes`)
  t.equal(longest.toString(), 'PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n')
  t.equal(v1.encode('not an address', 1), null)
})

t.test('v2: the backend reads the header, then the client bytes unchanged', async (t) => {
  const backend = await recordingBackend(t, BACKEND_IP)
  const fx = await startProxy(t, { ip: ENDPOINT_IP, backends: [makeBackend(BACKEND_IP)], servicePort: backend.port })
  await updateService(fx.store, fx.service.id, () => ({ proxyProtocol: 'v2' }))
  const client = await connectTo(t, ENDPOINT_IP, fx.port, { localAddress: CLIENT_IP })
  const payload = Buffer.concat([Buffer.from('GET / HTTP/1.1\r\n\r\n'), Buffer.from([0, 0x0d, 0x0a, 0xff, 0x51])])
  client.write(payload)
  await waitFor(() => (backend.received[0]?.length ?? 0) >= 16 && (backend.received[0] as Buffer).length >= parseV2(backend.received[0] as Buffer).length + payload.length, 2000, 'header and payload')
  const got = backend.received[0] as Buffer
  const h = parseV2(got)
  t.equal(got[12], 0x21, 'version 2, command PROXY')
  t.equal(h.family, 0x11, 'TCP over IPv4')
  t.equal(h.src, CLIENT_IP)
  t.equal(h.srcPort, client.localPort)
  t.equal(h.dst, ENDPOINT_IP)
  t.equal(h.dstPort, fx.port)
  t.same(h.tlvs.map((x) => x.type), [0xEA, 0x03], 'AWS TLV, then CRC32C')
  const aws = h.tlvs[0]?.value as Buffer
  t.equal(aws[0], 0x01, 'subtype PP2_SUBTYPE_AWS_VPCE_ID')
  t.equal(aws.subarray(1).toString('latin1'), fx.endpoint.id)
  t.equal(h.tlvs[1]?.value.length, 4)
  t.equal(h.crcOk, true, 'CRC32C over the header with its field zeroed')
  t.same(got.subarray(h.length), payload, 'the client bytes follow unchanged')
  t.equal(backend.firstReads[0]?.length, h.length + payload.length, 'header and waiting client bytes arrive in one read (one writev)')
  // The header travels once: more client bytes arrive as they are.
  client.write('more')
  await waitFor(() => (backend.received[0] as Buffer).length === h.length + payload.length + 4, 2000, 'second write')
  t.equal((backend.received[0] as Buffer).subarray(h.length + payload.length).toString(), 'more')
})

t.test('v2: a corrupted byte makes the CRC32C check fail (the test parser can fail)', async (t) => {
  const backend = await recordingBackend(t, BACKEND_IP)
  const fx = await startProxy(t, { ip: ENDPOINT_IP, backends: [makeBackend(BACKEND_IP)], servicePort: backend.port })
  await updateService(fx.store, fx.service.id, () => ({ proxyProtocol: 'v2' }))
  const client = await connectTo(t, ENDPOINT_IP, fx.port, { localAddress: CLIENT_IP })
  client.write('x')
  await waitFor(() => (backend.received[0]?.length ?? 0) > 16 && (backend.received[0] as Buffer).length > parseV2(backend.received[0] as Buffer).length, 2000, 'header')
  const got = Buffer.from(backend.received[0] as Buffer)
  got[18] = (got[18] as number) ^ 0x01 // a bit of the source address
  t.equal(parseV2(got).crcOk, false)
})

t.test('v2 reaches a server-first backend before any client byte', async (t) => {
  const backend = await recordingBackend(t, BACKEND_IP, '220 ready\r\n')
  const fx = await startProxy(t, { ip: ENDPOINT_IP, backends: [makeBackend(BACKEND_IP)], servicePort: backend.port })
  await updateService(fx.store, fx.service.id, () => ({ proxyProtocol: 'v2' }))
  const client = await connectTo(t, ENDPOINT_IP, fx.port, { localAddress: CLIENT_IP })
  const greeting = await new Promise<string>((resolve) => client.once('data', (c: Buffer) => resolve(c.toString())))
  t.equal(greeting, '220 ready\r\n')
  await waitFor(() => (backend.received[0]?.length ?? 0) >= 16, 2000, 'header without client bytes')
  const h = parseV2(backend.received[0] as Buffer)
  t.equal(h.src, CLIENT_IP)
  t.equal((backend.received[0] as Buffer).length, h.length, 'the header alone: the client has sent nothing')
})

t.test('v1: the backend reads one PROXY TCP4 line, then the client bytes', async (t) => {
  const backend = await recordingBackend(t, BACKEND_IP)
  const fx = await startProxy(t, { ip: ENDPOINT_IP, backends: [makeBackend(BACKEND_IP)], servicePort: backend.port })
  await updateService(fx.store, fx.service.id, () => ({ proxyProtocol: 'v1' }))
  const client = await connectTo(t, ENDPOINT_IP, fx.port, { localAddress: CLIENT_IP })
  client.write('hello')
  const line = `PROXY TCP4 ${CLIENT_IP} ${ENDPOINT_IP} ${client.localPort} ${fx.port}\r\n`
  await waitFor(() => (backend.received[0]?.length ?? 0) >= line.length + 5, 2000, 'line and payload')
  t.equal((backend.received[0] as Buffer).toString('latin1'), line + 'hello')
})

t.test('PATCH to off: new connections carry no header, a live v2 connection goes on', async (t) => {
  // Echo after the header: strip a v2 header from the first bytes, then echo everything.
  const backend = await startTcpServer(t, BACKEND_IP, (s) => {
    let pending: Buffer | null = Buffer.alloc(0)
    s.on('data', (c: Buffer) => {
      if (pending === null) { s.write(c); return }
      pending = Buffer.concat([pending, c])
      if (pending.length >= 12 && pending.subarray(0, 12).equals(SIG)) {
        if (pending.length < 16) return
        const len = 16 + pending.readUInt16BE(14)
        if (pending.length < len) return
        const rest = pending.subarray(len)
        pending = null
        s.write(Buffer.concat([Buffer.from('[pp2]'), rest]))
      } else if (pending.length >= 12 || !SIG.subarray(0, pending.length).equals(pending)) {
        const rest = pending
        pending = null
        s.write(Buffer.concat([Buffer.from('[plain]'), rest]))
      }
    })
  })
  const fx = await startProxy(t, { ip: ENDPOINT_IP, backends: [makeBackend(BACKEND_IP)], servicePort: backend.port })
  await updateService(fx.store, fx.service.id, () => ({ proxyProtocol: 'v2' }))
  const live = await connectTo(t, ENDPOINT_IP, fx.port, { localAddress: CLIENT_IP })
  t.equal(await readSome(live, 'one-two', '[pp2]one-two'.length), '[pp2]one-two', 'the first connection carries a v2 header')
  await updateService(fx.store, fx.service.id, () => ({ proxyProtocol: 'off' }))
  const fresh = await connectTo(t, ENDPOINT_IP, fx.port, { localAddress: CLIENT_IP })
  const freshReply = await readSome(fresh, 'abcdefghijklmnop', '[plain]abcdefghijklmnop'.length)
  t.equal(freshReply, '[plain]abcdefghijklmnop', 'a new connection after the PATCH carries no header')
  const liveReply = await readSome(live, 'still here', 'still here'.length)
  t.equal(liveReply, 'still here', 'the live connection still flows')
})

/** Write `message`, resolve with the first `n` bytes that come back as text. */
function readSome (socket: Socket, message: string, n: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0)
    const timer = setTimeout(() => reject(new Error(`only ${got.length} of ${n} bytes back`)), 2000)
    const onData = (c: Buffer): void => {
      got = Buffer.concat([got, c])
      if (got.length >= n) {
        clearTimeout(timer)
        socket.off('data', onData)
        resolve(got.subarray(0, n).toString())
      }
    }
    socket.on('data', onData)
    socket.write(message)
  })
}

const hasIpv6Loopback = await new Promise<boolean>((resolve) => {
  const s = createServer()
  s.once('error', () => resolve(false))
  s.listen({ host: '::1', port: 0 }, () => s.close(() => resolve(true)))
})

t.test('IPv6 client and endpoint: v2 uses TCP6 with the ::1 addresses, v1 a PROXY TCP6 line', { skip: hasIpv6Loopback ? false : 'no ::1 on this machine' }, async (t) => {
  const backend = await recordingBackend(t, '::1')
  const fx = await startProxy(t, { ip: '::1', backends: [makeBackend('::1')], servicePort: backend.port, allowedSources: ['::/0', '0.0.0.0/0'] })
  await updateService(fx.store, fx.service.id, () => ({ proxyProtocol: 'v2' }))
  const c2 = await connectTo(t, '::1', fx.port)
  c2.write('six')
  await waitFor(() => (backend.received[0]?.length ?? 0) > 16 && (backend.received[0] as Buffer).length >= parseV2(backend.received[0] as Buffer).length + 3, 2000, 'v2 header')
  const h = parseV2(backend.received[0] as Buffer)
  t.equal(h.family, 0x21, 'TCP over IPv6')
  t.equal(h.src, '0:0:0:0:0:0:0:1')
  t.equal(h.dst, '0:0:0:0:0:0:0:1')
  t.equal(h.srcPort, c2.localPort)
  t.equal(h.dstPort, fx.port)
  t.equal(h.crcOk, true)
  t.equal((h.tlvs[0]?.value as Buffer).subarray(1).toString(), fx.endpoint.id)
  t.equal((backend.received[0] as Buffer).subarray(h.length).toString(), 'six')

  await updateService(fx.store, fx.service.id, () => ({ proxyProtocol: 'v1' }))
  const c1 = await connectTo(t, '::1', fx.port)
  c1.write('one')
  const line = `PROXY TCP6 ::1 ::1 ${c1.localPort} ${fx.port}\r\n`
  await waitFor(() => (backend.received[1]?.length ?? 0) >= line.length + 3, 2000, 'v1 line')
  t.equal((backend.received[1] as Buffer).toString(), line + 'one')
})

t.test('UDP mappings ignore proxyProtocol: a datagram of a v2 service reaches the backend unchanged', async (t) => {
  const backend = createSocket('udp4')
  t.teardown(() => backend.close())
  const seen: Buffer[] = []
  backend.on('message', (msg, rinfo) => { seen.push(msg); backend.send(msg, rinfo.port, rinfo.address) })
  await new Promise<void>((resolve) => backend.bind(0, BACKEND_IP, resolve))
  const servicePort = backend.address().port
  const store = await openStore(t)
  const terminalPort = await freePort(ENDPOINT_IP)
  const service = makeService({ portMappings: [{ protocol: 'UDP', servicePort, terminalPort }], backends: [makeBackend(BACKEND_IP)], proxyProtocol: 'v2' })
  await putService(store, service)
  await putEndpoint(store, makeEndpoint(service, { ip: ENDPOINT_IP }))
  await startDataPlane(t, { store, udpFactory: createUdpListener })
  const client = createSocket('udp4')
  t.teardown(() => client.close())
  await new Promise<void>((resolve) => client.bind(0, CLIENT_IP, resolve))
  const payload = Buffer.from('\r\n\r\n\0\r\nQUIT\n-looks-like-a-signature-but-is-data')
  const reply = new Promise<Buffer>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no reply within 2 s')), 2000)
    client.once('message', (msg) => { clearTimeout(timer); resolve(msg) })
  })
  client.send(payload, terminalPort, ENDPOINT_IP)
  t.same(await reply, payload, 'the echo is the datagram itself')
  t.same(seen, [payload], 'the backend received exactly the client datagram')
})
