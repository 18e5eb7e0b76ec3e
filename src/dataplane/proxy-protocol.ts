// PROXY protocol headers toward backends (SPEC §13), as haproxy's doc/proxy-protocol.txt
// defines them: v1 is one text line, v2 a binary block. The backend learns the client's
// address:port (source) and the endpoint's ip:terminalPort (destination); v2 also carries the
// endpoint id in TLV 0xEA subtype 0x01, as AWS PrivateLink's NLB sends the VPC endpoint id, and a
// CRC32C TLV (0x03) so that a receiver such as HAProxy can verify the header.
//
// An encoder is built once per (listener, version): everything that does not depend on the
// client — signature, command, family, destination, TLVs — sits in a template, and a connection
// costs one Buffer (copy of the template, source address and port written in, CRC computed over
// ~60 bytes). No closures, no per-connection strings for v2 (STYLE habit 10).
import { isIPv4, isIPv6 } from 'node:net'
import ipaddr from 'ipaddr.js'

import type { ProxyProtocol } from '../control/model.ts'

// ---- CRC32C (Castagnoli), table-driven, reflected polynomial 0x82F63B78 (RFC 3720 §B.4) ----

const CRC32C_TABLE = buildCrcTable(0x82F63B78)

function buildCrcTable (poly: number): Uint32Array {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = (c & 1) !== 0 ? (c >>> 1) ^ poly : c >>> 1
    table[n] = c >>> 0
  }
  return table
}

/** CRC32C of `bytes[start, end)`, as an unsigned 32-bit number. crc32c("123456789") = 0xE3069283. */
export function crc32c (bytes: Uint8Array, start = 0, end = bytes.length): number {
  let crc = 0xFFFFFFFF
  for (let i = start; i < end; i++) crc = (CRC32C_TABLE[(crc ^ (bytes[i] as number)) & 0xFF] as number) ^ (crc >>> 8)
  return (crc ^ 0xFFFFFFFF) >>> 0
}

// ---- v2 constants (proxy-protocol.txt §2.2) ----

