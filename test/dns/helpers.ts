// Helpers for the DNS tests: a DnsServer on a real Store, endpoints written through
// store.transact with ChangeEvents, real queries over UDP/TCP (encoded and decoded with dns2, an
// independent codec), and the real `dig`.
import { execFile, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import dgram from 'node:dgram'
import { mkdtemp, rm } from 'node:fs/promises'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import dns2 from 'dns2'
import pino from 'pino'
import { Registry } from 'prom-client'
import { buildConfig } from '../../src/config/load-config.ts'
import type { Endpoint, EndpointStatus, State } from '../../src/control/model.ts'
import type { Config } from '../../src/control/schemas.ts'
import type { Store } from '../../src/control/store.ts'
import { SqliteStore } from '../../src/control/store-sqlite.ts'
import { DnsServer, type DnsServerOptions } from '../../src/dns/server.ts'
import { createMetrics, type Metrics } from '../../src/metrics/metrics.ts'

const { Packet } = dns2
export { Packet }
export type DecodedPacket = InstanceType<typeof Packet>

const execFileAsync = promisify(execFile)

/** The part of a tap Test these helpers use. */
export interface TestLike {
  teardown (fn: () => unknown): void
  fail (message: string): unknown
  plan (n: number, comment?: string): void
}

export const SERVICE_ID = 'vpcesvc-0123456789ab'

export function makeEndpoint (fields: Partial<Endpoint> & { id: string, ip: string }): Endpoint {
  return {
    serviceId: SERVICE_ID,
    serviceName: `local-1.${SERVICE_ID}`,
    ownerAccountId: '100000000002',
    subnetId: 'subnet-a',
    zone: 'zone-a',
    privateDns: true,
    allowedSources: ['0.0.0.0/0', '::/0'],
    status: 'accepted',
    dnsNames: [],
    createdAt: new Date().toISOString(),
    ...fields
  }
}

/** A State for the pure tests. */
export function stateOf (...endpoints: Endpoint[]): State {
  return { services: {}, endpoints: Object.fromEntries(endpoints.map((e) => [e.id, e])) }
}

export function regionalName (ep: Pick<Endpoint, 'id' | 'serviceId'>, config: Pick<Config, 'region' | 'dns'>): string {
  return `${ep.id}.${ep.serviceId}.${config.region}.${config.dns.suffix}`
}

export function zonalName (ep: Pick<Endpoint, 'id' | 'serviceId' | 'zone'>, config: Pick<Config, 'region' | 'dns'>): string {
  return `${ep.id}-${ep.zone}.${ep.serviceId}.${config.region}.${config.dns.suffix}`
}

export async function putEndpoint (store: Store, ep: Endpoint, action: 'created' | 'updated' = 'created'): Promise<void> {
  await store.transact((draft) => {
    draft.endpoints[ep.id] = ep
    return undefined
  })
}

export async function setStatus (store: Store, id: string, status: EndpointStatus): Promise<void> {
  await store.transact((draft) => {
    const ep = draft.endpoints[id]
    if (ep === undefined) throw new Error(`no endpoint ${id}`)
    draft.endpoints[id] = { ...ep, status }
    return undefined
  })
}

export async function deleteEndpoint (store: Store, id: string): Promise<void> {
  await store.transact((draft) => {
    delete draft.endpoints[id]
    return undefined
  })
}

export interface DnsFixture {
  readonly server: DnsServer
  readonly store: Store
  readonly config: Config
  readonly metrics: Metrics
  readonly host: string
  readonly udpPort: number
  readonly tcpPort: number
}

export interface FixtureOptions {
  /** listen.dns host (port 0). */
  readonly host: string
  readonly config?: Record<string, unknown>
  readonly endpoints?: readonly Endpoint[]
  readonly server?: Partial<Pick<DnsServerOptions, 'tcpIdleTimeoutMs' | 'forwardTimeoutMs'>>
}

export async function startDns (t: TestLike, options: FixtureOptions): Promise<DnsFixture> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-dns-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const listen = net.isIPv6(options.host) ? `[${options.host}]:0` : `${options.host}:0`
  const config = buildConfig({ listen: { dns: listen }, ...options.config })
  const store = await SqliteStore.open(dir)
  for (const ep of options.endpoints ?? []) await putEndpoint(store, ep)
  const metrics = createMetrics(new Registry(), { defaultMetrics: false })
  const server = new DnsServer({ config, store, metrics, logger: pino({ level: 'silent' }), ...options.server })
  t.teardown(() => server.close())
  const { udp, tcp } = await server.start()
  return { server, store, config, metrics, host: options.host, udpPort: udp.port, tcpPort: tcp.port }
}

let nextId = 1
export interface QueryOptions {
  id?: number
  rd?: boolean
  /** Add an EDNS OPT (RFC 6891) with this version. */
  ednsVersion?: number
  qclass?: number
}

export function encodeQuery (name: string, type: number, options: QueryOptions = {}): Buffer {
  const packet = new Packet()
  packet.header.id = options.id ?? (nextId++ & 0xffff)
  packet.header.rd = options.rd === false ? 0 : 1
  packet.questions.push(new Packet.Question(name, type, options.qclass ?? Packet.CLASS.IN))
  if (options.ednsVersion !== undefined) {
    packet.additionals.push(Packet.Resource.EDNS([], { version: options.ednsVersion, udpPayloadSize: 1232 }))
  }
  return packet.toBuffer()
}

