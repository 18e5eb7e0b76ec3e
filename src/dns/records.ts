// The private DNS zone (SPEC §6), compiled from the control plane's state into wire-format
// pieces, so that answering a query is a hash lookup plus one buffer copy (see answers.ts).
//
// Every name of the zone is a node: endpoint names (A/AAAA), their ancestors up to the suffix
// (empty non-terminals, which answer NODATA and never NXDOMAIN, RFC 8020), the apex (SOA, NS)
// and `ns.{suffix}` (the NS target, with the DNS listener's own address when it is specific).
// For each node and query type the answer and authority sections are encoded once, with the
// owner name written as a compression pointer to the question name (offset 12), so that the
// answer echoes the client's exact case without any per-query encoding.
import { isIP } from 'node:net'
import ipaddr from 'ipaddr.js'
import { endpointDnsNames } from '../control/dns-names.ts'
import type { State } from '../control/model.ts'
import type { Config } from '../control/schemas.ts'
import { parseHostPort } from '../control/validation.ts'

export const TYPE_A = 1
export const TYPE_NS = 2
export const TYPE_SOA = 6
export const TYPE_AAAA = 28
export const TYPE_ANY = 255
const CLASS_IN = 1

export const RCODE_NOERROR = 0
export const RCODE_NXDOMAIN = 3

/** SOA timers (RFC 1912 §2.2 ranges); `minimum` is the config's TTL, the negative-caching TTL of RFC 2308 §4. */
const SOA_REFRESH = 3600
const SOA_RETRY = 600
const SOA_EXPIRE = 86400

/** One address record the zone publishes. */
export interface DnsRecord {
  /** Lowercase, no trailing dot. */
  readonly name: string
  readonly address: string
}

/** The answer and authority sections of one response, encoded, plus the header fields they need. */
export interface Tail {
  readonly rcode: number
  /** ANCOUNT and NSCOUNT of the response. */
  readonly an: number
  readonly ns: number
  /** Answer RRs then authority RRs, in wire format; answer owners point at offset 12. */
  readonly bytes: Buffer
}

export interface ZoneNode {
  /** Lowercase, no trailing dot (the apex is the suffix itself). */
  readonly name: string
  /** Lowercase wire format, ending in the root label's zero byte. */
  readonly wire: Buffer
  readonly hash: number
  /** Undefined: the node has no RRset of that type, so the answer is NODATA. */
  readonly a: Tail | undefined
  readonly aaaa: Tail | undefined
  readonly soa: Tail | undefined
  readonly ns: Tail | undefined
  readonly any: Tail | undefined
}

export interface DnsZone {
  readonly suffix: string
  /** Lowercase wire format of the suffix, ending in the zero byte. */
  readonly suffixWire: Buffer
  readonly ttl: number
  readonly serial: number
  /** Set RA in responses: names outside the suffix are resolved through the upstreams. */
  readonly recursionAvailable: boolean
  /** Names outside the suffix go to the upstreams (else REFUSED). */
  readonly forward: boolean
  /** NOERROR, no answer, the SOA in authority (RFC 2308 §2.2). */
  readonly nodata: Tail
  /** NXDOMAIN, the SOA in authority (RFC 2308 §2.1). */
  readonly nxdomain: Tail
  /** Nodes by `hashWire` of their lowercase wire name; collisions share a bucket. */
  readonly buckets: ReadonlyMap<number, readonly ZoneNode[]>
  /** The published records, for logs and tests. */
  readonly records: readonly DnsRecord[]
}

/** Records of every accepted endpoint with privateDns: both names of SPEC §6 → its IP. */
export function endpointRecords (state: State, config: Pick<Config, 'region' | 'dns'>): DnsRecord[] {
  const out: DnsRecord[] = []
  for (const ep of Object.values(state.endpoints)) {
    if (ep.status !== 'accepted' || !ep.privateDns) continue
    if (isIP(ep.ip) === 0) continue
    for (const name of endpointDnsNames(ep, config)) out.push({ name: name.toLowerCase(), address: ep.ip })
  }
  out.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : x.address < y.address ? -1 : 1))
  return out
}

