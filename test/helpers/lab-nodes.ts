// Real linkgate nodes in the cluster lab (SPEC §12), shared by `npm run lab` (scripts/lab.ts)
// and the lab tests: `linkgate start` (dist/main.js) in a node namespace, in cluster mode with
// `interface: eth0`, the lab's etcd members, the API and DNS on the node's lab IP; a small HTTP
// responder in the backend namespace; and the kernel's view of which node holds which endpoint
// address. Build first (`npm run build`): the nodes run dist/main.js as a user would.
import { execFile, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { stringify } from 'yaml'
import { MAIN } from './gateway-process.ts'
import type { Lab, LabHost } from './netns-lab.ts'

const run = promisify(execFile)
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

export const PROVIDER_TOKEN = 'provider-dev-token'
export const CONSUMER_TOKEN = 'consumer-dev-token'
export const LAB_API_PORT = 8480
export const LAB_DNS_PORT = 5353
export const LAB_BACKEND_PORT = 8080

export interface LabNodeOptions {
  /** etcd key prefix of this cluster (default `/linkgate/`). */
  prefix?: string
  leaseTtlSeconds?: number
  /** Data-plane worker threads (default 1: three nodes on a 2-core machine). */
  workers?: number | 'auto'
  /** Endpoint subnets (default: one, `subnet-a` = lab.endpointSubnet in zone-a). */
  subnets?: Array<{ id: string, cidr: string, zone: string }>
  logLevel?: string
  /** Drain time on SIGTERM (default 2 s). */
  shutdownGraceSeconds?: number
  /** Merged over the generated config (top-level keys). */
  extra?: Record<string, unknown>
  /** How long to wait for the node's API to answer (default 20 s). */
  readyTimeoutMs?: number
}

export interface LabNode {
  name: string
  host: LabHost
  /** http://<node ip>:8480 (reachable from the host through the bridge). */
  apiUrl: string
  configFile: string
  logFile: string
  proc: ChildProcess
  /** Resolves when the process has ended. */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  alive: () => boolean
}

/** The config a lab node runs with (also what `npm run lab` writes; printed paths point at it). */
export function labNodeConfig (lab: Lab, host: LabHost, options: LabNodeOptions = {}): Record<string, unknown> {
  const dir = join(lab.dataDir, host.name)
  return {
    listen: { api: `${host.ip}:${LAB_API_PORT}`, dns: `${host.ip}:${LAB_DNS_PORT}` },
    stateDir: join(dir, 'state'),
    zones: ['zone-a', 'zone-b'],
    subnets: options.subnets ?? [{ id: 'subnet-a', cidr: lab.endpointSubnet, zone: 'zone-a' }],
    workers: options.workers ?? 1,
    log: { level: options.logLevel ?? 'info', format: 'json' },
    limits: { shutdownGraceSeconds: options.shutdownGraceSeconds ?? 2 },
    cluster: {
      nodeId: host.name,
      etcd: { endpoints: lab.etcdEndpoints, prefix: options.prefix ?? '/linkgate/' },
      leaseTtlSeconds: options.leaseTtlSeconds ?? 3,
      interface: 'eth0'
    },
    ...options.extra
  }
}

/** Starts `linkgate start` in the host's namespace and waits until its API answers /healthz. */
export async function startLabNode (lab: Lab, host: LabHost, options: LabNodeOptions = {}): Promise<LabNode> {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`)
  const dir = join(lab.dataDir, host.name)
  mkdirSync(dir, { recursive: true })
  const configFile = join(dir, 'config.yaml')
  await writeFile(configFile, stringify(labNodeConfig(lab, host, options)))
  const logFile = join(dir, 'linkgate.log')
  const proc = lab.spawnIn(host.ns, process.execPath, [MAIN, 'start', '--config', configFile], { logFile })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal }))
  })
  const alive = (): boolean => proc.exitCode === null && proc.signalCode === null
  const apiUrl = `http://${host.ip}:${LAB_API_PORT}`
  const deadline = Date.now() + (options.readyTimeoutMs ?? 20000)
  for (;;) {
    if (!alive()) throw new Error(`linkgate ${host.name} exited (code ${proc.exitCode}, signal ${proc.signalCode}) before its API answered; log: ${logFile}`)
    try {
      const res = await fetch(`${apiUrl}/healthz`, { signal: AbortSignal.timeout(1000) })
      if (res.ok) break
    } catch {}
    if (Date.now() > deadline) {
      proc.kill('SIGKILL')
      throw new Error(`linkgate ${host.name}: API ${apiUrl} did not answer within ${options.readyTimeoutMs ?? 20000} ms; log: ${logFile}`)
    }
    await sleep(100)
  }
  return { name: host.name, host, apiUrl, configFile, logFile, proc, exited, alive }
}

/** Stops a node: SIGTERM (graceful: IPs released first) or SIGKILL; resolves once it has exited. */
export async function stopLabNode (node: LabNode, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
  if (node.alive()) node.proc.kill(signal)
  await node.exited
}

/**
 * An HTTP responder in the backend namespace on `port` (default 8080): every request gets
 * `hello from backend <path>`. Runs as a child node process; lab.down() kills it.
 */
export async function startLabBackend (lab: Lab, port = LAB_BACKEND_PORT): Promise<ChildProcess> {
  const script = `require('node:http').createServer((q, r) => { r.setHeader('content-type', 'text/plain'); r.end('hello from backend ' + q.url + '\\n') })` +
    `.listen(${port}, ${JSON.stringify(lab.backend.ip)}, () => console.log('listening'))`
  const child = lab.spawnIn(lab.backend.ns, process.execPath, ['-e', script], { logFile: join(lab.dataDir, 'backend.log') })
  const deadline = Date.now() + 10000
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`lab backend exited (code ${child.exitCode}); log: ${join(lab.dataDir, 'backend.log')}`)
    try {
      const res = await fetch(`http://${lab.backend.ip}:${port}/`, { signal: AbortSignal.timeout(1000) })
      if (res.ok) { await res.text(); return child }
    } catch {}
    if (Date.now() > deadline) throw new Error(`lab backend did not answer on ${lab.backend.ip}:${port} within 10 s`)
    await sleep(100)
  }
}

