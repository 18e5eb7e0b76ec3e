// The cluster lab on one machine (SPEC §12), shared by `npm run lab` (scripts/lab.ts) and the
// cluster tests: one bridge, one network namespace per etcd member, linkgate node, client and
// backend, each with a veth whose far end is `eth0` in the namespace. Addresses come from RFC
// 2544's benchmark range 198.18.0.0/15 only, and no namespace has a default route, so nothing
// leaves the machine. FRR's topotests and keepalived's netns tests build their labs the same way.
//
// Names carry a tag, so that the lab and a test run never meet:
//   namespaces lg-<tag>-e1..3 (etcd), lg-<tag>-n1..3 (nodes), lg-<tag>-client, lg-<tag>-backend
//   bridge lgbr-<tag>, host-side veths lg<tag><e1|n1|c|b>, data under /dev/shm/lg-<tag>/
// Layout of 198.18.<net>.0/24: .1 the bridge (so the host can reach etcd), .5 client, .6 backend,
// .11-.13 etcd, .21-.23 nodes. Endpoint IPs come from 198.18.<net+1>.0/24, reached on-link.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, openSync, closeSync, rmSync, existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'

export interface LabOptions {
  /** 1-6 of [a-z0-9]: part of every name. */
  tag: string
  /** Third octet of the lab network (even, 0..254): 198.18.<net>.0/24, endpoints in <net+1>. */
  net: number
  nodes?: number
  etcdMembers?: number
}

export interface LabHost { name: string, ns: string, ip: string, hostVeth: string }

export interface Lab {
  tag: string
  bridge: string
  bridgeIp: string
  /** CIDR of the endpoint subnet (e.g. 198.18.1.0/24). */
  endpointSubnet: string
  etcd: LabHost[]
  nodes: LabHost[]
  client: LabHost
  backend: LabHost
  /** Client URLs of the etcd members. */
  etcdEndpoints: string[]
  dataDir: string
  /** The i-th endpoint IP (i >= 0). */
  endpointIp: (i: number) => string
  /** Starts the etcd members (single cluster) and waits until it has a leader. */
  startEtcd: () => Promise<void>
  /** Starts `command args` inside a namespace (`ip netns exec` execs it: the child's pid is the
   *  command's). Output goes to `logFile`, else to pipes (stdin too). down() kills it. */
  spawnIn: (ns: string, command: string, args: readonly string[], options?: { env?: NodeJS.ProcessEnv, logFile?: string }) => ChildProcess
  /** Runs a command inside a namespace and returns its stdout (throws with stderr on failure). */
  execIn: (ns: string, command: string, args: readonly string[]) => string
  down: () => void
}

const TAG = /^[a-z0-9]{1,6}$/

function sh (command: string, args: readonly string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}
function trySh (command: string, args: readonly string[]): boolean {
  try { sh(command, args); return true } catch { return false }
}

export function labNames (tag: string): { prefix: string, bridge: string, dataDir: string } {
  if (!TAG.test(tag)) throw new RangeError(`lab tag ${JSON.stringify(tag)}: expected 1-6 of [a-z0-9]`)
  return { prefix: `lg-${tag}-`, bridge: `lgbr-${tag}`, dataDir: `/dev/shm/lg-${tag}` }
}

/** Removes everything a lab with this tag may have left: processes in its namespaces (killed by
 *  pid), the namespaces, the bridge, the data directory. Touches nothing else. */
export function labDown (tag: string): string[] {
  const { prefix, bridge, dataDir } = labNames(tag)
  const removed: string[] = []
  let namespaces: string[] = []
  try { namespaces = readdirSync('/run/netns').filter((n) => n.startsWith(prefix)) } catch {}
  for (const ns of namespaces) {
    let pids: string[] = []
    try { pids = sh('ip', ['netns', 'pids', ns]).split(/\s+/).filter((p) => /^\d+$/.test(p)) } catch {}
    for (const pid of pids) { try { process.kill(Number(pid), 'SIGKILL') } catch {} }
  }
  for (const ns of namespaces) {
    // A killed process may take a moment to leave; deleting the name is enough either way.
    if (trySh('ip', ['netns', 'del', ns])) removed.push(ns)
  }
  if (trySh('ip', ['link', 'show', 'dev', bridge]) && trySh('ip', ['link', 'del', 'dev', bridge])) removed.push(bridge)
  // Host-side veths vanish with their namespace; a half-built one may not have.
  for (const line of sh('ip', ['-o', 'link', 'show']).split('\n')) {
    const m = /^\d+:\s+([^:@\s]+)/.exec(line)
    if (m !== null && (m[1] as string).startsWith(`lg${tag}`) && trySh('ip', ['link', 'del', 'dev', m[1] as string])) removed.push(m[1] as string)
  }
  if (existsSync(dataDir)) { rmSync(dataDir, { recursive: true, force: true }); removed.push(dataDir) }
  return removed
}

