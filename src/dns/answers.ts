// Answering one DNS query (SPEC §6): pure — bytes of a query and a compiled zone in, the bytes of
// the response (or "forward it" / "drop it") out. No I/O, no clock, no shared state.
//
// The question is read straight from the wire: the name is walked once, hashed (ASCII
// case-insensitively) and looked up among the zone's nodes; the response is the query's header
// with the flags patched, the query's own question bytes (so the client's exact case comes
// back), and the answer/authority bytes records.ts encoded in advance. One allocation per query.
//
// Rules, in order:
// - shorter than a header, or QR set (a response, never answered: no reflection loops) → drop;
// - OPCODE other than QUERY → NOTIMP; QDCOUNT ≠ 1 or an unreadable message → FORMERR (RFC 1035 §4.1.1);
// - an EDNS OPT with VERSION ≠ 0 → BADVERS (RFC 6891 §6.1.3); an OPT in a query is echoed;
// - under the suffix: a node of the zone answers its RRset, or NODATA + SOA (RFC 2308 §2.2) when it
//   has none of that type (empty non-terminals included, RFC 8020); no node → NXDOMAIN + SOA
//   (RFC 2308 §2.1); classes other than IN/ANY and zone transfers → REFUSED;
// - outside it: forward when upstreams are configured, else REFUSED.
import { FNV_OFFSET, FNV_PRIME, type DnsZone, type Tail, type ZoneNode, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_NS, TYPE_SOA } from './records.ts'


export const RCODE = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  BADVERS: 16
} as const

const RCODE_NAMES: Readonly<Record<number, string>> = {
  0: 'NOERROR',
  1: 'FORMERR',
  2: 'SERVFAIL',
  3: 'NXDOMAIN',
  4: 'NOTIMP',
  5: 'REFUSED',
  6: 'YXDOMAIN',
  7: 'YXRRSET',
  8: 'NXRRSET',
  9: 'NOTAUTH',
  10: 'NOTZONE',
  16: 'BADVERS'
}

const QTYPE_NAMES: Readonly<Record<number, string>> = {
  1: 'A',
  2: 'NS',
  5: 'CNAME',
  6: 'SOA',
  12: 'PTR',
  13: 'HINFO',
  15: 'MX',
  16: 'TXT',
  28: 'AAAA',
  33: 'SRV',
  35: 'NAPTR',
  39: 'DNAME',
  41: 'OPT',
  43: 'DS',
  46: 'RRSIG',
  47: 'NSEC',
  48: 'DNSKEY',
  50: 'NSEC3',
  52: 'TLSA',
  64: 'SVCB',
  65: 'HTTPS',
  99: 'SPF',
  251: 'IXFR',
  252: 'AXFR',
  255: 'ANY',
  257: 'CAA'
}

/** `NXDOMAIN`, or the number for a code without a mnemonic. */
export function rcodeName (rcode: number): string {
  return RCODE_NAMES[rcode] ?? String(rcode)
}

/** `AAAA`, or the number for a type without a mnemonic; `none` when no question was read. */
export function qtypeName (qtype: number): string {
  if (qtype < 0) return 'none'
  return QTYPE_NAMES[qtype] ?? String(qtype)
}

export type Transport = 'udp' | 'tcp'
export type AnswerAction = 'reply' | 'forward' | 'drop'

/** The verdict on one query. Reusable: `answerQuery` overwrites every field. */
export interface Answer {
  action: AnswerAction
  /** `reply`: the response; over TCP it already carries its 2-byte length prefix (RFC 1035 §4.2.2). */
  response: Buffer | undefined
  /** QTYPE of the question, -1 when none could be read. */
  qtype: number
  /** RCODE of the response (extended: BADVERS is 16); -1 for `forward` and `drop`. */
  rcode: number
  /** `forward`: offset just past the question section (the forwarder checks the upstream echoes it). */
  questionEnd: number
}

export function createAnswer (): Answer {
  return { action: 'drop', response: undefined, qtype: -1, rcode: -1, questionEnd: 0 }
}