/** A string that changes exactly when the published records change (to bump the SOA serial). */
export function recordsSignature (records: readonly DnsRecord[]): string {
  let s = ''
  for (const r of records) s += `${r.name} ${r.address}\n`
  return s
}

/** Next SOA serial: strictly greater than `previous`, and the Unix time when that is greater still. */
export function nextSerial (previous: number, nowMs = Date.now()): number {
  return Math.max((previous + 1) >>> 0, Math.floor(nowMs / 1000) >>> 0)
}

/** FNV-1a's offset basis as a signed 32-bit integer, so the hash stays an int32 (a Smi) throughout. */
export const FNV_OFFSET = 0x811c9dc5 | 0
export const FNV_PRIME = 0x01000193

/**
 * FNV-1a over the ASCII-lowercased bytes of `buf[start, end)`, as a signed 32-bit integer.
 * Length octets are at most 63, below 'A', so lowercasing the whole wire name never changes
 * them. answers.ts computes the same hash inline while it walks the question name.
 */
export function hashWire (buf: Uint8Array, start: number, end: number): number {
  let h = FNV_OFFSET
  for (let i = start; i < end; i++) {
    let b = buf[i] as number
    if (b >= 0x41 && b <= 0x5a) b |= 0x20
    h = Math.imul(h ^ b, FNV_PRIME)
  }
  return h
}

/** `a.b.c` → lowercase wire format; throws on a label over 63 octets or a name over 255. */
export function encodeName (name: string): Buffer {
  const labels = name === '' ? [] : name.toLowerCase().split('.')
  const parts: Buffer[] = []
  let length = 1
  for (const label of labels) {
    const bytes = Buffer.from(label, 'latin1')
    if (bytes.length === 0 || bytes.length > 63) throw new RangeError(`DNS name ${name}: label "${label}" must be 1..63 octets`)
    parts.push(Buffer.from([bytes.length]), bytes)
    length += bytes.length + 1
  }
  if (length > 255) throw new RangeError(`DNS name ${name}: ${length} octets in wire format (max 255)`)
  parts.push(Buffer.from([0]))
  return Buffer.concat(parts)
}

const POINTER_TO_QUESTION = Buffer.from([0xc0, 0x0c])

function rr (owner: Buffer, type: number, ttl: number, rdata: Buffer): Buffer {
  const fixed = Buffer.alloc(10)
  fixed.writeUInt16BE(type, 0)
  fixed.writeUInt16BE(CLASS_IN, 2)
  fixed.writeUInt32BE(ttl, 4)
  fixed.writeUInt16BE(rdata.length, 8)
  return Buffer.concat([owner, fixed, rdata])
}

function tail (rcode: number, answers: readonly Buffer[], authority: readonly Buffer[]): Tail {
  return { rcode, an: answers.length, ns: authority.length, bytes: Buffer.concat([...answers, ...authority]) }
}

function addressRdata (address: string): Buffer {
  return Buffer.from(ipaddr.parse(address).toByteArray())
}

function soaRdata (suffix: string, serial: number, minimum: number): Buffer {
  const timers = Buffer.alloc(20)
  timers.writeUInt32BE(serial >>> 0, 0)
  timers.writeUInt32BE(SOA_REFRESH, 4)
  timers.writeUInt32BE(SOA_RETRY, 8)
  timers.writeUInt32BE(SOA_EXPIRE, 12)
  timers.writeUInt32BE(minimum, 16)
  return Buffer.concat([encodeName(`ns.${suffix}`), encodeName(`hostmaster.${suffix}`), timers])
}

interface NodeDraft {
  a: Buffer[]
  aaaa: Buffer[]
  apex: boolean
}

export interface BuildZoneOptions {
  readonly serial: number
  /** Names that could not be published (too long for DNS) are reported here. */
  readonly onSkip?: (record: DnsRecord, reason: string) => void
}

