// answers.ts and records.ts, pure: real query packets (encoded by dns2) in, response bytes out,
// decoded by dns2 (an independent codec) and checked field by field.
import t from 'tap'
import { buildConfig } from '../../src/config/load-config.ts'
import { endpointDnsNames } from '../../src/control/dns-names.ts'
import { answerQuery, createAnswer, qtypeName, rcodeName, type Transport } from '../../src/dns/answers.ts'
import { buildZone, encodeName, endpointRecords, hashWire, nextSerial, type DnsZone } from '../../src/dns/records.ts'
import { encodeQuery, makeEndpoint, Packet, regionalName, stateOf, zonalName, type DecodedPacket } from './helpers.ts'

const config = buildConfig({ listen: { dns: '127.23.0.1:5353' }, dns: { ttl: 42 } })
const forwarding = buildConfig({ listen: { dns: '127.23.0.1:5353' }, dns: { ttl: 42, upstreams: ['127.23.0.2:53'] } })
const ep4 = makeEndpoint({ id: 'vpce-00000000000a', ip: '127.10.1.5', zone: 'zone-a' })
const ep6 = makeEndpoint({ id: 'vpce-00000000000b', ip: '::1', zone: 'zone-b', subnetId: 'subnet-v6' })
const pending = makeEndpoint({ id: 'vpce-00000000000c', ip: '127.10.1.6', status: 'pendingAcceptance' })
const noDns = makeEndpoint({ id: 'vpce-00000000000d', ip: '127.10.1.7', privateDns: false })
const state = stateOf(ep4, ep6, pending, noDns)
const SERIAL = 2000000001

function zoneOf (c = config, s = state): DnsZone {
  return buildZone(endpointRecords(s, c), c, { serial: SERIAL })
}
const zone = zoneOf()

function ask (query: Buffer, z = zone, transport: Transport = 'udp'): { response: Buffer, packet: DecodedPacket, qtype: number, rcode: number } {
  const answer = answerQuery(query, z, transport)
  if (answer.action !== 'reply' || answer.response === undefined) throw new Error(`expected a reply, got ${answer.action}`)
  const response = transport === 'tcp' ? answer.response.subarray(2) : answer.response
  return { response, packet: Packet.parse(response), qtype: answer.qtype, rcode: answer.rcode }
}

const soaOf = (p: DecodedPacket): Record<string, unknown> => p.authorities[0] as unknown as Record<string, unknown>

t.test('endpointRecords publishes both names of accepted privateDns endpoints only, as endpointDnsNames computes them', async (t) => {
  const records = endpointRecords(state, config)
  const expected = [...endpointDnsNames(ep4, config).map((name) => ({ name, address: '127.10.1.5' })),
    ...endpointDnsNames(ep6, config).map((name) => ({ name, address: '::1' }))]
  t.same(records.slice().sort((a, b) => a.name.localeCompare(b.name)), expected.sort((a, b) => a.name.localeCompare(b.name)))
  t.equal(endpointDnsNames(ep4, config)[0], `vpce-00000000000a.${ep4.serviceId}.local-1.privatelink.internal`)
  t.equal(endpointDnsNames(ep4, config)[1], `vpce-00000000000a-zone-a.${ep4.serviceId}.local-1.privatelink.internal`)
})

t.test('A query for the regional name answers the IPv4 address, authoritative, TTL = dns.ttl', async (t) => {
  const { packet, rcode } = ask(encodeQuery(regionalName(ep4, config), Packet.TYPE.A, { id: 4242 }))
  t.equal(rcode, 0)
  t.equal(packet.header.id, 4242)
  t.equal(packet.header.qr, 1)
  t.equal(packet.header.aa, 1)
  t.equal(packet.header.rcode, 0)
  t.equal(packet.answers.length, 1)
  t.match(packet.answers[0], { name: regionalName(ep4, config), type: Packet.TYPE.A, class: Packet.CLASS.IN, ttl: 42, address: '127.10.1.5' })
  t.equal(packet.authorities.length, 0)
})

t.test('A query for the zonal name answers the same address', async (t) => {
  const { packet } = ask(encodeQuery(zonalName(ep4, config), Packet.TYPE.A))
  t.match(packet.answers, [{ name: zonalName(ep4, config), address: '127.10.1.5', ttl: 42 }])
})

t.test('mixed-case query matches, and the response echoes the exact question bytes and case', async (t) => {
  const name = regionalName(ep4, config).replace(/^vpce/, 'VpCe').replace('privatelink', 'PrivateLINK')
  const query = encodeQuery(name, Packet.TYPE.A)
  const { response, packet } = ask(query)
  t.equal(packet.answers[0]?.name, name)
  t.equal(packet.answers[0]?.address, '127.10.1.5')
  const questionLength = encodeName(name).length + 4
  t.same(response.subarray(12, 12 + questionLength), query.subarray(12, 12 + questionLength))
})