/** The 12-byte v2 signature: "\r\n\r\n\0\r\nQUIT\n". */
export const V2_SIGNATURE = Buffer.from([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
export const V2_CMD_LOCAL = 0x20
export const V2_CMD_PROXY = 0x21
export const V2_FAM_UNSPEC = 0x00
export const V2_FAM_TCP4 = 0x11
export const V2_FAM_TCP6 = 0x21
export const PP2_TYPE_CRC32C = 0x03
/** AWS's TLV type (PP2_TYPE_AWS) and its subtype for the VPC endpoint id. */
export const PP2_TYPE_AWS = 0xEA
export const PP2_SUBTYPE_AWS_VPCE_ID = 0x01

/** v2 LOCAL with no address block: the connection is the proxy's own (a health check). */
export const V2_LOCAL_HEADER: Buffer = Buffer.concat([V2_SIGNATURE, Buffer.from([V2_CMD_LOCAL, V2_FAM_UNSPEC, 0, 0])])
/** v1's equivalent: the receiver ignores the rest of the line and uses the real addresses. */
export const V1_UNKNOWN_HEADER: Buffer = Buffer.from('PROXY UNKNOWN\r\n', 'latin1')

/** The header a health check starts with for a service using `version` (empty for `off`). */
export function localHeader (version: ProxyProtocol | undefined): Buffer | null {
  if (version === 'v2') return V2_LOCAL_HEADER
  if (version === 'v1') return V1_UNKNOWN_HEADER
  return null
}

/** True for the versions that send a header; anything else (undefined from an older record) is off. */
export function sendsHeader (version: ProxyProtocol | undefined): version is 'v1' | 'v2' {
  return version === 'v1' || version === 'v2'
}

// ---- addresses ----

/**
 * Node reports IPv4 clients of a dual-stack socket as ::ffff:a.b.c.d: v4 is v4. A zone index
 * (fe80::1%eth0) means nothing to the backend and is not valid in either header: dropped.
 */
function unmapped (address: string): string {
  const zone = address.indexOf('%')
  if (zone >= 0) address = address.slice(0, zone)
  return address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address
}

/** Write a dotted-quad IPv4 address at `offset`; false when `address` is not one. */
function writeIPv4 (out: Buffer, offset: number, address: string): boolean {
  let octet = 0
  let digits = 0
  let index = 0
  for (let i = 0; i < address.length; i++) {
    const c = address.charCodeAt(i)
    if (c === 0x2E) {
      if (digits === 0 || index === 3) return false
      out[offset + index++] = octet
      octet = 0
      digits = 0
    } else if (c >= 0x30 && c <= 0x39 && digits < 3) {
      octet = octet * 10 + (c - 0x30)
      if (octet > 255) return false
      digits++
    } else {
      return false
    }
  }
  if (digits === 0 || index !== 3) return false
  out[offset + 3] = octet
  return true
}

/** The 16 bytes of an IPv6 address (an IPv4 one as ::ffff:a.b.c.d); null when it is neither. */
function ipv6Bytes (address: string): number[] | null {
  if (!isIPv6(address) && !isIPv4(address)) return null
  try {
    const parsed = ipaddr.parse(address)
    return parsed.kind() === 'ipv4' ? (parsed as ipaddr.IPv4).toIPv4MappedAddress().toByteArray() : parsed.toByteArray()
  } catch {
    return null
  }
}

// ---- encoders ----

export interface ProxyHeaderEncoder {
  readonly version: 'v1' | 'v2'
  /** The header for a client at `address`:`port`; null when `address` is not an IP address. */
  encode (address: string, port: number): Buffer | null
}

/** An encoder toward the endpoint `destAddress`:`destPort` whose id is `endpointId` (ASCII). */
export function createProxyHeaderEncoder (version: 'v1' | 'v2', destAddress: string, destPort: number, endpointId: string): ProxyHeaderEncoder {
  return version === 'v2' ? new V2Encoder(destAddress, destPort, endpointId) : new V1Encoder(destAddress, destPort)
}

// v2 layout (network byte order throughout): 16-byte preamble (signature, ver_cmd, fam, len),
// then the address block — TCP4: src(4) dst(4) sport(2) dport(2); TCP6: src(16) dst(16) sport(2)
// dport(2) — then the TLVs: 0xEA [len] 0x01 <endpoint id>, and 0x03 [0x0004] <crc32c>.
const PREAMBLE = 16
const ADDR4 = 12
const ADDR6 = 36

class V2Encoder implements ProxyHeaderEncoder {
  readonly version = 'v2'
  /** Template for IPv4 clients (null when the endpoint is IPv6: such clients use TCP6). */
  readonly #tcp4: Buffer | null
  readonly #tcp6: Buffer
  readonly #crcOffset4: number
  readonly #crcOffset6: number

  constructor (destAddress: string, destPort: number, endpointId: string) {
    const dest = unmapped(destAddress)
    const id = Buffer.from(endpointId, 'latin1')
    if (id.length > 0xFFFF - 64) throw new RangeError(`endpoint id of ${id.length} bytes does not fit a PROXY v2 TLV`)
    const tlvs = Buffer.alloc(3 + 1 + id.length + 3 + 4)
    tlvs[0] = PP2_TYPE_AWS
    tlvs.writeUInt16BE(1 + id.length, 1)
    tlvs[3] = PP2_SUBTYPE_AWS_VPCE_ID
    id.copy(tlvs, 4)
    const crcTlv = 4 + id.length
    tlvs[crcTlv] = PP2_TYPE_CRC32C
    tlvs.writeUInt16BE(4, crcTlv + 1) // value (bytes crcTlv+3..+6) stays zero in the template
    if (isIPv4(dest)) {
      const t4 = template(V2_FAM_TCP4, ADDR4, tlvs)
      writeIPv4(t4, PREAMBLE + 4, dest)
      t4.writeUInt16BE(destPort, PREAMBLE + 10)
      this.#tcp4 = t4
    } else {
      this.#tcp4 = null
    }
    const t6 = template(V2_FAM_TCP6, ADDR6, tlvs)
    const destBytes = ipv6Bytes(dest)
    if (destBytes === null) throw new RangeError(`endpoint address ${JSON.stringify(destAddress)} is not an IP address`)
    t6.set(destBytes, PREAMBLE + 16)
    t6.writeUInt16BE(destPort, PREAMBLE + 34)
    this.#tcp6 = t6
    this.#crcOffset4 = PREAMBLE + ADDR4 + crcTlv + 3
    this.#crcOffset6 = PREAMBLE + ADDR6 + crcTlv + 3
  }

  encode (address: string, port: number): Buffer | null {
    // The common case, a dotted quad toward an IPv4 endpoint, costs no regular expression:
    // writeIPv4 parses and validates it.
    const src = address.indexOf(':') < 0 ? address : unmapped(address)
    let out: Buffer
    let crcAt: number
    if (this.#tcp4 !== null && src.indexOf(':') < 0) {
      out = Buffer.allocUnsafe(this.#tcp4.length)
      this.#tcp4.copy(out)
      if (!writeIPv4(out, PREAMBLE, src)) return null
      out.writeUInt16BE(port, PREAMBLE + 8)
      crcAt = this.#crcOffset4
    } else {
      // An IPv6 client, or an IPv4 client of an IPv6 endpoint (as ::ffff:a.b.c.d): TCP6.
      const srcBytes = ipv6Bytes(src)
      if (srcBytes === null) return null
      out = Buffer.allocUnsafe(this.#tcp6.length)
      this.#tcp6.copy(out)
      out.set(srcBytes, PREAMBLE)
      out.writeUInt16BE(port, PREAMBLE + 32)
      crcAt = this.#crcOffset6
    }
    // The CRC covers the whole header with its own field zeroed (the template's zeros).
    out.writeUInt32BE(crc32c(out), crcAt)
    return out
  }
}

function template (family: number, addressBytes: number, tlvs: Buffer): Buffer {
  const out = Buffer.alloc(PREAMBLE + addressBytes + tlvs.length)
  V2_SIGNATURE.copy(out, 0)
  out[12] = V2_CMD_PROXY
  out[13] = family
  out.writeUInt16BE(addressBytes + tlvs.length, 14)
  tlvs.copy(out, PREAMBLE + addressBytes)
  return out
}

// v1: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n" (at most 107 bytes). Everything after the
// source address except the source port is fixed per listener.
class V1Encoder implements ProxyHeaderEncoder {
  readonly version = 'v1'
  readonly #dest4: string | null
  readonly #dest6: string
  readonly #tail: string

  constructor (destAddress: string, destPort: number) {
    const dest = unmapped(destAddress)
    this.#dest4 = isIPv4(dest) ? dest : null
    this.#dest6 = isIPv4(dest) ? `::ffff:${dest}` : dest
    this.#tail = ` ${destPort}\r\n`
  }

  encode (address: string, port: number): Buffer | null {
    const src = unmapped(address)
    if (this.#dest4 !== null && isIPv4(src)) {
      return Buffer.from(`PROXY TCP4 ${src} ${this.#dest4} ${port}${this.#tail}`, 'latin1')
    }
    if (isIPv6(src)) return Buffer.from(`PROXY TCP6 ${src} ${this.#dest6} ${port}${this.#tail}`, 'latin1')
    if (isIPv4(src)) return Buffer.from(`PROXY TCP6 ::ffff:${src} ${this.#dest6} ${port}${this.#tail}`, 'latin1')
    return null
  }
}
