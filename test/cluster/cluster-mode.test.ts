// Cluster mode end to end (SPEC §12) with real `linkgate start` processes on one etcd member:
// three nodes share one state (a change made through one node's API is on the others within
// 1 s), `GET /v1/cluster` lists the live nodes with the IPs each owns, every accepted endpoint
// IP is owned by exactly one node, and only its owner listens on it. Without a cluster section
// a node lists itself alone. Loopback only: 127.78.0.0/16 (endpoint IPs on lo need no address
// management, so `cluster.interface` is left out).
import { mkdtemp, rm } from 'node:fs/promises'
import { createConnection, createServer } from 'node:net'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { freePort, startEtcdMember } from '../helpers/etcd-member.ts'
import { api, startGateway, writeConfig, type Gateway } from '../helpers/gateway-process.ts'
import { requireTools } from '../helpers/tools.ts'

const PROVIDER = 'provider-dev-token'
const CONSUMER = 'consumer-dev-token'
const SUBNET = { id: 'subnet-a', cidr: '127.78.8.0/24', zone: 'zone-a' }
const TERMINAL_PORT = 18080

async function tempDir (t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lg-16b-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

async function until<T> (what: string, probe: () => Promise<T | undefined>, ms: number): Promise<{ value: T, ms: number }> {
  const start = Date.now()
  for (;;) {
    const value = await probe()
    if (value !== undefined) return { value, ms: Date.now() - start }
    if (Date.now() - start > ms) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** One line from `ip:port` (the backend answers "hello from backend"); undefined when refused. */
function ask (ip: string, port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: ip, port })
    let got = ''
    socket.setTimeout(2000, () => { socket.destroy(); resolve(undefined) })
    socket.on('data', (chunk) => { got += chunk.toString() })
    socket.on('end', () => resolve(got))
    socket.on('error', () => resolve(undefined))
  })
}

async function gateway (t: Test, host: string, extra: Record<string, unknown>): Promise<Gateway> {
  const dir = await tempDir(t)
  const file = await writeConfig(dir, {
    listen: { api: `${host}:0`, dns: `${host}:0` },
    stateDir: join(dir, 'state'),
    subnets: [SUBNET],
    log: { level: 'warn' },
    ...extra
  })
  const gw = await startGateway(t, file)
  t.teardown(async () => {
    if (gw.proc.exitCode === null && gw.proc.signalCode === null) gw.proc.kill('SIGTERM')
    await gw.exited
  })
  return gw
}