/** RFC 1035 §4.2.1: without EDNS a UDP response is at most 512 octets. */
const UDP_LIMIT = 512
/** The UDP payload size we advertise in our OPT (the DNS Flag Day 2020 value). */
const EDNS_UDP_SIZE = 1232
const TYPE_OPT = 41
const TYPE_IXFR = 251
const TYPE_AXFR = 252
const CLASS_IN = 1
const CLASS_ANY = 255

function drop (out: Answer): Answer {
  out.action = 'drop'
  out.response = undefined
  out.qtype = -1
  out.rcode = -1
  out.questionEnd = 0
  return out
}

/** A bare header (no sections): FORMERR and NOTIMP, where the question may be unreadable. */
function headerOnly (out: Answer, query: Buffer, rcode: number, qtype: number, zone: DnsZone, transport: Transport): Answer {
  const head = transport === 'tcp' ? 2 : 0
  const buf = Buffer.alloc(head + 12)
  if (head === 2) buf[1] = 12
  buf[head] = query[0] as number
  buf[head + 1] = query[1] as number
  // QR, the query's OPCODE and RD; everything else zero.
  buf[head + 2] = 0x80 | ((query[2] as number) & 0x79)
  buf[head + 3] = (zone.recursionAvailable ? 0x80 : 0) | rcode
  out.action = 'reply'
  out.response = buf
  out.qtype = qtype
  out.rcode = rcode
  out.questionEnd = 0
  return out
}

interface Edns {
  present: boolean
  size: number
  version: number
  /** The DO bit, as it sits in the first flags octet (RFC 3225 §3: copied into the response). */
  doBit: number
}

const scratchEdns: Edns = { present: false, size: 0, version: 0, doBit: 0 }

/** Header + the query's question + `tail` (+ our OPT when the query had one); TC and no tail if it does not fit. */
function reply (
  out: Answer, query: Buffer, questionEnd: number, tail: Tail | undefined, rcode: number, aa: boolean,
  zone: DnsZone, edns: Edns, transport: Transport, qtype: number
): Answer {
  const questionLength = questionEnd - 12
  const optLength = edns.present ? 11 : 0
  const limit = transport === 'tcp' ? 65535 : edns.present ? Math.max(UDP_LIMIT, edns.size) : UDP_LIMIT
  let size = 12 + questionLength + (tail === undefined ? 0 : tail.bytes.length) + optLength
  let truncated = false
  if (size > limit) {
    // RFC 1035 §4.2.1 / RFC 2181 §9: set TC and drop the RRsets; the client retries over TCP.
    truncated = true
    tail = undefined
    size = 12 + questionLength + optLength
  }
  const head = transport === 'tcp' ? 2 : 0
  const buf = Buffer.allocUnsafe(head + size)
  if (head === 2) {
    buf[0] = size >>> 8
    buf[1] = size & 0xff
  }
  // Byte by byte: these are a handful of octets, and Buffer's helpers cost more than they do.
  const an = tail === undefined ? 0 : tail.an
  const ns = tail === undefined ? 0 : tail.ns
  buf[head] = query[0] as number
  buf[head + 1] = query[1] as number
  buf[head + 2] = 0x80 | (aa ? 0x04 : 0) | (truncated ? 0x02 : 0) | ((query[2] as number) & 0x01)
  // RA when we forward; CD copied (RFC 4035 §3.1.6); the low 4 bits of the RCODE.
  buf[head + 3] = (zone.recursionAvailable ? 0x80 : 0) | ((query[3] as number) & 0x10) | (rcode & 0x0f)
  buf[head + 4] = 0
  buf[head + 5] = 1
  buf[head + 6] = an >>> 8
  buf[head + 7] = an & 0xff
  buf[head + 8] = ns >>> 8
  buf[head + 9] = ns & 0xff
  buf[head + 10] = 0
  buf[head + 11] = edns.present ? 1 : 0
  // The question exactly as asked (the client's case included).
  let o = head + 12
  query.copy(buf, o, 12, questionEnd)
  o += questionLength
  if (tail !== undefined) {
    buf.set(tail.bytes, o)
    o += tail.bytes.length
  }
  if (edns.present) {
    // OPT (RFC 6891 §6.1.2): root owner, our payload size, extended RCODE, version 0, DO echoed.
    buf[o] = 0
    buf[o + 1] = 0
    buf[o + 2] = TYPE_OPT
    buf[o + 3] = EDNS_UDP_SIZE >>> 8
    buf[o + 4] = EDNS_UDP_SIZE & 0xff
    buf[o + 5] = (rcode >>> 4) & 0xff
    buf[o + 6] = 0
    buf[o + 7] = edns.doBit
    buf[o + 8] = 0
    buf[o + 9] = 0
    buf[o + 10] = 0
  }
  out.action = 'reply'
  out.response = buf
  out.qtype = qtype
  out.rcode = rcode
  out.questionEnd = questionEnd
  return out
}

