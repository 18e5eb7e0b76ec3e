// Cluster failover in the lab (SPEC §12): three etcd members, three node processes
// (test/fixtures/cluster-node.ts: membership + ownership + address actuator + a TCP responder),
// a client namespace, on one bridge in 198.18.16.0/23. Needs root (namespaces); under CI=true a
// missing tool or privilege fails. Everything is torn down by tap teardown, and stale lg-h16t-*
// namespaces from an earlier aborted run are removed first.
import t from 'tap'
import { execFile, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { createEtcdClient } from '../../src/cluster/etcd-client.ts'
import { rankNodes } from '../../src/cluster/ownership.ts'
import { buildLab, labDown, type Lab, type LabHost } from '../helpers/netns-lab.ts'
import { requireTools } from '../helpers/tools.ts'

const TAG = 'h16t'
const NET = 16
const TTL = 3
const PORT = 7000
const PREFIX = '/lgtest/'
// 6 kills keep this file near 60 s; LG_FAILOVER_KILLS=10 for a measurement (about 90 s).
const KILLS = Number(process.env.LG_FAILOVER_KILLS ?? 6)
const FIXTURE = fileURLToPath(new URL('../fixtures/cluster-node.ts', import.meta.url))
const PROBE = fileURLToPath(new URL('../fixtures/cluster-probe.ts', import.meta.url))
const run = promisify(execFile)
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(50)
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

t.test('cluster lab: ownership, failover, fencing, rejoin', async (t) => {
  if (!requireTools(t, ['etcd', 'etcdctl', 'arping', 'ip'])) return
  if (process.getuid?.() !== 0) {
    if (process.env.CI === 'true') t.fail('the cluster lab needs root (network namespaces)')
    else t.pass('needs root', { skip: 'the cluster lab needs root (network namespaces)' })
    return
  }
  t.teardown(() => { labDown(TAG) })
  const lab: Lab = buildLab({ tag: TAG, net: NET })
  t.teardown(() => lab.down())
  await lab.startEtcd()
  const etcd = createEtcdClient({ endpoints: lab.etcdEndpoints })
  t.teardown(() => etcd.close())

  // --- node processes ---
  const procs = new Map<string, ChildProcess>()
  const startNode = (h: LabHost): void => {
    const settings = {
      nodeId: h.name, endpoints: lab.etcdEndpoints, prefix: PREFIX, leaseTtlSeconds: TTL,
      iface: 'eth0', subnets: [lab.endpointSubnet], port: PORT
    }
    procs.set(h.name, lab.spawnIn(h.ns, process.execPath, [FIXTURE], {
      env: { LG_NODE: JSON.stringify(settings) }, logFile: join(lab.dataDir, `${h.name}.log`)
    }))
  }
  const registered = async (id: string): Promise<boolean> => (await etcd.get(`${PREFIX}nodes/${id}`).string()) !== null
  const liveNodes = async (): Promise<string[]> => (await etcd.getAll().prefix(`${PREFIX}nodes/`).keys()).map((k) => k.slice(`${PREFIX}nodes/`.length))

  // --- where each endpoint IP is, from the kernel's view ---
  const addrsOf = async (h: LabHost): Promise<string[]> => {
    const { stdout } = await run('ip', ['-n', h.ns, '-j', 'addr', 'show', 'dev', 'eth0'])
    const links = JSON.parse(stdout) as Array<{ addr_info: Array<{ local: string, prefixlen: number }> }>
    return links.flatMap((l) => l.addr_info).filter((a) => a.prefixlen === 32 && a.local.startsWith(`198.18.${NET + 1}.`)).map((a) => a.local)
  }
  const holders = async (): Promise<Map<string, string[]>> => {
    const out = new Map<string, string[]>()
    const all = await Promise.all(lab.nodes.map(async (h) => [h.name, await addrsOf(h)] as const))
    for (const [name, ips] of all) for (const ip of ips) out.set(ip, [...(out.get(ip) ?? []), name])
    return out
  }
  const settled = async (wanted: string[], among?: string[]): Promise<boolean> => {
    const h = await holders()
    return h.size === wanted.length && wanted.every((ip) => h.get(ip)?.length === 1 && (among === undefined || among.includes(h.get(ip)![0]!)))
  }

  // --- overlap sampler: every 100 ms, any IP on two nodes at once ---
  const overlaps: Array<{ at: number, ip: string, nodes: string[] }> = []
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      const at = Date.now()
      try {
        for (const [ip, nodes] of await holders()) if (nodes.length > 1) overlaps.push({ at, ip, nodes })
      } catch {}
      await sleep(100)
    }
  })()
  t.teardown(async () => { sampling = false; await sampler })

  // --- the client: a long-lived prober in the client namespace ---
  const prober = lab.spawnIn(lab.client.ns, process.execPath, [PROBE])
  const pending = new Map<number, (r: { ok: boolean, node?: string, error?: string }) => void>()
  createInterface({ input: prober.stdout! }).on('line', (line) => {
    const r = JSON.parse(line) as { id: number, ok: boolean, node?: string }
    pending.get(r.id)?.(r)
    pending.delete(r.id)
  })
  let probeId = 0
  const probe = (ip: string, timeoutMs = 250): Promise<{ ok: boolean, node?: string, error?: string }> => new Promise((resolve) => {
    const id = ++probeId
    pending.set(id, resolve)
    prober.stdin!.write(JSON.stringify({ id, ip, port: PORT, timeoutMs }) + '\n')
  })
  /** Probes `ip` every 100 ms until a node other than `not` answers; the time since `since`. */
  const servedAgain = async (ip: string, not: string, since: number, limitMs: number): Promise<{ ms: number, node: string }> => {
    for (;;) {
      const r = await probe(ip)
      if (r.ok && r.node !== not) return { ms: Date.now() - since, node: r.node! }
      if (Date.now() - since > limitMs) throw new Error(`${ip} not served by another node within ${limitMs} ms (last: ${JSON.stringify(r)})`)
      await sleep(100)
    }
  }

  const wanted = Array.from({ length: 9 }, (_, i) => lab.endpointIp(i))
  const budgetMs = (2 * TTL + 1) * 1000

  await t.test('three nodes own every IP exactly once, spread over the nodes, and serve it', async (t) => {
    for (const h of lab.nodes) startNode(h)
    await until('three nodes registered', async () => (await liveNodes()).length === 3, 15000)
    await etcd.put(`${PREFIX}test/wanted`).value(JSON.stringify(wanted))
    await until('every IP on exactly one node', () => settled(wanted), 10000)
    const h = await holders()
    const owners = await etcd.getAll().prefix(`${PREFIX}owners/`).strings()
    for (const ip of wanted) {
      const node = h.get(ip)![0]!
      t.equal(owners[`${PREFIX}owners/${ip}`], node, `${ip}: the address is on the node that holds its key (${node})`)
      const r = await probe(ip, 1000)
      t.match(r, { ok: true, node }, `${ip}: the client reaches ${node}`)
    }
    t.ok(new Set([...h.values()].map((n) => n[0])).size >= 2, `IPs spread over ${new Set([...h.values()].map((n) => n[0])).size} nodes`)
  })

  const failovers: number[] = []
  let lastRestarted = ''
  await t.test(`kill -9 of an owner: its IPs are served again within 2 x TTL + 1 s (${KILLS} kills)`, async (t) => {
    for (let k = 0; k < KILLS; k++) {
      const h = await holders()
      const owned = (name: string): string[] => wanted.filter((ip) => h.get(ip)?.[0] === name)
      // Alternate between the two busiest owners; a node that owns nothing (a restarted one can)
      // is never the victim.
      const owners = [...lab.nodes].filter((n) => owned(n.name).length > 0).sort((a, b) => owned(b.name).length - owned(a.name).length)
      const victim = owners[k % 2 === 0 || owners.length < 2 ? 0 : 1] ?? lab.nodes[0]!
      const ip = owned(victim.name)[0]
      if (ip === undefined) { t.fail(`kill ${k}: ${victim.name} owns nothing`); break }
      procs.get(victim.name)!.kill('SIGKILL')
      const killedAt = Date.now()
      const { ms, node } = await servedAgain(ip, victim.name, killedAt, budgetMs + 3000)
      failovers.push(ms)
      t.ok(ms <= budgetMs, `kill ${k + 1}: ${ip} of ${victim.name} served by ${node} after ${ms} ms (limit ${budgetMs})`)
      if (k === 0) {
        // The gratuitous ARP moved the client's neighbour entry to the new owner's MAC.
        const { stdout: neigh } = await run('ip', ['-n', lab.client.ns, '-j', 'neigh', 'show', ip])
        const { stdout: link } = await run('ip', ['-n', `lg-${TAG}-${node}`, '-j', 'link', 'show', 'eth0'])
        t.equal((JSON.parse(neigh) as Array<{ lladdr?: string }>)[0]?.lladdr, (JSON.parse(link) as Array<{ address: string }>)[0]?.address,
          'the client\'s ARP entry points at the new owner')
      }
      await until(`all IPs on the two survivors after kill ${k + 1}`, () => settled(wanted, lab.nodes.filter((n) => n !== victim).map((n) => n.name)), budgetMs)
      startNode(victim)
      await until(`${victim.name} registered again`, () => registered(victim.name), 15000)
      lastRestarted = victim.name
    }
    t.comment(`failover after kill -9, ${failovers.length} kills: median ${median(failovers)} ms, worst ${Math.max(...failovers)} ms (TTL ${TTL} s)`)
    t.same(overlaps, [], 'no IP was on two nodes at any sampled moment')
  })

  await t.test('an owner whose link goes down fences itself; the others serve its IPs, never both at once after the fence window', async (t) => {
    const h = await holders()
    const owned = (name: string): string[] => wanted.filter((ip) => h.get(ip)?.[0] === name)
    const cut = [...lab.nodes].sort((a, b) => owned(b.name).length - owned(a.name).length)[0]!
    const itsIps = owned(cut.name)
    overlaps.length = 0
    await run('ip', ['link', 'set', cut.hostVeth, 'down'])
    const downAt = Date.now()
    t.teardown(() => run('ip', ['link', 'set', cut.hostVeth, 'up']).catch(() => {}))
    for (const ip of itsIps) {
      const { ms, node } = await servedAgain(ip, cut.name, downAt, budgetMs + 3000)
      t.ok(ms <= budgetMs, `${ip} of ${cut.name} served by ${node} ${ms} ms after the link went down`)
    }
    const fenceWindowEnd = downAt + TTL * 1000 + 500
    await sleep(Math.max(0, fenceWindowEnd - Date.now()))
    t.same(await addrsOf(cut), [], `${cut.name} dropped its IPs itself (fenced) within TTL + 0.5 s`)
    await sleep(1000)
    const late = overlaps.filter((o) => o.at > fenceWindowEnd)
    t.same(late, [], 'after the fence window no sample shows an IP on two nodes')
    t.comment(`samples with an IP on two nodes inside the fence window: ${overlaps.length}`)
    await run('ip', ['link', 'set', cut.hostVeth, 'up'])
    await until(`${cut.name} registered again after the link came back`, () => registered(cut.name), 15000)
    await sleep(1000)
    t.ok(await settled(wanted), 'every IP still on exactly one node; the rejoined node took nothing back by force')
  })

  await t.test('a restarted node takes its share of IPs that need an owner', async (t) => {
    t.ok(lastRestarted !== '', 'a node was restarted')
    const live = await liveNodes()
    t.equal(live.length, 3, 'three live nodes')
    // New endpoint IPs: pick until the restarted node ranks first for two of them.
    const extra: string[] = []
    for (let i = 100; extra.filter((ip) => rankNodes(ip, live)[0] === lastRestarted).length < 2 && i < 200; i++) extra.push(lab.endpointIp(i))
    const all = [...wanted, ...extra]
    await etcd.put(`${PREFIX}test/wanted`).value(JSON.stringify(all))
    await until('all IPs placed', () => settled(all), 10000)
    const h = await holders()
    for (const ip of extra) t.equal(h.get(ip)?.[0], rankNodes(ip, live)[0], `new ${ip} on its first-ranked node`)
    const share = extra.filter((ip) => h.get(ip)?.[0] === lastRestarted)
    t.ok(share.length >= 2, `${lastRestarted} took ${share.length} of ${extra.length} new IPs`)
    for (const ip of share) t.match(await probe(ip, 1000), { ok: true, node: lastRestarted }, `${ip} served by ${lastRestarted}`)
  })

  await t.test('SIGTERM: a node removes its addresses and revokes its lease; the others take over at once', async (t) => {
    const h = await holders()
    const leaving = lab.nodes.find((n) => [...h.values()].some((v) => v[0] === n.name))!
    const itsIps = [...h].filter(([, v]) => v[0] === leaving.name).map(([ip]) => ip)
    const stoppedAt = Date.now()
    procs.get(leaving.name)!.kill('SIGTERM')
    for (const ip of itsIps) {
      const { ms } = await servedAgain(ip, leaving.name, stoppedAt, 4000)
      t.ok(ms < 2500, `${ip} served elsewhere ${ms} ms after SIGTERM (no lease expiry to wait for)`)
    }
    t.same(await addrsOf(leaving), [], `${leaving.name} has no endpoint address left`)
    t.same(overlaps.filter((o) => o.at > stoppedAt), [], 'no IP on two nodes')
  })
})