t.test('three linkgate nodes on one etcd', async (t) => {
  if (!requireTools(t, ['etcd'])) return
  const etcd = await startEtcdMember(t, '127.78.0.1')
  const backendPort = await freePort('127.78.0.2')
  // A probe cut by a node while the answer is in flight resets this side: not the test's failure.
  const backend = createServer((socket) => { socket.on('error', () => {}); socket.end('hello from backend\n') })
  await new Promise<void>((resolve) => backend.listen(backendPort, '127.78.0.2', resolve))
  t.teardown(() => new Promise<void>((resolve) => backend.close(() => resolve())))

  const nodes: Gateway[] = []
  for (const [i, nodeId] of ['n1', 'n2', 'n3'].entries()) {
    nodes.push(await gateway(t, `127.78.0.${11 + i}`, {
      cluster: { nodeId, etcd: { endpoints: [etcd.url], prefix: '/lg-16b/' }, leaseTtlSeconds: 2 }
    }))
  }
  const [n1, n2, n3] = nodes as [Gateway, Gateway, Gateway]

  const created = await api(n1, 'POST', '/v1/endpoint-services', PROVIDER, {
    portMappings: [{ protocol: 'TCP', servicePort: backendPort, terminalPort: TERMINAL_PORT }],
    backends: [{ address: '127.78.0.2', zone: 'zone-a' }],
    acceptanceRequired: false,
    allowedAccounts: ['*']
  })
  t.equal(created.status, 201, JSON.stringify(created.body))
  const svcId = created.body.id as string
  for (const other of [n2, n3]) {
    const { ms } = await until('the service is on the other node', async () => {
      const res = await api(other, 'GET', `/v1/endpoint-services/${svcId}`, PROVIDER)
      return res.status === 200 ? res.body : undefined
    }, 1000)
    t.ok(ms <= 1000, `the service is on ${other.apiUrl} after ${ms} ms`)
  }

  const ep = await api(n2, 'POST', '/v1/endpoints', CONSUMER, { serviceId: svcId, subnetId: 'subnet-a' })
  t.equal(ep.status, 201, JSON.stringify(ep.body))
  const ip = ep.body.ip as string
  for (const other of [n1, n3]) {
    const { value } = await until('the endpoint is on the other node', async () => {
      const res = await api(other, 'GET', `/v1/endpoints/${ep.body.id as string}`, CONSUMER)
      return res.status === 200 ? res.body : undefined
    }, 1000)
    t.equal(value.ip, ip, 'the same endpoint, the same IP')
  }

  // One owner for the IP; every node's /v1/cluster says the same.
  const { value: listing, ms: ownedAfter } = await until('the IP has an owner', async () => {
    const res = await api(n3, 'GET', '/v1/cluster', CONSUMER)
    const owners = (res.body.items as Array<{ nodeId: string, ownedIps: string[] }>).filter((i) => i.ownedIps.includes(ip))
    return res.body.items.length === 3 && owners.length === 1 ? res.body : undefined
  }, 5000)
  t.comment(`IP ${ip} owned after ${ownedAfter} ms`)
  t.same(listing.items.map((i: { nodeId: string, live: boolean }) => [i.nodeId, i.live]), [['n1', true], ['n2', true], ['n3', true]])
  for (const node of [n1, n2]) {
    const res = await api(node, 'GET', '/v1/cluster', PROVIDER)
    t.same(res.body, listing, 'every node lists the same nodes and owners')
  }
  t.equal((await api(n1, 'GET', '/v1/cluster', 'nope')).status, 401, 'the listing needs a token')

  // Only the owner listens: a connection is proxied to the backend, and the metrics agree.
  const { value: answer } = await until('the owner serves the IP', async () => ask(ip, TERMINAL_PORT), 3000)
  t.equal(answer, 'hello from backend\n')
  let owned = 0
  let nodesSeen = 0
  for (const node of nodes) {
    const text = await (await fetch(`${node.apiUrl}/metrics`)).text()
    owned += Number(/^linkgate_owned_endpoint_ips (\d+)$/m.exec(text)?.[1])
    nodesSeen += Number(/^linkgate_cluster_nodes (\d+)$/m.exec(text)?.[1])
  }
  t.equal(owned, 1, 'linkgate_owned_endpoint_ips sums to 1 over the nodes')
  t.equal(nodesSeen, 9, 'linkgate_cluster_nodes is 3 on each node')

  // A delete on one node stops the listener of the owner, wherever it is.
  t.equal((await api(n1, 'DELETE', `/v1/endpoints/${ep.body.id as string}`, CONSUMER)).status, 204)
  await until('nobody listens on the IP any more', async () => ((await ask(ip, TERMINAL_PORT)) === undefined ? true : undefined), 2000)
  // The owner stops listening on the delete event, then releases its owner key in etcd, which
  // reaches n2 through its watch: the listing empties a moment after the listener closed.
  const { ms: releasedAfter } = await until('the IP is released', async () => {
    const res = await api(n2, 'GET', '/v1/cluster', PROVIDER)
    return res.body.items.flatMap((i: { ownedIps: string[] }) => i.ownedIps).length === 0 ? true : undefined
  }, 2000)
  t.comment(`owner key released ${releasedAfter} ms after the listener closed`)
})

t.test('a single node without a cluster section lists itself with its accepted endpoint IPs', async (t) => {
  const backendPort = await freePort('127.78.0.3')
  const gw = await gateway(t, '127.78.0.14', {})
  const svc = await api(gw, 'POST', '/v1/endpoint-services', PROVIDER, {
    portMappings: [{ protocol: 'TCP', servicePort: backendPort, terminalPort: TERMINAL_PORT }],
    backends: [{ address: '127.78.0.3', zone: 'zone-a' }],
    acceptanceRequired: true,
    allowedAccounts: ['*']
  })
  const mine = await api(gw, 'POST', '/v1/endpoints', PROVIDER, { serviceId: svc.body.id, subnetId: 'subnet-a', ip: '127.78.8.20' })
  const pending = await api(gw, 'POST', '/v1/endpoints', CONSUMER, { serviceId: svc.body.id, subnetId: 'subnet-a', ip: '127.78.8.21' })
  t.equal(mine.body.status, 'accepted')
  t.equal(pending.body.status, 'pendingAcceptance')
  const res = await api(gw, 'GET', '/v1/cluster', CONSUMER)
  t.equal(res.status, 200)
  t.same(res.body, { items: [{ nodeId: hostname(), live: true, ownedIps: ['127.78.8.20'] }] }, 'only accepted endpoint IPs are owned')
  const text = await (await fetch(`${gw.apiUrl}/metrics`)).text()
  t.match(text, /^linkgate_cluster_nodes 1$/m)
  t.match(text, /^linkgate_owned_endpoint_ips 1$/m)
})
