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
import type { Endpoint, State } from '../control/model.ts'
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

/** The records of one endpoint: both names of SPEC §6 → its IP while accepted with privateDns, else none. */
export function recordsOf (ep: Endpoint | undefined, config: Pick<Config, 'region' | 'dns'>): DnsRecord[] {
  if (ep === undefined || ep.status !== 'accepted' || !ep.privateDns || isIP(ep.ip) === 0) return []
  return endpointDnsNames(ep, config).map((name) => ({ name: name.toLowerCase(), address: ep.ip }))
}

/** Records of every accepted endpoint with privateDns, sorted. */
export function endpointRecords (state: State, config: Pick<Config, 'region' | 'dns'>): DnsRecord[] {
  const out: DnsRecord[] = []
  for (const id in state.endpoints) out.push(...recordsOf(state.endpoints[id], config))
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

export interface BuildZoneOptions {
  readonly serial: number
  /** Names that could not be published (too long for DNS) are reported here. */
  readonly onSkip?: (record: DnsRecord, reason: string) => void
}

/** Compile `records` into a zone under `config.dns.suffix`. Pure. */
export function buildZone (records: readonly DnsRecord[], config: Pick<Config, 'dns' | 'listen'>, options: BuildZoneOptions): DnsZone {
  return new LiveZone(config, options).update([], records, options.serial)
}

/**
 * A zone kept up to date record by record (SPEC §11: no change rebuilds all DNS answers). It
 * holds the published addresses per name and, per ancestor, how many names lie below it;
 * `update` recompiles only the nodes of the names it touches, their ancestors that appear or
 * vanish, and the apex (whose SOA carries the serial), then returns a new DnsZone object that
 * shares the node table. Queries are answered synchronously between updates, so a query never
 * sees half an update.
 */
export class LiveZone {
  readonly #suffix: string
  readonly #suffixWire: Buffer
  readonly #ttl: number
  readonly #nsName: string
  readonly #nsAddress: Buffer | undefined
  readonly #forward: boolean
  readonly #onSkip: ((record: DnsRecord, reason: string) => void) | undefined
  /** Published name → its addresses' rdata (4 or 16 bytes), keyed by address text. */
  readonly #names = new Map<string, Map<string, Buffer>>()
  /** Empty non-terminal → how many published names lie below it. */
  readonly #below = new Map<string, number>()
  readonly #nodes = new Map<string, ZoneNode>()
  readonly #buckets = new Map<number, ZoneNode[]>()
  #zone: DnsZone | undefined

  constructor (config: Pick<Config, 'dns' | 'listen'>, options: Pick<BuildZoneOptions, 'onSkip'> = {}) {
    this.#suffix = config.dns.suffix.toLowerCase()
    this.#suffixWire = encodeName(this.#suffix)
    this.#ttl = config.dns.ttl
    this.#nsName = `ns.${this.#suffix}`
    this.#forward = config.dns.upstreams.length > 0
    this.#onSkip = options.onSkip
    // The NS target, with the listener's own address as its A/AAAA when it is a specific one.
    const listen = parseHostPort(config.listen.dns)
    this.#nsAddress = listen !== undefined && ipaddr.parse(listen.host).range() !== 'unspecified' ? addressRdata(listen.host) : undefined
    this.#compileNode(this.#nsName)
  }

  get zone (): DnsZone {
    if (this.#zone === undefined) throw new Error('LiveZone: update() first')
    return this.#zone
  }

  /** Remove then add records, bump the serial, and return the zone now answering. */
  update (removed: readonly DnsRecord[], added: readonly DnsRecord[], serial: number): DnsZone {
    const touched = new Set<string>()
    for (const record of removed) {
      const name = record.name.toLowerCase()
      const addresses = this.#names.get(name)
      if (addresses === undefined || !addresses.delete(record.address)) continue
      touched.add(name)
      if (addresses.size > 0) continue
      this.#names.delete(name)
      for (const ancestor of this.#ancestors(name)) {
        const n = (this.#below.get(ancestor) ?? 0) - 1
        if (n > 0) this.#below.set(ancestor, n)
        else this.#below.delete(ancestor)
        touched.add(ancestor)
      }
    }
    for (const record of added) {
      const name = record.name.toLowerCase()
      if (!name.endsWith(`.${this.#suffix}`)) {
        this.#onSkip?.(record, `not under the suffix ${this.#suffix}`)
        continue
      }
      try {
        encodeName(name)
      } catch (err) {
        this.#onSkip?.(record, (err as Error).message)
        continue
      }
      let addresses = this.#names.get(name)
      if (addresses === undefined) {
        this.#names.set(name, addresses = new Map())
        for (const ancestor of this.#ancestors(name)) {
          this.#below.set(ancestor, (this.#below.get(ancestor) ?? 0) + 1)
          touched.add(ancestor)
        }
      }
      addresses.set(record.address, addressRdata(record.address))
      touched.add(name)
    }
    for (const name of touched) this.#compileNode(name)
    this.#compileApex(serial)
    return this.#zone as DnsZone
  }

  /** Names between `name` (excluded) and the apex (excluded). */
  #ancestors (name: string): string[] {
    const out: string[] = []
    for (let dot = name.indexOf('.'); dot >= 0; dot = name.indexOf('.', dot + 1)) {
      const ancestor = name.slice(dot + 1)
      if (ancestor === this.#suffix) break
      out.push(ancestor)
    }
    return out
  }

  #compileNode (name: string): void {
    const a: Buffer[] = []
    const aaaa: Buffer[] = []
    for (const rdata of this.#names.get(name)?.values() ?? []) (rdata.length === 4 ? a : aaaa).push(rdata)
    if (name === this.#nsName && this.#nsAddress !== undefined) (this.#nsAddress.length === 4 ? a : aaaa).push(this.#nsAddress)
    const exists = a.length > 0 || aaaa.length > 0 || this.#below.has(name) || name === this.#nsName
    this.#setNode(name, exists ? this.#node(name, a, aaaa, undefined) : undefined)
  }

  #compileApex (serial: number): void {
    const suffix = this.#suffix
    const ttl = this.#ttl
    const soaRecord = rr(this.#suffixWire, TYPE_SOA, ttl, soaRdata(suffix, serial, ttl))
    const apexSoa = rr(POINTER_TO_QUESTION, TYPE_SOA, ttl, soaRdata(suffix, serial, ttl))
    const apexNs = rr(POINTER_TO_QUESTION, TYPE_NS, ttl, encodeName(this.#nsName))
    const a: Buffer[] = []
    const aaaa: Buffer[] = []
    for (const rdata of this.#names.get(suffix)?.values() ?? []) (rdata.length === 4 ? a : aaaa).push(rdata)
    this.#setNode(suffix, this.#node(suffix, a, aaaa, { soa: apexSoa, ns: apexNs }))
    const names = this.#names
    this.#zone = {
      suffix,
      suffixWire: this.#suffixWire,
      ttl,
      serial,
      recursionAvailable: this.#forward,
      forward: this.#forward,
      nodata: tail(RCODE_NOERROR, [], [soaRecord]),
      nxdomain: tail(RCODE_NXDOMAIN, [], [soaRecord]),
      buckets: this.#buckets,
      // Computed when asked (logs, tests): a sorted copy of every record is not per-change work.
      get records (): readonly DnsRecord[] {
        const out: DnsRecord[] = []
        for (const [name, addresses] of names) for (const address of addresses.keys()) out.push({ name, address })
        return out.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : x.address < y.address ? -1 : 1))
      }
    }
  }

  #node (name: string, a: readonly Buffer[], aaaa: readonly Buffer[], apex: { soa: Buffer, ns: Buffer } | undefined): ZoneNode {
    const ttl = this.#ttl
    const wire = encodeName(name)
    const aRrs = a.map((rdata) => rr(POINTER_TO_QUESTION, TYPE_A, ttl, rdata))
    const aaaaRrs = aaaa.map((rdata) => rr(POINTER_TO_QUESTION, TYPE_AAAA, ttl, rdata))
    const anyRrs = apex !== undefined ? [apex.soa, apex.ns, ...aRrs, ...aaaaRrs] : [...aRrs, ...aaaaRrs]
    return {
      name,
      wire,
      hash: hashWire(wire, 0, wire.length),
      a: aRrs.length > 0 ? tail(RCODE_NOERROR, aRrs, []) : undefined,
      aaaa: aaaaRrs.length > 0 ? tail(RCODE_NOERROR, aaaaRrs, []) : undefined,
      soa: apex !== undefined ? tail(RCODE_NOERROR, [apex.soa], []) : undefined,
      ns: apex !== undefined ? tail(RCODE_NOERROR, [apex.ns], []) : undefined,
      any: anyRrs.length > 0 ? tail(RCODE_NOERROR, anyRrs, []) : undefined
    }
  }

  #setNode (name: string, node: ZoneNode | undefined): void {
    const old = this.#nodes.get(name)
    if (old !== undefined) {
      const bucket = this.#buckets.get(old.hash) as ZoneNode[]
      const rest = bucket.filter((n) => n !== old)
      if (rest.length === 0) this.#buckets.delete(old.hash)
      else this.#buckets.set(old.hash, rest)
      this.#nodes.delete(name)
    }
    if (node === undefined) return
    this.#nodes.set(name, node)
    const bucket = this.#buckets.get(node.hash)
    this.#buckets.set(node.hash, bucket === undefined ? [node] : [...bucket, node])
  }
}