t.test('RD is copied from the query; RA is clear without upstreams', async (t) => {
  t.equal(ask(encodeQuery(regionalName(ep4, config), Packet.TYPE.A, { rd: true })).packet.header.rd, 1)
  const noRd = ask(encodeQuery(regionalName(ep4, config), Packet.TYPE.A, { rd: false })).packet
  t.equal(noRd.header.rd, 0)
  t.equal(noRd.header.ra, 0)
})

t.test('AAAA query for an IPv6 endpoint answers its address', async (t) => {
  const { packet } = ask(encodeQuery(regionalName(ep6, config), Packet.TYPE.AAAA))
  t.equal(packet.header.rcode, 0)
  t.equal(packet.header.aa, 1)
  t.match(packet.answers, [{ name: regionalName(ep6, config), type: Packet.TYPE.AAAA, ttl: 42, address: '::1' }])
})

t.test('AAAA query for an IPv4 endpoint is NODATA: NOERROR, no answer, the SOA in authority', async (t) => {
  const { packet } = ask(encodeQuery(regionalName(ep4, config), Packet.TYPE.AAAA))
  t.equal(packet.header.rcode, 0)
  t.equal(packet.header.aa, 1)
  t.equal(packet.answers.length, 0)
  t.equal(packet.authorities.length, 1)
  t.match(soaOf(packet), { name: 'privatelink.internal', type: Packet.TYPE.SOA, ttl: 42, primary: 'ns.privatelink.internal', admin: 'hostmaster.privatelink.internal', serial: SERIAL, minimum: 42 })
})

t.test('an unknown name under the suffix is NXDOMAIN with the SOA in authority', async (t) => {
  const { packet, rcode } = ask(encodeQuery(`vpce-ffffffffffff.${ep4.serviceId}.local-1.privatelink.internal`, Packet.TYPE.A))
  t.equal(rcode, 3)
  t.equal(packet.header.rcode, 3)
  t.equal(packet.header.aa, 1)
  t.equal(packet.answers.length, 0)
  t.match(soaOf(packet), { name: 'privatelink.internal', type: Packet.TYPE.SOA, serial: SERIAL, minimum: 42 })
})

t.test('pending and privateDns=false endpoints have no name', async (t) => {
  t.equal(ask(encodeQuery(regionalName(pending, config), Packet.TYPE.A)).packet.header.rcode, 3)
  t.equal(ask(encodeQuery(regionalName(noDns, config), Packet.TYPE.A)).packet.header.rcode, 3)
})

t.test('ancestors of existing names (empty non-terminals) are NODATA, not NXDOMAIN (RFC 8020)', async (t) => {
  for (const name of [`${ep4.serviceId}.local-1.privatelink.internal`, 'local-1.privatelink.internal']) {
    const { packet } = ask(encodeQuery(name, Packet.TYPE.A))
    t.equal(packet.header.rcode, 0, name)
    t.equal(packet.answers.length, 0, name)
    t.equal(packet.authorities[0]?.type, Packet.TYPE.SOA, name)
  }
})

t.test('SOA and NS queries for the suffix itself are answered', async (t) => {
  const soa = ask(encodeQuery('privatelink.internal', Packet.TYPE.SOA)).packet
  t.equal(soa.header.aa, 1)
  t.match(soa.answers, [{ name: 'privatelink.internal', type: Packet.TYPE.SOA, primary: 'ns.privatelink.internal', admin: 'hostmaster.privatelink.internal', serial: SERIAL, refresh: 3600, retry: 600, expiration: 86400, minimum: 42 }])
  const ns = ask(encodeQuery('PrivateLink.Internal', Packet.TYPE.NS)).packet
  t.match(ns.answers, [{ name: 'PrivateLink.Internal', type: Packet.TYPE.NS, ns: 'ns.privatelink.internal' }])
  const glue = ask(encodeQuery('ns.privatelink.internal', Packet.TYPE.A)).packet
  t.match(glue.answers, [{ address: '127.23.0.1' }], 'the NS target resolves to the DNS listener')
})

t.test('ANY for an endpoint name returns its address records', async (t) => {
  t.match(ask(encodeQuery(regionalName(ep4, config), Packet.TYPE.ANY)).packet.answers, [{ type: Packet.TYPE.A, address: '127.10.1.5' }])
})

t.test('names outside the suffix are REFUSED without upstreams', async (t) => {
  for (const name of ['example.com', 'internal', 'xprivatelink.internal', '']) {
    const { packet } = ask(encodeQuery(name, Packet.TYPE.A))
    t.equal(packet.header.rcode, 5, JSON.stringify(name))
    t.equal(packet.header.aa, 0)
    t.equal(packet.answers.length, 0)
  }
})

