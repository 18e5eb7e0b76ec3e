// Endpoint IPs (SPEC §3): a requested IP must lie inside the subnet, be a host address and be
// unused; otherwise the lowest free host address, skipping the network address, the broadcast
// address and the first host (`.1`, the subnet's gateway, as cloud VPCs reserve it).
import ipaddr from 'ipaddr.js'
import { conflict, invalidParameter } from '../errors.ts'

type Addr = ipaddr.IPv4 | ipaddr.IPv6

function toBigInt (addr: Addr): bigint {
  let n = 0n
  for (const byte of addr.toByteArray()) n = (n << 8n) | BigInt(byte)
  return n
}

function fromBigInt (n: bigint, bytes: number): Addr {
  const out = new Array<number>(bytes)
  for (let i = bytes - 1; i >= 0; i--) {
    out[i] = Number(n & 0xffn)
    n >>= 8n
  }
  return ipaddr.fromByteArray(out)
}

export interface SubnetLike {
  readonly id: string
  readonly cidr: string
}

function bounds (subnet: SubnetLike): { network: Addr, bits: number, first: bigint, last: bigint, size: number } {
  const [network, bits] = ipaddr.parseCIDR(subnet.cidr)
  const width = network.kind() === 'ipv4' ? 32 : 128
  const first = toBigInt(network)
  const last = first + (1n << BigInt(width - bits)) - 1n
  return { network, bits, first, last, size: width / 8 }
}

/** Normalised textual form (IPv6 compressed, lowercase). */
export function normalizeIp (ip: string): string {
  return ipaddr.parse(ip).toString()
}

/** An address as a number (for ordering and allocation hints); undefined when it does not parse. */
export function ipToBigInt (ip: string): bigint | undefined {
  return ipaddr.isValid(ip) ? toBigInt(ipaddr.parse(ip)) : undefined
}

/**
 * `requested` when it is a free host address of the subnet; else the lowest free one, searched
 * from `from` (a caller's hint below which every address is taken) upwards.
 */
export function allocateIp (subnet: SubnetLike, requested: string | undefined, inUse: (ip: string) => boolean, field = 'ip', from?: bigint): string {
  const { network, first, last, size } = bounds(subnet)
  if (requested !== undefined) {
    const addr = ipaddr.parse(requested)
    if (addr.kind() !== network.kind() || !addr.match(ipaddr.parseCIDR(subnet.cidr))) {
      throw invalidParameter(`${field}: ${requested} is not inside ${subnet.id} (${subnet.cidr})`)
    }
    const n = toBigInt(addr)
    if (last - first >= 2n && (n === first || (network.kind() === 'ipv4' && n === last))) {
      throw invalidParameter(`${field}: ${requested} is the ${n === first ? 'network' : 'broadcast'} address of ${subnet.id} (${subnet.cidr})`)
    }
    // The first host is the subnet's gateway, reserved as cloud VPCs do (SPEC §10: a 400).
    if (last - first >= 3n && n === first + 1n) {
      throw invalidParameter(`${field}: ${requested} is the first host address of ${subnet.id} (${subnet.cidr}), reserved as its gateway`)
    }
    const ip = addr.toString()
    if (inUse(ip)) throw conflict(`${field}: ${ip} is already used by another endpoint`)
    return ip
  }
  const end = network.kind() === 'ipv4' ? last - 1n : last
  const start = from !== undefined && from > first + 2n ? from : first + 2n
  for (let n = start; n <= end; n++) {
    const ip = fromBigInt(n, size).toString()
    if (!inUse(ip)) return ip
  }
  throw conflict(`subnetId: no free address left in ${subnet.id} (${subnet.cidr})`)
}
