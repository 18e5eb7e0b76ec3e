// Private DNS names of an endpoint (SPEC §6), shared by the control plane (the `dnsNames` field)
// and the DNS server (the records), so the two can never disagree.
import type { Config } from './schemas.ts'

export interface DnsNameFields {
  readonly id: string
  readonly serviceId: string
  readonly zone: string
}

/** [regional, zonal]: `{endpointId}.{serviceId}.{region}.{suffix}`, `{endpointId}-{zone}.{serviceId}.{region}.{suffix}`. */
export function endpointDnsNames (endpoint: DnsNameFields, config: Pick<Config, 'region' | 'dns'>): [string, string] {
  const tail = `${endpoint.serviceId}.${config.region}.${config.dns.suffix}`
  return [`${endpoint.id}.${tail}`, `${endpoint.id}-${endpoint.zone}.${tail}`]
}