t.test('names outside the suffix are handed to the forwarder when upstreams are set', async (t) => {
  const z = zoneOf(forwarding)
  const query = encodeQuery('www.example.com', Packet.TYPE.AAAA)
  const answer = answerQuery(query, z, 'udp')
  t.equal(answer.action, 'forward')
  t.equal(answer.qtype, Packet.TYPE.AAAA)
  t.equal(answer.questionEnd, 12 + encodeName('www.example.com').length + 4)
  t.equal(ask(encodeQuery(regionalName(ep4, forwarding), Packet.TYPE.A), z).packet.header.ra, 1, 'RA set when forwarding')
})

t.test('a query with QDCOUNT other than 1 is FORMERR', async (t) => {
  for (const qdcount of [0, 2]) {
    const query = encodeQuery(regionalName(ep4, config), Packet.TYPE.A, { id: 77 })
    query.writeUInt16BE(qdcount, 4)
    const { packet, rcode } = ask(query)
    t.equal(rcode, 1)
    t.equal(packet.header.rcode, 1)
    t.equal(packet.header.id, 77)
    t.equal(packet.header.qr, 1)
  }
})

t.test('an opcode other than QUERY is NOTIMP', async (t) => {
  const query = encodeQuery(regionalName(ep4, config), Packet.TYPE.A)
  query[2] = ((query[2] as number) & 0x87) | (2 << 3) // STATUS
  const { packet } = ask(query)
  t.equal(packet.header.rcode, 4)
  t.equal(packet.header.opcode, 2)
})

t.test('malformed questions are FORMERR when the header is readable', async (t) => {
  const good = encodeQuery(regionalName(ep4, config), Packet.TYPE.A)
  const cases: Record<string, Buffer> = {
    'truncated name': good.subarray(0, 20),
    'no QTYPE/QCLASS': good.subarray(0, good.length - 3),
    'compression pointer in QNAME': Buffer.concat([good.subarray(0, 12), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1])]),
    'label longer than 63': Buffer.concat([good.subarray(0, 12), Buffer.from([64]), Buffer.alloc(64, 0x61), Buffer.from([0, 0, 1, 0, 1])]),
    'name longer than 255': Buffer.concat([good.subarray(0, 12), ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 0x61)])), Buffer.from([0, 0, 1, 0, 1])]),
    'additional count past the end': (() => { const b = Buffer.from(good); b.writeUInt16BE(1, 10); return b })()
  }
  for (const [what, query] of Object.entries(cases)) {
    const { packet } = ask(query)
    t.equal(packet.header.rcode, 1, what)
    t.equal(packet.header.qr, 1, what)
  }
})

t.test('packets without a full header, and responses, are dropped', async (t) => {
  t.equal(answerQuery(Buffer.alloc(0), zone, 'udp').action, 'drop')
  t.equal(answerQuery(Buffer.alloc(11), zone, 'udp').action, 'drop')
  const response = ask(encodeQuery(regionalName(ep4, config), Packet.TYPE.A)).response
  t.equal(answerQuery(response, zone, 'udp').action, 'drop', 'QR set: never answered, so no reflection loop')
})

t.test('an EDNS OPT in the query is echoed; version 1 is BADVERS', async (t) => {
  const v0 = ask(encodeQuery(regionalName(ep4, config), Packet.TYPE.A, { ednsVersion: 0 })).packet
  t.equal(v0.answers.length, 1)
  t.match(v0.additionals, [{ type: Packet.TYPE.EDNS, version: 0 }])
  const v1 = ask(encodeQuery(regionalName(ep4, config), Packet.TYPE.A, { ednsVersion: 1 }))
  t.equal(v1.rcode, 16)
  t.equal(rcodeName(v1.rcode), 'BADVERS')
  t.equal(v1.packet.header.rcode, 16, 'extended RCODE 16 through the OPT high byte')
  t.equal(v1.packet.answers.length, 0)
})

t.test('two OPT records are FORMERR (RFC 6891 §6.1.1)', async (t) => {
  const p = new Packet()
  p.header.id = 9
  p.questions.push(new Packet.Question(regionalName(ep4, config), Packet.TYPE.A, Packet.CLASS.IN))
  p.additionals.push(Packet.Resource.EDNS([]), Packet.Resource.EDNS([]))
  t.equal(ask(p.toBuffer()).packet.header.rcode, 1)
})

t.test('over TCP the response carries its 2-byte length prefix', async (t) => {
  const answer = answerQuery(encodeQuery(zonalName(ep4, config), Packet.TYPE.A), zone, 'tcp')
  const response = answer.response as Buffer
  t.equal(response.readUInt16BE(0), response.length - 2)
  t.match(Packet.parse(response.subarray(2)).answers, [{ address: '127.10.1.5' }])
})

