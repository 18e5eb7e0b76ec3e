// `npm run lab` -- the cluster lab of SPEC §12 on this machine (needs root): one bridge
// (lgbr-lab), network namespaces for three etcd members, three linkgate nodes, a client and a
// backend, addresses in 198.18.0.0/15 only and no route out. It starts the three etcd members,
// a small HTTP backend, three real `linkgate start` nodes in cluster mode (config files under
// /dev/shm/lg-lab/n*/), creates a demo service and endpoint through n1's API, prints what to
// try, and tears everything down on Ctrl-C.
//
//   npm run build && npm run lab     etcd members + backend + three linkgate nodes + a demo endpoint
//   npm run lab -- --test-nodes      the test node fixture (ownership + addresses + a TCP responder
//                                    answering its node id) instead of linkgate
//   npm run lab -- --down            remove what an aborted lab left (namespaces, bridge, data)
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { existsSync } from 'node:fs'
import { MAIN } from '../test/helpers/gateway-process.ts'
import { CONSUMER_TOKEN, LAB_API_PORT, LAB_DNS_PORT, createLabEndpoint, curlFromClient, labApi, startLabBackend, startLabNode, type LabNode } from '../test/helpers/lab-nodes.ts'
import { buildLab, labDown } from '../test/helpers/netns-lab.ts'
import { hasTool } from '../test/helpers/tools.ts'

const TAG = 'lab'
const args = process.argv.slice(2)
const usage = 'usage: npm run lab [-- --test-nodes | --down]'
for (const a of args) if (a !== '--down' && a !== '--test-nodes') { console.error(`lab: unknown option ${a}\n${usage}`); process.exit(2) }

if (process.getuid?.() !== 0) { console.error('lab: needs root (it creates network namespaces and a bridge)'); process.exit(1) }
const testNodes = args.includes('--test-nodes')
if (!args.includes('--down') && !testNodes && !existsSync(MAIN)) { console.error(`lab: ${MAIN} is missing; run: npm run build`); process.exit(1) }
const missing = ['ip', 'etcd', 'etcdctl', 'arping', 'curl'].filter((tool) => !hasTool(tool))
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
const n1 = lab.nodes[0]!
let demo: { ip: string, port: number, endpointId: string, dnsName?: string } | undefined
if (testNodes) {
  const fixture = fileURLToPath(new URL('../test/fixtures/cluster-node.ts', import.meta.url))
  for (const h of lab.nodes) {
    const settings = { nodeId: h.name, endpoints: lab.etcdEndpoints, prefix, leaseTtlSeconds: 3, iface: 'eth0', subnets: [lab.endpointSubnet], port: 7000 }
    lab.spawnIn(h.ns, process.execPath, [fixture], { env: { LG_NODE: JSON.stringify(settings) }, logFile: join(lab.dataDir, `${h.name}.log`) })
  }
} else {
  try {
    await startLabBackend(lab)
    const nodes: LabNode[] = await Promise.all(lab.nodes.map((h) => startLabNode(lab, h, { prefix, leaseTtlSeconds: 3, shutdownGraceSeconds: 5 })))
    const made = await createLabEndpoint(lab, nodes[0]!)
    const got = await labApi(nodes[0]!, 'GET', `/v1/endpoints/${made.endpointId}`, CONSUMER_TOKEN)
    demo = { ...made, dnsName: (got.body?.dnsNames as string[] | undefined)?.[0] }
    const url = `http://${made.ip}/`
    const deadline = Date.now() + 15000
    while ((await curlFromClient(lab, url)) === undefined) {
      if (Date.now() > deadline) throw new Error(`the demo endpoint ${url} did not answer the client within 15 s (logs in ${lab.dataDir}/n*/linkgate.log)`)
      await new Promise((resolve) => setTimeout(resolve, 250))
    }
  } catch (err) {
    console.error(`lab: ${(err as Error).message}`)
    teardown(1)
  }
}

const line = (host: { ns: string, ip: string }, what: string): string => `  ${host.ip.padEnd(14)} ${host.ns.padEnd(16)} ${what}`
const nodeLine = testNodes ? 'node (test fixture, TCP :7000 on owned IPs)' : `linkgate (API :${LAB_API_PORT}, DNS :${LAB_DNS_PORT}, owned endpoint IPs on eth0)`
console.log(`
linkgate cluster lab (SPEC §12) is up. Bridge ${lab.bridge} ${lab.bridgeIp}/24 (this host), no route out.
${lab.etcd.map((h) => line(h, 'etcd member (client :2379, peer :2380)')).join('\n')}
${lab.nodes.map((h) => line(h, nodeLine)).join('\n')}
${line(lab.client, 'client')}
${line(lab.backend, testNodes ? 'backend (empty)' : 'backend (HTTP :8080, answers "hello from backend")')}
  endpoint IPs: ${lab.endpointSubnet} (on-link from the client and the nodes)
  logs, configs and etcd data: ${lab.dataDir}/

Try:
  etcdctl --endpoints ${ep} endpoint status -w table
  etcdctl --endpoints ${ep} get --prefix ${prefix}owners/       # who owns which IP
  ip netns exec ${lab.etcd[0]!.ns} ip addr                     # look inside a namespace
  kill -STOP $(ip netns pids ${lab.etcd[0]!.ns})               # freeze a member (kill -CONT to thaw)`)
if (testNodes) {
  console.log(`  etcdctl --endpoints ${ep} put ${prefix}test/wanted '["198.18.1.10","198.18.1.11","198.18.1.12"]'
  ip netns exec ${lab.client.ns} bash -c 'cat </dev/tcp/198.18.1.10/7000'   # answers the owner's node id
  kill -9 $(ip netns pids ${n1.ns})                  # then ask again: another node answers within ~4 s
  ip link set ${lab.nodes[1]!.hostVeth} down                         # cut a node off: it fences itself after 3 s`)
} else if (demo !== undefined) {
  const api = `http://${n1.ip}:${LAB_API_PORT}`
  console.log(`
  Demo endpoint ${demo.endpointId} at ${demo.ip}:${demo.port} (service -> ${lab.backend.ip}:8080), created through n1:
  ip netns exec ${lab.client.ns} curl -s http://${demo.ip}/          # through whichever node owns ${demo.ip}
  curl -s -H 'authorization: Bearer ${CONSUMER_TOKEN}' ${api}/v1/cluster     # live nodes and the IPs each owns
  for n in ${lab.nodes.map((h) => h.ns).join(' ')}; do echo $n: $(ip -n $n -br addr show dev eth0); done
  ip netns exec ${lab.client.ns} dig +short @${n1.ip} -p ${LAB_DNS_PORT} ${demo.dnsName ?? '<dnsName>'}   # any node answers the same
  kill -9 $(ip netns pids lg-lab-nX)       # the owner (nX from /v1/cluster): the IP answers from another node within ~7 s
  kill -TERM $(ip netns pids lg-lab-nX)    # graceful: the IP moves at once, live connections drain
  ip link set lglabnX down                 # cut the owner off: it fences itself after 3 s, another node serves
  More: the API and the CLI work against any node, e.g.
  node dist/main.js get endpoints --api ${api} --token ${CONSUMER_TOKEN}
  Logs: ${lab.dataDir}/n1/linkgate.log (config next to it). Stopped nodes stay stopped; Ctrl-C ends everything.`)
}
console.log(`
Ctrl-C tears it all down; after a crash: npm run lab -- --down`)
setInterval(() => {}, 1 << 30)
