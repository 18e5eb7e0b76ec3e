// `npm run lab` -- the cluster lab of SPEC §12 on this machine (needs root): one bridge
// (lgbr-lab), network namespaces for three etcd members, three linkgate nodes, a client and a
// backend, addresses in 198.18.0.0/15 only and no route out. It starts the three etcd members,
// prints what to try, and tears everything down on Ctrl-C.
//
//   npm run lab                      etcd members + empty node namespaces
//   npm run lab -- --test-nodes      also the test node fixture (ownership + addresses + a TCP
//                                    responder) in each node namespace, to watch failover now
//   npm run lab -- --down            remove what an aborted lab left (namespaces, bridge, data)
//
// linkgate itself cannot run in cluster mode yet (it needs the etcd store of issue 14), so the
// node namespaces are empty unless --test-nodes is given.
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildLab, labDown } from '../test/helpers/netns-lab.ts'
import { hasTool } from '../test/helpers/tools.ts'

const TAG = 'lab'
const args = process.argv.slice(2)
const usage = 'usage: npm run lab [-- --test-nodes | --down]'
for (const a of args) if (a !== '--down' && a !== '--test-nodes') { console.error(`lab: unknown option ${a}\n${usage}`); process.exit(2) }

if (process.getuid?.() !== 0) { console.error('lab: needs root (it creates network namespaces and a bridge)'); process.exit(1) }
const missing = ['ip', 'etcd', 'etcdctl', 'arping'].filter((tool) => !hasTool(tool))
if (missing.length > 0) {
  console.error(`lab: missing ${missing.join(', ')}; run: bash scripts/install-test-tools.sh`)
  process.exit(1)
}

if (args.includes('--down')) {
  const removed = labDown(TAG)
  console.log(removed.length === 0 ? 'lab: nothing to remove' : `lab: removed ${removed.join(', ')}`)
  process.exit(0)
}

const lab = buildLab({ tag: TAG, net: 0 })
let down = false
const teardown = (code: number): never => {
  if (!down) { down = true; lab.down(); console.log('\nlab: torn down (namespaces, bridge, etcd data)') }
  process.exit(code)
}
process.on('SIGINT', () => teardown(0))
process.on('SIGTERM', () => teardown(0))
process.on('uncaughtException', (err) => { console.error(err); teardown(1) })

try {
  await lab.startEtcd()
} catch (err) {
  console.error(`lab: ${(err as Error).message}`)
  teardown(1)
}

const prefix = '/linkgate/'
const ep = lab.etcdEndpoints.join(',')
if (args.includes('--test-nodes')) {
  const fixture = fileURLToPath(new URL('../test/fixtures/cluster-node.ts', import.meta.url))
  for (const h of lab.nodes) {
    const settings = { nodeId: h.name, endpoints: lab.etcdEndpoints, prefix, leaseTtlSeconds: 3, iface: 'eth0', subnets: [lab.endpointSubnet], port: 7000 }
    lab.spawnIn(h.ns, process.execPath, [fixture], { env: { LG_NODE: JSON.stringify(settings) }, logFile: join(lab.dataDir, `${h.name}.log`) })
  }
}

const line = (host: { ns: string, ip: string }, what: string): string => `  ${host.ip.padEnd(14)} ${host.ns.padEnd(16)} ${what}`
console.log(`
linkgate cluster lab (SPEC §12) is up. Bridge ${lab.bridge} ${lab.bridgeIp}/24 (this host), no route out.
${lab.etcd.map((h) => line(h, 'etcd member (client :2379, peer :2380)')).join('\n')}
${lab.nodes.map((h) => line(h, args.includes('--test-nodes') ? 'node (test fixture, TCP :7000 on owned IPs)' : 'node namespace (empty: linkgate has no cluster mode yet)')).join('\n')}
${line(lab.client, 'client')}
${line(lab.backend, 'backend')}
  endpoint IPs: ${lab.endpointSubnet} (on-link from the client and the nodes)
  logs and etcd data: ${lab.dataDir}/

Try:
  etcdctl --endpoints ${ep} endpoint status -w table
  etcdctl --endpoints ${ep} member list -w table
  ip netns exec ${lab.etcd[0]!.ns} ip addr                     # look inside a namespace
  kill -STOP $(ip netns pids ${lab.etcd[0]!.ns})               # freeze a member (kill -CONT to thaw)`)
if (args.includes('--test-nodes')) {
  console.log(`  etcdctl --endpoints ${ep} put ${prefix}test/wanted '["198.18.1.10","198.18.1.11","198.18.1.12"]'
  etcdctl --endpoints ${ep} get --prefix ${prefix}owners/       # who owns which IP
  ip netns exec ${lab.client.ns} bash -c 'cat </dev/tcp/198.18.1.10/7000'   # answers the owner's node id
  kill -9 $(ip netns pids ${lab.nodes[0]!.ns})                  # then ask again: another node answers within ~4 s
  ip link set ${lab.nodes[1]!.hostVeth} down                         # cut a node off: it fences itself after 3 s`)
}
console.log(`
Ctrl-C tears it all down; after a crash: npm run lab -- --down`)
setInterval(() => {}, 1 << 30)