t.test('a UDP response over 512 octets without EDNS is truncated with TC; TCP gets it whole', async (t) => {
  const longSuffix = Array.from({ length: 3 }, (_, i) => `${String(i).repeat(60)}`).join('.') + '.example'
  const c = buildConfig({ listen: { dns: '127.23.0.1:5353' }, dns: { suffix: longSuffix } })
  const z = zoneOf(c)
  const name = `nothing-here.${longSuffix}`
  const udp = ask(encodeQuery(name, Packet.TYPE.A), z)
  t.equal(udp.response.length <= 512, true)
  t.equal(udp.packet.header.tc, 1)
  t.equal(udp.packet.header.rcode, 3)
  t.equal(udp.packet.authorities.length, 0)
  const tcp = ask(encodeQuery(name, Packet.TYPE.A), z, 'tcp')
  t.equal(tcp.packet.header.tc, 0)
  t.equal(tcp.packet.authorities.length, 1)
  const edns = ask(encodeQuery(name, Packet.TYPE.A, { ednsVersion: 0 }), z)
  t.equal(edns.packet.header.tc, 0, 'an EDNS client with 1232 octets gets it whole over UDP')
})

t.test('class other than IN/ANY, and zone transfers, are REFUSED under the suffix', async (t) => {
  t.equal(ask(encodeQuery(regionalName(ep4, config), Packet.TYPE.A, { qclass: Packet.CLASS.CH })).packet.header.rcode, 5)
  t.equal(ask(encodeQuery('privatelink.internal', Packet.TYPE.AXFR)).packet.header.rcode, 5)
})

t.test('qtype and rcode names for metrics', async (t) => {
  t.equal(qtypeName(1), 'A')
  t.equal(qtypeName(28), 'AAAA')
  t.equal(qtypeName(6), 'SOA')
  t.equal(qtypeName(4711), '4711')
  t.equal(qtypeName(-1), 'none')
  t.equal(rcodeName(3), 'NXDOMAIN')
  t.equal(rcodeName(5), 'REFUSED')
})

t.test('names too long for DNS are skipped with a reason, the rest published', async (t) => {
  const skipped: string[] = []
  const z = buildZone([{ name: `${'a'.repeat(64)}.privatelink.internal`, address: '127.0.0.1' }, { name: 'ok.privatelink.internal', address: '127.0.0.2' }],
    config, { serial: 1, onSkip: (r) => skipped.push(r.name) })
  t.same(skipped, [`${'a'.repeat(64)}.privatelink.internal`])
  t.same(z.records.map((r) => r.name), ['ok.privatelink.internal'])
})

t.test('hashWire is case-insensitive', async (t) => {
  const a = encodeName('Foo.Example')
  const upper = Buffer.from(a)
  for (let i = 0; i < upper.length; i++) if ((upper[i] as number) >= 0x61 && (upper[i] as number) <= 0x7a) upper[i] = (upper[i] as number) - 0x20
  t.equal(hashWire(a, 0, a.length), hashWire(upper, 0, upper.length))
})

t.test('nextSerial always increases', async (t) => {
  t.equal(nextSerial(5, 1000), 6)
  t.equal(nextSerial(5, 10_000_000), 10_000)
  t.ok(nextSerial(nextSerial(0)) > nextSerial(0))
})

t.test('answerQuery never throws on random or mangled input', async (t) => {
  let seed = 12345
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0
    return seed % n
  }
  const valid = encodeQuery(regionalName(ep4, config), Packet.TYPE.A, { ednsVersion: 0 })
  const out = createAnswer()
  const actions = { reply: 0, drop: 0, forward: 0 }
  const forwardingZone = zoneOf(forwarding)
  for (let i = 0; i < 20_000; i++) {
    let buf: Buffer
    if (i % 3 === 0) {
      buf = Buffer.alloc(rand(200))
      for (let j = 0; j < buf.length; j++) buf[j] = rand(256)
    } else if (i % 3 === 1) {
      buf = Buffer.from(valid.subarray(0, rand(valid.length + 1)))
    } else {
      buf = Buffer.from(valid)
      for (let k = 0; k < 3; k++) buf[rand(buf.length)] = rand(256)
    }
    const z = i % 2 === 0 ? zone : forwardingZone
    actions[answerQuery(buf, z, i % 4 === 0 ? 'tcp' : 'udp', out).action]++
    if (out.action === 'reply') {
      const response = i % 4 === 0 ? (out.response as Buffer).subarray(2) : (out.response as Buffer)
      if (((response[2] as number) & 0x80) === 0) t.fail(`response without QR for input ${buf.toString('hex')}`)
    }
  }
  t.ok(actions.reply > 1000, `replies: ${actions.reply}`)
  t.ok(actions.drop > 100, `drops: ${actions.drop}`)
})
