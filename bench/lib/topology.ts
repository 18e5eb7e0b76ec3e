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

/** What a column of the results stands for: a way to reach the backends, or a DNS server. */
export type PeerKind = 'direct' | 'haproxy' | 'nginx' | 'linkgate'

/**
 * Every way to reach the backends in one run (issue 15): direct, and each proxy at one and at
 * two threads — HAProxy `nbthread`, nginx `worker_processes`, linkgate `workers`.
 */
export type PeerName = 'direct' | 'haproxy-1' | 'haproxy-2' | 'nginx-1' | 'nginx-2' | 'linkgate-1' | 'linkgate-2'
export const peerNames: readonly PeerName[] = ['direct', 'haproxy-1', 'haproxy-2', 'nginx-1', 'nginx-2', 'linkgate-1', 'linkgate-2']
export type ProxyName = Exclude<PeerName, 'direct'>
export const proxyNames: readonly ProxyName[] = ['haproxy-1', 'haproxy-2', 'nginx-1', 'nginx-2', 'linkgate-1', 'linkgate-2']

/** The kind of a peer ('haproxy-2' -> 'haproxy'). */
export function kindOf (name: PeerName): PeerKind {
  return name === 'direct' ? 'direct' : name.slice(0, name.indexOf('-')) as PeerKind
}

/** Threads (or worker processes) of a peer; direct counts as 1. */
export function threadsOf (name: PeerName): 1 | 2 {
  return name.endsWith('-2') ? 2 : 1
}

/** Where one linkgate instance of the bench listens. */
export interface LinkgateInstance {
  readonly api: string
  readonly apiPort: number
  readonly dns: string
  readonly dnsPort: number
  readonly subnet: string
  readonly endpoint: string
}

/**
 * linkgate at `workers: 1` is topology.linkgate; at `workers: 2` it listens on .2 and its endpoint
 * is .20; the single-loop instance of case 10 (data plane on the main thread) on .3 and .30.
 */
export function linkgateInstance (variant: 0 | 1 | 2): LinkgateInstance {
  if (variant === 1) return topology.linkgate
  const host = `127.50.4.${variant === 2 ? 2 : 3}`
  return { ...topology.linkgate, api: host, dns: host, endpoint: `127.50.4.${variant === 2 ? 20 : 30}` }
}

/** The address a client uses to reach the backends through `peer`. */
export function peerAddress (peer: PeerName): string {
  switch (peer) {
    case 'direct': return topology.backend
    case 'haproxy-1': return topology.haproxy
    case 'haproxy-2': return '127.50.2.2'
    case 'nginx-1': return topology.nginx
    case 'nginx-2': return '127.50.3.2'
    case 'linkgate-1': return topology.linkgate.endpoint
    case 'linkgate-2': return linkgateInstance(2).endpoint
  }
}

/** Every TCP address:port the bench binds: backends, each proxy's ports, linkgate's APIs and DNS. */
export function benchTcpListeners (): Array<[string, number]> {
  const tcp = [ports.iperf, ports.http, ports.idle]
  const out: Array<[string, number]> = []
  for (const host of [topology.backend, ...proxyNames.map(peerAddress), linkgateInstance(0).endpoint]) {
    for (const port of tcp) out.push([host, port])
  }
  for (const v of [0, 1, 2] as const) {
    const lg = linkgateInstance(v)
    out.push([lg.api, lg.apiPort], [lg.dns, lg.dnsPort])
  }
  return out
}