/** Compile `records` into a zone under `config.dns.suffix`. Pure. */
export function buildZone (records: readonly DnsRecord[], config: Pick<Config, 'dns' | 'listen'>, options: BuildZoneOptions): DnsZone {
  const suffix = config.dns.suffix.toLowerCase()
  const ttl = config.dns.ttl
  const suffixWire = encodeName(suffix)
  const drafts = new Map<string, NodeDraft>()
  const draft = (name: string): NodeDraft => {
    let d = drafts.get(name)
    if (d === undefined) {
      d = { a: [], aaaa: [], apex: false }
      drafts.set(name, d)
    }
    return d
  }
  draft(suffix).apex = true

  const add = (record: DnsRecord): void => {
    const d = draft(record.name)
    const rdata = addressRdata(record.address)
    ;(rdata.length === 4 ? d.a : d.aaaa).push(rdata)
    // Every ancestor between the name and the apex exists as an empty non-terminal (RFC 8020).
    let name = record.name
    for (let dot = name.indexOf('.'); dot >= 0; dot = name.indexOf('.')) {
      name = name.slice(dot + 1)
      if (name === suffix) break
      draft(name)
    }
  }

  const published: DnsRecord[] = []
  for (const record of records) {
    const name = record.name.toLowerCase()
    if (!name.endsWith(`.${suffix}`)) {
      options.onSkip?.(record, `not under the suffix ${suffix}`)
      continue
    }
    try {
      encodeName(name)
    } catch (err) {
      options.onSkip?.(record, (err as Error).message)
      continue
    }
    add({ name, address: record.address })
    published.push({ name, address: record.address })
  }

  // The NS target, with the listener's own address as its A/AAAA when it is a specific one.
  const listen = parseHostPort(config.listen.dns)
  const nsName = `ns.${suffix}`
  const nsDraft = draft(nsName)
  if (listen !== undefined && ipaddr.parse(listen.host).range() !== 'unspecified') {
    const rdata = addressRdata(listen.host)
    ;(rdata.length === 4 ? nsDraft.a : nsDraft.aaaa).push(rdata)
  }

  const soaRecord = rr(suffixWire, TYPE_SOA, ttl, soaRdata(suffix, options.serial, ttl))
  const nodata = tail(RCODE_NOERROR, [], [soaRecord])
  const nxdomain = tail(RCODE_NXDOMAIN, [], [soaRecord])
  const apexSoa = rr(POINTER_TO_QUESTION, TYPE_SOA, ttl, soaRdata(suffix, options.serial, ttl))
  const apexNs = rr(POINTER_TO_QUESTION, TYPE_NS, ttl, encodeName(nsName))

  const buckets = new Map<number, ZoneNode[]>()
  for (const [name, d] of drafts) {
    const wire = encodeName(name)
    const aRrs = d.a.map((rdata) => rr(POINTER_TO_QUESTION, TYPE_A, ttl, rdata))
    const aaaaRrs = d.aaaa.map((rdata) => rr(POINTER_TO_QUESTION, TYPE_AAAA, ttl, rdata))
    const anyRrs = d.apex ? [apexSoa, apexNs, ...aRrs, ...aaaaRrs] : [...aRrs, ...aaaaRrs]
    const node: ZoneNode = {
      name,
      wire,
      hash: hashWire(wire, 0, wire.length),
      a: aRrs.length > 0 ? tail(RCODE_NOERROR, aRrs, []) : undefined,
      aaaa: aaaaRrs.length > 0 ? tail(RCODE_NOERROR, aaaaRrs, []) : undefined,
      soa: d.apex ? tail(RCODE_NOERROR, [apexSoa], []) : undefined,
      ns: d.apex ? tail(RCODE_NOERROR, [apexNs], []) : undefined,
      any: anyRrs.length > 0 ? tail(RCODE_NOERROR, anyRrs, []) : undefined
    }
    const bucket = buckets.get(node.hash)
    if (bucket === undefined) buckets.set(node.hash, [node])
    else bucket.push(node)
  }

  return {
    suffix,
    suffixWire,
    ttl,
    serial: options.serial,
    recursionAvailable: config.dns.upstreams.length > 0,
    forward: config.dns.upstreams.length > 0,
    nodata,
    nxdomain,
    buckets,
    records: published
  }
}
