// Where everything listens during a bench run. Loopback only, inside 127.50.0.0/16 (tests use
// other 127.x ranges, so a bench and a test run can share the machine).
//
// One backend address serves every protocol, because a linkgate endpoint service maps each
// terminalPort to the same port on the same backend address (SPEC §3).

export const ports = {
  /** iperf3 server (case 1). */
  iperf: 5201,
  /** nginx HTTP backend, small responses (cases 2, 3, 7). */
  http: 8080,
  /** Idle-session backend: echoes the first bytes, then holds the socket (case 6). */
  idle: 7000,
  /** dnsmasq over UDP (case 4). */
  dns: 5353
} as const

export const topology = {
  backend: '127.50.1.1',
  haproxy: '127.50.2.1',
  nginx: '127.50.3.1',
  linkgate: {
    /** Control API, /healthz, /metrics. */
    api: '127.50.4.1',
    apiPort: 18480,
    /** Embedded DNS server (case 5). */
    dns: '127.50.4.1',
    dnsPort: 15353,
    subnet: '127.50.4.0/24',
    /** The endpoint's IP: what clients connect to. */
    endpoint: '127.50.4.10'
  },
  /** The dnsmasq that serves the same names as linkgate's DNS (case 5) is the UDP backend itself. */
  dnsmasq: '127.50.1.1'
} as const

/** Fixed ids so the bench config, the DNS names and the results never change between runs. */
export const benchIds = {
  region: 'bench-1',
  suffix: 'privatelink.internal',
  zone: 'zone-a',
  subnetId: 'subnet-bench',
  accountId: '100000000001',
  token: 'bench-provider-token',
  serviceId: 'vpcesvc-00000000be0c',
  endpointId: 'vpce-00000000be0e'
} as const

export type PeerName = 'direct' | 'haproxy' | 'nginx' | 'linkgate'

/** The address a client uses to reach the backends through `peer`. */
export function peerAddress (peer: PeerName): string {
  switch (peer) {
    case 'direct': return topology.backend
    case 'haproxy': return topology.haproxy
    case 'nginx': return topology.nginx
    case 'linkgate': return topology.linkgate.endpoint
  }
}

/** Every TCP address:port the bench binds: backends, each proxy's ports, linkgate's API. */
export function benchTcpListeners (): Array<[string, number]> {
  const tcp = [ports.iperf, ports.http, ports.idle]
  const out: Array<[string, number]> = []
  for (const host of [topology.backend, topology.haproxy, topology.nginx, topology.linkgate.endpoint]) {
    for (const port of tcp) out.push([host, port])
  }
  out.push([topology.linkgate.api, topology.linkgate.apiPort], [topology.linkgate.dns, topology.linkgate.dnsPort])
  return out
}