/** One query over UDP from a fresh socket; undefined when nothing came back in time. */
export function udpExchange (host: string, port: number, query: Buffer, timeoutMs = 2000): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4')
    const timer = setTimeout(() => finish(undefined), timeoutMs)
    const finish = (msg: Buffer | undefined): void => {
      clearTimeout(timer)
      socket.close()
      resolve(msg)
    }
    socket.on('error', () => finish(undefined))
    socket.on('message', (msg) => {
      if (msg.length >= 2 && msg.readUInt16BE(0) === query.readUInt16BE(0)) finish(msg)
    })
    socket.send(query, port, host)
  })
}

/** Write `payload` on a fresh TCP connection and collect `count` framed responses. */
export function tcpExchange (host: string, port: number, payload: Buffer, count: number, timeoutMs = 3000): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port })
    const out: Buffer[] = []
    let buf = Buffer.alloc(0)
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`tcpExchange: ${out.length}/${count} responses after ${timeoutMs} ms`))
    }, timeoutMs)
    socket.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk])
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        out.push(buf.subarray(2, 2 + buf.readUInt16BE(0)))
        buf = buf.subarray(2 + buf.readUInt16BE(0))
      }
      if (out.length >= count) {
        clearTimeout(timer)
        socket.end()
        resolve(out)
      }
    })
    socket.write(payload)
  })
}

export function frame (msg: Buffer): Buffer {
  const len = Buffer.alloc(2)
  len.writeUInt16BE(msg.length)
  return Buffer.concat([len, msg])
}

export async function query (fx: Pick<DnsFixture, 'host' | 'udpPort'>, name: string, type: number, options: QueryOptions = {}): Promise<DecodedPacket> {
  const response = await udpExchange(fx.host, fx.udpPort, encodeQuery(name, type, options))
  if (response === undefined) throw new Error(`no UDP answer for ${name}`)
  return Packet.parse(response)
}

/** Poll until `check` holds for the answer to (name, type), or `withinMs` passes; returns the elapsed time or -1. */
export async function waitForAnswer (
  fx: Pick<DnsFixture, 'host' | 'udpPort'>, name: string, type: number,
  check: (p: DecodedPacket) => boolean, withinMs = 1000
): Promise<number> {
  const start = performance.now()
  for (;;) {
    const p = await query(fx, name, type)
    const elapsed = performance.now() - start
    if (check(p)) return elapsed
    if (elapsed > withinMs) return -1
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** Poll `check` every 10 ms until it holds or `withinMs` passes; returns whether it held. */
export async function eventually (check: () => boolean, withinMs = 1000): Promise<boolean> {
  const deadline = Date.now() + withinMs
  while (!check()) {
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  return true
}

// ---- dig ----

let digChecked: boolean | undefined
const NO_DIG = 'dig is not installed (Debian package bind9-dnsutils; scripts/install-test-tools.sh installs it)'

function haveDig (): boolean {
  digChecked ??= spawnSync('dig', ['-v'], { stdio: 'ignore' }).status === 0
  return digChecked
}

/** Call first in a test: whether dig is usable; when not, fails (CI=true) or skips `t` with the reason. */
export function requireDig (t: TestLike): boolean {
  if (haveDig()) return true
  if (process.env.CI === 'true') t.fail(NO_DIG)
  else t.plan(0, `SKIP: ${NO_DIG}`)
  return false
}

/** For the dig part of a longer test: whether dig is usable; when not, fails (CI=true) or says why it is left out. */
export function digOrComment (t: TestLike & { comment (message: string): void }): boolean {
  if (haveDig()) return true
  if (process.env.CI === 'true') t.fail(NO_DIG)
  else t.comment(`dig checks left out: ${NO_DIG}`)
  return false
}

export interface DigRecord {
  name: string
  ttl: number
  class: string
  type: string
  data: string
}

export interface DigResult {
  status: string
  id: number
  flags: string[]
  answer: DigRecord[]
  authority: DigRecord[]
  additional: DigRecord[]
  output: string
}

function section (lines: string[], title: string): DigRecord[] {
  const start = lines.indexOf(`;; ${title} SECTION:`)
  if (start < 0) return []
  const out: DigRecord[] = []
  for (let i = start + 1; i < lines.length; i++) {
    const line = lines[i] ?? ''
    if (line.trim() === '') break
    const [name = '', ttl = '', cls = '', type = '', ...data] = line.split(/\s+/)
    out.push({ name, ttl: Number(ttl), class: cls, type, data: data.join(' ') })
  }
  return out
}

export async function dig (host: string, port: number, name: string, type = 'A', extra: string[] = []): Promise<DigResult> {
  const args = [`@${host}`, '-p', String(port), name, type, '+time=6', '+tries=1', '+nocookie', ...extra]
  const { stdout } = await execFileAsync('dig', args, { timeout: 20_000 })
  const lines = stdout.split('\n')
  const header = /status: (\w+), id: (\d+)/.exec(stdout)
  const flags = /;; flags: ([a-z ]*);/.exec(stdout)
  if (header === null || flags === null) throw new Error(`dig ${args.join(' ')}: no answer\n${stdout}`)
  return {
    status: header[1] ?? '',
    id: Number(header[2]),
    flags: (flags[1] ?? '').trim().split(/\s+/),
    answer: section(lines, 'ANSWER'),
    authority: section(lines, 'AUTHORITY'),
    additional: section(lines, 'ADDITIONAL'),
    output: stdout
  }
}

/** A loopback address for a test file: 127.23.<file>.<n>, distinct per test. */
export function loopback (file: number, n: number): string {
  return `127.23.${file}.${n}`
}

export const randomEndpointId = (): string => `vpce-${randomBytes(6).toString('hex')}`