/** One API call to a node (JSON in, JSON out). */
export async function labApi (node: { apiUrl: string }, method: string, path: string, token: string, body?: unknown): Promise<{ status: number, body: any }> {
  const res = await fetch(node.apiUrl + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000)
  })
  const text = await res.text()
  return { status: res.status, body: text === '' ? undefined : JSON.parse(text) }
}

/**
 * A service with the lab backend (TCP servicePort -> terminalPort) and one endpoint in subnet-a,
 * created through `node`'s API. Returns the endpoint's id and IP.
 */
export async function createLabEndpoint (lab: Lab, node: { apiUrl: string }, options: { terminalPort?: number, backendPort?: number, ip?: string } = {}):
Promise<{ serviceId: string, endpointId: string, ip: string, port: number }> {
  const port = options.terminalPort ?? 80
  const svc = await labApi(node, 'POST', '/v1/endpoint-services', PROVIDER_TOKEN, {
    portMappings: [{ protocol: 'TCP', servicePort: options.backendPort ?? LAB_BACKEND_PORT, terminalPort: port }],
    backends: [{ address: lab.backend.ip, zone: 'zone-a' }],
    acceptanceRequired: false,
    allowedAccounts: ['*']
  })
  if (svc.status !== 201) throw new Error(`create service: ${svc.status} ${JSON.stringify(svc.body)}`)
  const ep = await labApi(node, 'POST', '/v1/endpoints', CONSUMER_TOKEN, {
    serviceId: svc.body.id, subnetId: 'subnet-a', ...(options.ip === undefined ? {} : { ip: options.ip })
  })
  if (ep.status !== 201) throw new Error(`create endpoint: ${ep.status} ${JSON.stringify(ep.body)}`)
  return { serviceId: svc.body.id as string, endpointId: ep.body.id as string, ip: ep.body.ip as string, port }
}

/** Endpoint addresses (/32 inside lab.endpointSubnet) on a node's eth0, as the kernel has them. */
export async function endpointAddresses (lab: Lab, host: LabHost): Promise<string[]> {
  const { stdout } = await run('ip', ['-n', host.ns, '-j', 'addr', 'show', 'dev', 'eth0'])
  const links = JSON.parse(stdout) as Array<{ addr_info: Array<{ local: string, prefixlen: number }> }>
  const net = lab.endpointSubnet.split('.').slice(0, 3).join('.') + '.'
  return links.flatMap((l) => l.addr_info).filter((a) => a.prefixlen === 32 && a.local.startsWith(net)).map((a) => a.local)
}

/** ip -> names of the nodes whose eth0 holds it. */
export async function addressHolders (lab: Lab): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>()
  const all = await Promise.all(lab.nodes.map(async (h) => [h.name, await endpointAddresses(lab, h)] as const))
  for (const [name, ips] of all) for (const ip of ips) out.set(ip, [...(out.get(ip) ?? []), name])
  return out
}

/** `curl` from the client namespace; the body, or undefined when it failed (refused, timed out). */
export async function curlFromClient (lab: Lab, url: string, timeoutSeconds = 2): Promise<string | undefined> {
  try {
    const { stdout } = await run('ip', ['netns', 'exec', lab.client.ns, 'curl', '-sS', '--fail', '--max-time', String(timeoutSeconds), url], { timeout: (timeoutSeconds + 2) * 1000 })
    return stdout
  } catch {
    return undefined
  }
}