export function buildLab (options: LabOptions): Lab {
  const { tag, net } = options
  const { prefix, bridge, dataDir } = labNames(tag)
  if (!Number.isInteger(net) || net < 0 || net > 254 || net % 2 !== 0) throw new RangeError(`lab net ${net}: expected an even number 0..254`)
  const base = `198.18.${net}`
  const nodeCount = options.nodes ?? 3
  const etcdCount = options.etcdMembers ?? 3
  labDown(tag)
  const host = (name: string, hostSuffix: string, ip: string): LabHost => ({ name, ns: prefix + name, ip, hostVeth: `lg${tag}${hostSuffix}` })
  const etcd = Array.from({ length: etcdCount }, (_, i) => host(`e${i + 1}`, `e${i + 1}`, `${base}.${11 + i}`))
  const nodes = Array.from({ length: nodeCount }, (_, i) => host(`n${i + 1}`, `n${i + 1}`, `${base}.${21 + i}`))
  const client = host('client', 'c', `${base}.5`)
  const backend = host('backend', 'b', `${base}.6`)
  const children = new Set<ChildProcess>()

  const down = (): void => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    labDown(tag)
  }
  try {
    sh('ip', ['link', 'add', bridge, 'type', 'bridge'])
    sh('ip', ['addr', 'add', `${base}.1/24`, 'dev', bridge])
    sh('ip', ['link', 'set', bridge, 'up'])
    mkdirSync(dataDir, { recursive: true })
    for (const h of [...etcd, ...nodes, client, backend]) {
      sh('ip', ['netns', 'add', h.ns])
      sh('ip', ['link', 'add', h.hostVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns])
      sh('ip', ['link', 'set', h.hostVeth, 'master', bridge, 'up'])
      sh('ip', ['-n', h.ns, 'link', 'set', 'lo', 'up'])
      sh('ip', ['-n', h.ns, 'addr', 'add', `${h.ip}/24`, 'dev', 'eth0'])
      sh('ip', ['-n', h.ns, 'link', 'set', 'eth0', 'up'])
    }
    // The client (and the nodes, for tests that connect between them) reach endpoint IPs on-link:
    // they ARP for them on the bridge, and the owner's kernel answers.
    for (const h of [client, ...nodes]) sh('ip', ['-n', h.ns, 'route', 'add', `198.18.${net + 1}.0/24`, 'dev', 'eth0'])
  } catch (err) {
    down()
    throw err
  }

  const spawnIn: Lab['spawnIn'] = (ns, command, args, opts = {}) => {
    let fd: number | 'ignore' = 'ignore'
    if (opts.logFile !== undefined) fd = openSync(opts.logFile, 'a')
    const child = spawn('ip', ['netns', 'exec', ns, command, ...args], {
      stdio: fd === 'ignore' ? ['pipe', 'pipe', 'pipe'] : ['ignore', fd, fd],
      env: { ...process.env, ...opts.env }
    })
    if (typeof fd === 'number') closeSync(fd)
    children.add(child)
    child.on('exit', () => children.delete(child))
    return child
  }
  const execIn: Lab['execIn'] = (ns, command, args) => sh('ip', ['netns', 'exec', ns, command, ...args])

  const etcdEndpoints = etcd.map((h) => `http://${h.ip}:2379`)
  const startEtcd = async (): Promise<void> => {
    const initialCluster = etcd.map((h) => `${h.name}=http://${h.ip}:2380`).join(',')
    for (const h of etcd) {
      const dir = join(dataDir, h.name)
      mkdirSync(dir, { recursive: true })
      spawnIn(h.ns, 'etcd', [
        '--name', h.name,
        '--data-dir', join(dir, 'data'),
        '--listen-client-urls', `http://${h.ip}:2379`,
        '--advertise-client-urls', `http://${h.ip}:2379`,
        '--listen-peer-urls', `http://${h.ip}:2380`,
        '--initial-advertise-peer-urls', `http://${h.ip}:2380`,
        '--initial-cluster', initialCluster,
        '--initial-cluster-state', 'new',
        '--initial-cluster-token', `lg-${tag}`
        // heartbeat 100 ms and election 1000 ms are etcd's defaults; SPEC §12 relies on them.
      ], { logFile: join(dir, 'etcd.log') })
    }
    const deadline = Date.now() + 20000
    for (;;) {
      try {
        sh('etcdctl', ['--endpoints', etcdEndpoints.join(','), '--dial-timeout', '1s', '--command-timeout', '2s', 'endpoint', 'health'])
        return
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`etcd members did not become healthy within 20 s (logs in ${dataDir}/e*/etcd.log): ${String((err as { stderr?: string }).stderr ?? err)}`)
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
    }
  }

  return {
    tag,
    bridge,
    bridgeIp: `${base}.1`,
    endpointSubnet: `198.18.${net + 1}.0/24`,
    etcd,
    nodes,
    client,
    backend,
    etcdEndpoints,
    dataDir,
    endpointIp: (i) => `198.18.${net + 1}.${10 + i}`,
    startEtcd,
    spawnIn,
    execIn,
    down
  }
}