/** Offset after the (possibly compressed) name at `p`, or -1 when it is malformed. */
function skipName (buf: Buffer, p: number): number {
  for (let hops = 0; hops < 128; hops++) {
    if (p >= buf.length) return -1
    const l = buf[p] as number
    if (l === 0) return p + 1
    if ((l & 0xc0) === 0xc0) return p + 2 <= buf.length ? p + 2 : -1
    if (l > 63) return -1
    p += l + 1
  }
  return -1
}

function findNode (zone: DnsZone, query: Buffer, start: number, end: number, hash: number): ZoneNode | undefined {
  const bucket = zone.buckets.get(hash)
  if (bucket === undefined) return undefined
  const length = end - start
  outer: for (const node of bucket) {
    const wire = node.wire
    if (wire.length !== length) continue
    // Most resolvers ask in lowercase: one native memcmp settles it; otherwise compare folding case.
    if (query.compare(wire, 0, length, start, end) === 0) return node
    for (let i = 0; i < length; i++) {
      let b = query[start + i] as number
      if (b >= 0x41 && b <= 0x5a) b |= 0x20
      if (b !== wire[i]) continue outer
    }
    return node
  }
  return undefined
}

/** Whether the (validated) name `query[12, nameEnd)` is the suffix or a name below it. */
function underSuffix (query: Buffer, nameEnd: number, suffixWire: Buffer): boolean {
  const start = nameEnd - suffixWire.length
  if (start < 12) return false
  let p = 12
  while (p < start) p += (query[p] as number) + 1
  if (p !== start) return false
  for (let i = 0; i < suffixWire.length; i++) {
    let b = query[start + i] as number
    if (b >= 0x41 && b <= 0x5a) b |= 0x20
    if (b !== suffixWire[i]) return false
  }
  return true
}

function pick (node: ZoneNode, qtype: number): Tail | undefined {
  switch (qtype) {
    case TYPE_A: return node.a
    case TYPE_AAAA: return node.aaaa
    case TYPE_SOA: return node.soa
    case TYPE_NS: return node.ns
    case TYPE_ANY: return node.any
    default: return undefined
  }
}

/**
 * Answer `query` from `zone`. `out` is filled and returned (pass one per socket to allocate
 * nothing but the response). Never throws on any input.
 */
export function answerQuery (query: Buffer, zone: DnsZone, transport: Transport, out: Answer = createAnswer()): Answer {
  const length = query.length
  if (length < 12) return drop(out)
  const flags = query[2] as number
  if ((flags & 0x80) !== 0) return drop(out)
  if (((flags >>> 3) & 0x0f) !== 0) return headerOnly(out, query, RCODE.NOTIMP, -1, zone, transport)
  if (query.readUInt16BE(4) !== 1) return headerOnly(out, query, RCODE.FORMERR, -1, zone, transport)

  // QNAME: plain labels only (a compression pointer cannot point backwards from the first name),
  // at most 255 octets (RFC 1035 §2.3.4); hashed as records.ts `hashWire` does.
  let p = 12
  let h = FNV_OFFSET
  for (;;) {
    if (p >= length) return headerOnly(out, query, RCODE.FORMERR, -1, zone, transport)
    const l = query[p] as number
    if (l === 0) {
      h = Math.imul(h, FNV_PRIME)
      p++
      break
    }
    const end = p + 1 + l
    if (l > 63 || end > length || end - 12 > 254) return headerOnly(out, query, RCODE.FORMERR, -1, zone, transport)
    h = Math.imul(h ^ l, FNV_PRIME)
    for (let i = p + 1; i < end; i++) {
      let b = query[i] as number
      if (b >= 0x41 && b <= 0x5a) b |= 0x20
      h = Math.imul(h ^ b, FNV_PRIME)
    }
    p = end
  }
  const nameEnd = p
  if (nameEnd + 4 > length) return headerOnly(out, query, RCODE.FORMERR, -1, zone, transport)
  const qtype = query.readUInt16BE(nameEnd)
  const qclass = query.readUInt16BE(nameEnd + 2)
  const questionEnd = nameEnd + 4

  // The other sections: walked for bounds; the additional section may hold one OPT (RFC 6891 §6.1.1).
  // A module-level scratch object: answerQuery runs to completion synchronously, so reuse is safe.
  const edns = scratchEdns
  edns.present = false
  edns.size = 0
  edns.version = 0
  edns.doBit = 0
  const before = query.readUInt16BE(6) + query.readUInt16BE(8)
  const total = before + query.readUInt16BE(10)
  p = questionEnd
  for (let i = 0; i < total; i++) {
    const owner = p
    p = skipName(query, p)
    if (p < 0 || p + 10 > length) return headerOnly(out, query, RCODE.FORMERR, qtype, zone, transport)
    const rdlength = query.readUInt16BE(p + 8)
    if (p + 10 + rdlength > length) return headerOnly(out, query, RCODE.FORMERR, qtype, zone, transport)
    if (query.readUInt16BE(p) === TYPE_OPT) {
      if (i < before || edns.present || p !== owner + 1) return headerOnly(out, query, RCODE.FORMERR, qtype, zone, transport)
      edns.present = true
      edns.size = query.readUInt16BE(p + 2)
      edns.version = query[p + 5] as number
      edns.doBit = (query[p + 6] as number) & 0x80
    }
    p += 10 + rdlength
  }
  if (edns.present && edns.version !== 0) {
    return reply(out, query, questionEnd, undefined, RCODE.BADVERS, false, zone, edns, transport, qtype)
  }

  const node = findNode(zone, query, 12, nameEnd, h)
  if (node !== undefined || underSuffix(query, nameEnd, zone.suffixWire)) {
    // Authoritative for class IN only; no zone transfers.
    if ((qclass !== CLASS_IN && qclass !== CLASS_ANY) || qtype === TYPE_AXFR || qtype === TYPE_IXFR) {
      return reply(out, query, questionEnd, undefined, RCODE.REFUSED, false, zone, edns, transport, qtype)
    }
    const tail = node === undefined ? zone.nxdomain : (pick(node, qtype) ?? zone.nodata)
    return reply(out, query, questionEnd, tail, tail.rcode, true, zone, edns, transport, qtype)
  }
  if (zone.forward) {
    out.action = 'forward'
    out.response = undefined
    out.qtype = qtype
    out.rcode = -1
    out.questionEnd = questionEnd
    return out
  }
  return reply(out, query, questionEnd, undefined, RCODE.REFUSED, false, zone, edns, transport, qtype)
}

/**
 * A response with `rcode`, the query's question and no records (SERVFAIL when no upstream
 * answered). `query` must be one `answerQuery` accepted, `questionEnd` the offset it reported.
 */
export function errorResponse (query: Buffer, questionEnd: number, rcode: number, zone: DnsZone, transport: Transport): Buffer {
  const out = createAnswer()
  const edns = scratchEdns
  edns.present = false
  edns.size = 0
  edns.version = 0
  edns.doBit = 0
  reply(out, query, questionEnd, undefined, rcode, false, zone, edns, transport, -1)
  return out.response as Buffer
}
