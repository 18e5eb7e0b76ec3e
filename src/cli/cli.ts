// `linkgate get|create|patch|delete|accept|reject|allow|disallow|backends ...` (SPEC §14): a client
// of the control API on the same binary, so each console step of the seeds is one short command.
// Exit codes: 0 done; 1 the API refused (printed as `Code: message`) or could not be reached;
// 2 a usage error (printed with the usage).
import { readFile, stat } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { parse as parseYaml } from 'yaml'
import { ApiClient, ApiError, TransportError } from './api-client.ts'
import { escapeControls, table, type Cell } from './table.ts'

export const DEFAULT_API = 'http://127.0.0.1:8480'

export const CLI_USAGE = `control API client (--api URL or LINKGATE_API, default ${DEFAULT_API}; --token or LINKGATE_TOKEN):
  linkgate get services|endpoints|connections [ID]       connections: ID is a service id (default: all yours)
  linkgate get backends|allowed-accounts SERVICE_ID
  linkgate get available-services [NAME]
  linkgate create service -f FILE|-                       YAML or JSON, the fields of POST /v1/endpoint-services
  linkgate create service --port TERMINAL:SERVICE[/udp]... [--name NAME] [--backend ADDRESS@ZONE[:WEIGHT]]...
                          [--allow ACCOUNT_ID]... [--acceptance-required]
  linkgate create endpoint --service ID|SERVICENAME --subnet ID [--ip IP] [--no-private-dns]   (or -f FILE|-)
  linkgate patch service|endpoint ID -f FILE|-            a JSON merge patch
  linkgate delete service|endpoint ID
  linkgate accept|reject SERVICE_ID ENDPOINT_ID
  linkgate allow|disallow SERVICE_ID ACCOUNT_ID           ACCOUNT_ID: 12 digits, or '*'
  linkgate backends add SERVICE_ID ADDRESS --zone ZONE [--weight N]
  linkgate backends remove SERVICE_ID BACKEND_ID
  linkgate backends set-weight SERVICE_ID BACKEND_ID WEIGHT
  linkgate backends set-zone SERVICE_ID BACKEND_ID ZONE
  linkgate backends replace SERVICE_ID -f FILE|-          the whole backend list
options: -o table|json|id|jsonpath={.FIELD}   table (default), the API's JSON, only the ids,
         or one field per resource as kubectl's jsonpath prints it: -o jsonpath={.ip}, {.dnsNames[0]}
         --request-timeout SECONDS   per request, the answer's body included (default 30)`

export const CLI_VERBS: ReadonlySet<string> = new Set(['get', 'create', 'patch', 'delete', 'accept', 'reject', 'allow', 'disallow', 'backends'])

export interface CliIo {
  readonly stdout: (text: string) => void
  readonly stderr: (text: string) => void
  readonly readStdin: () => Promise<string>
  readonly env: NodeJS.ProcessEnv
}

/** A command line that cannot be run: exit 2 with the usage. */
class UsageError extends Error {}

const usage = (message: string): UsageError => new UsageError(message)

/** A file for `-f` is a few KiB; refuse to read a disk image by mistake. */
const MAX_INPUT_BYTES = 16 << 20

const OPTIONS = {
  api: { type: 'string' },
  token: { type: 'string' },
  output: { type: 'string', short: 'o' },
  filename: { type: 'string', short: 'f' },
  name: { type: 'string' },
  port: { type: 'string', multiple: true },
  backend: { type: 'string', multiple: true },
  allow: { type: 'string', multiple: true },
  'acceptance-required': { type: 'boolean' },
  service: { type: 'string' },
  subnet: { type: 'string' },
  ip: { type: 'string' },
  'no-private-dns': { type: 'boolean' },
  zone: { type: 'string' },
  weight: { type: 'string' },
  'request-timeout': { type: 'string' },
  help: { type: 'boolean', short: 'h' }
} as const

type Values = { -readonly [K in keyof typeof OPTIONS]?: (typeof OPTIONS)[K] extends { multiple: true } ? string[] : (typeof OPTIONS)[K] extends { type: 'boolean' } ? boolean : string }
type Output = 'table' | 'json' | 'id' | { readonly path: ReadonlyArray<string | number> }

const GLOBAL = new Set(['api', 'token', 'output', 'help', 'request-timeout'])

interface Ctx {
  readonly client: ApiClient
  readonly output: Output
  readonly values: Values
  readonly io: CliIo
}

/**
 * One path segment. `.` and `..` are refused: URL parsing would resolve them, so
 * `backends remove SVC ..` would become DELETE /v1/endpoint-services/SVC, the whole service.
 */
function seg (value: string): string {
  if (value === '.' || value === '..' || value === '') throw usage(`${JSON.stringify(value)} is not an id`)
  return encodeURIComponent(value)
}

// ---- what the API answers, as far as the tables need it ----
interface PortMapping { protocol: string, servicePort: number, terminalPort: number }
interface BackendView { id: string, address: string, zone: string, weight: number, health?: string }
interface ServiceView {
  id: string, name?: string, serviceName: string, status: string, acceptanceRequired: boolean,
  portMappings: PortMapping[], backends: BackendView[], allowedAccounts: string[]
}
interface EndpointView { id: string, serviceId: string, status: string, statusReason?: string, ip: string, zone: string, dnsNames: string[] }
interface ConnectionView { id: string, serviceId?: string, ownerAccountId: string, status: string, ip: string, zone: string }
interface AvailableView { id: string, serviceName: string, ownerAccountId: string, acceptanceRequired: boolean, portMappings: PortMapping[], zones: string[] }

const ports = (mappings: readonly PortMapping[]): string =>
  mappings.map((m) => `${m.terminalPort}->${m.servicePort}/${m.protocol.toLowerCase()}`).join(',')

const serviceTable = (items: readonly ServiceView[]): string => table(
  ['ID', 'NAME', 'SERVICE NAME', 'STATUS', 'ACCEPTANCE', 'PORTS', 'HEALTHY', 'ALLOWED'],
  items.map((s) => [
    s.id, s.name, s.serviceName, s.status, s.acceptanceRequired ? 'required' : 'automatic', ports(s.portMappings),
    `${s.backends.filter((b) => b.health !== 'unhealthy').length}/${s.backends.length}`, s.allowedAccounts.join(',')
  ]))

const backendTable = (items: readonly BackendView[]): string =>
  table(['ID', 'ADDRESS', 'ZONE', 'WEIGHT', 'HEALTH'], items.map((b) => [b.id, b.address, b.zone, b.weight, b.health]))

const endpointTable = (items: readonly EndpointView[]): string => {
  const reasons = items.some((e) => e.statusReason !== undefined)
  return table(
    ['ID', 'SERVICE', 'STATUS', 'IP', 'ZONE', 'DNS NAME', ...(reasons ? ['REASON'] : [])],
    items.map((e) => [e.id, e.serviceId, e.status, e.ip, e.zone, e.dnsNames[0], ...(reasons ? [e.statusReason] : [])]))
}

const connectionTable = (items: readonly ConnectionView[]): string =>
  table(['SERVICE', 'ENDPOINT', 'OWNER', 'STATUS', 'IP', 'ZONE'], items.map((c) => [c.serviceId, c.id, c.ownerAccountId, c.status, c.ip, c.zone]))

const availableTable = (items: readonly AvailableView[]): string => table(
  ['ID', 'SERVICE NAME', 'OWNER', 'ACCEPTANCE', 'PORTS', 'ZONES'],
  items.map((s) => [s.id, s.serviceName, s.ownerAccountId, s.acceptanceRequired ? 'required' : 'automatic', ports(s.portMappings), s.zones.join(',')]))

const accountTable = (items: readonly string[]): string => table(['ACCOUNT'], items.map((a): Cell[] => [a]))

/** `{.dnsNames[0]}` → ['dnsNames', 0]: the plain field paths of kubectl's jsonpath, nothing more. */
function parseJsonPath (text: string): Output {
  const m = /^\{((?:\.[A-Za-z_][A-Za-z0-9_-]*(?:\[\d{1,6}\])*)+)\}$/.exec(text)
  if (m === null) throw usage(`-o jsonpath=${text}: expected a field path such as {.ip} or {.dnsNames[0]}`)
  const path: Array<string | number> = []
  for (const part of (m[1] as string).matchAll(/\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]/g)) {
    path.push(part[1] !== undefined ? part[1] : Number(part[2]))
  }
  return { path }
}

function pick (value: unknown, path: ReadonlyArray<string | number>): string {
  let at: unknown = value
  for (const key of path) at = at !== null && typeof at === 'object' ? (at as Record<string | number, unknown>)[key] : undefined
  if (at === undefined || at === null) return ''
  // One line per resource: a value never moves the terminal's cursor or adds a line.
  return escapeControls(typeof at === 'object' ? JSON.stringify(at) : String(at))
}

/**
 * What JSON.stringify leaves raw but a terminal acts on (DEL, C1, bidi controls); its C0
 * escapes are already \u00XX, and the newlines it adds are layout. \uXXXX is valid JSON for the same value.
 */
const JSON_CONTROL = /[\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g

/** Prints one answer in the chosen form; `ids` says what `-o id` prints. */
function show<T> (ctx: Ctx, answer: T, render: (a: T) => string, ids: (a: T) => readonly string[]): void {
  const out = ctx.output
  if (out === 'json') {
    ctx.io.stdout(JSON.stringify(answer, null, 2).replace(JSON_CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`) + '\n')
    return
  }
  let text: string
  try {
    // The tables read fields a linkgate always sends; another server's answer may lack them.
    text = out === 'id' ? ids(answer).map((id) => escapeControls(String(id)) + '\n').join('') : out === 'table' ? render(answer) : ''
  } catch (err) {
    if (!(err instanceof TypeError)) throw err
    throw new TransportError('the answer does not have the shape of a linkgate resource; is --api a linkgate control API?')
  }
  if (out === 'id' || out === 'table') ctx.io.stdout(text)
  else {
    // A list prints one line per item, a single resource one line.
    const items = (answer as { items?: unknown }).items
    const each = Array.isArray(items) ? items : [answer]
    ctx.io.stdout(each.map((item) => pick(item, out.path) + '\n').join(''))
  }
}

const showService = (ctx: Ctx, s: ServiceView): void => show(ctx, s,
  (x) => serviceTable([x]) + (x.backends.length > 0 ? '\n' + backendTable(x.backends) : ''), (x) => [x.id])

const showList = <T>(ctx: Ctx, items: T[], render: (a: T[]) => string, id: (a: T) => string): void =>
  show(ctx, { items }, (x) => render(x.items), (x) => x.items.map(id))

/** Positionals of a verb: exactly `names`, then up to `optional` more. */
function args (positionals: readonly string[], names: readonly string[], optional: readonly string[] = []): string[] {
  const all = [...names, ...optional]
  if (positionals.length < names.length) throw usage(`missing ${names.slice(positionals.length).join(' ')}`)
  if (positionals.length > all.length) throw usage(`unexpected argument ${JSON.stringify(positionals[all.length])}`)
  for (const [i, value] of positionals.entries()) {
    if (value === '') throw usage(`${all[i] as string} must not be empty`)
  }
  return [...positionals]
}

/** Refuses options the verb does not take, so a typo never silently changes nothing. */
function only (values: Values, allowed: readonly string[], verb: string): void {
  for (const [key, value] of Object.entries(values)) {
    if (value === undefined || GLOBAL.has(key) || allowed.includes(key)) continue
    throw usage(`${verb} does not take --${key}`)
  }
}

async function readInput (io: CliIo, file: string): Promise<unknown> {
  let text: string
  if (file === '-') {
    text = await io.readStdin()
  } else {
    const info = await stat(file).catch((err: NodeJS.ErrnoException) => { throw usage(`${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`) })
    if (!info.isFile()) throw usage(`${file}: not a regular file`)
    if (info.size > MAX_INPUT_BYTES) throw usage(`${file}: ${info.size} bytes, more than ${MAX_INPUT_BYTES}`)
    text = await readFile(file, 'utf8')
  }
  const where = file === '-' ? 'standard input' : file
  let value: unknown
  try {
    value = parseYaml(text, { maxAliasCount: 100 })
  } catch (err) {
    throw usage(`${where}: not valid YAML or JSON: ${(err as Error).message.split('\n')[0] ?? ''}`)
  }
  if (value === null || value === undefined) throw usage(`${where}: empty`)
  return value
}

function parsePort (text: string): PortMapping {
  // docker's -p form: the port linkgate listens on (terminal) first, then the backend's (service).
  const m = /^(\d{1,5})(?::(\d{1,5}))?(?:\/(tcp|udp))?$/i.exec(text)
  if (m === null) throw usage(`--port ${JSON.stringify(text)}: expected TERMINAL:SERVICE[/udp], e.g. 9000:17007 or 5353:53/udp`)
  const terminalPort = Number(m[1])
  return { protocol: (m[3] ?? 'tcp').toUpperCase(), terminalPort, servicePort: m[2] === undefined ? terminalPort : Number(m[2]) }
}

function parseBackend (text: string): { address: string, zone: string, weight?: number } {
  const at = text.lastIndexOf('@')
  const m = at < 1 ? null : /^([^:@]+)(?::(\d{1,3}))?$/.exec(text.slice(at + 1))
  if (m === null) throw usage(`--backend ${JSON.stringify(text)}: expected ADDRESS@ZONE[:WEIGHT], e.g. 10.0.0.5@zone-a:50`)
  return { address: text.slice(0, at), zone: m[1] as string, ...(m[2] === undefined ? {} : { weight: Number(m[2]) }) }
}

function parseWeight (text: string, what: string): number {
  if (!/^\d{1,3}$/.test(text)) throw usage(`${what} ${JSON.stringify(text)}: expected a whole number 0-100`)
  return Number(text)
}

// ---- verbs ----

async function get (ctx: Ctx, positionals: string[]): Promise<void> {
  only(ctx.values, [], 'get')
  const [kind, ...rest] = positionals
  const c = ctx.client
  switch (kind) {
    case 'service': case 'services': {
      const [id] = args(rest, [], ['ID'])
      if (id === undefined) showList(ctx, await c.list('/v1/endpoint-services') as ServiceView[], serviceTable, (s) => s.id)
      else showService(ctx, await c.request('GET', `/v1/endpoint-services/${seg(id)}`) as ServiceView)
      return
    }
    case 'endpoint': case 'endpoints': {
      const [id] = args(rest, [], ['ID'])
      if (id === undefined) showList(ctx, await c.list('/v1/endpoints') as EndpointView[], endpointTable, (e) => e.id)
      else show(ctx, await c.request('GET', `/v1/endpoints/${seg(id)}`) as EndpointView, (e) => endpointTable([e]), (e) => [e.id])
      return
    }
    case 'connection': case 'connections': {
      const [serviceId] = args(rest, [], ['SERVICE_ID'])
      if (serviceId !== undefined) {
        const items = await c.list(`/v1/endpoint-services/${seg(serviceId)}/connections`) as ConnectionView[]
        show(ctx, { items }, (x) => connectionTable(x.items.map((i) => ({ ...i, serviceId }))), (x) => x.items.map((i) => i.id))
        return
      }
      // Every service of the caller, each connection marked with its service.
      const all: ConnectionView[] = []
      for (const s of await c.list('/v1/endpoint-services') as ServiceView[]) {
        for (const conn of await c.list(`/v1/endpoint-services/${seg(s.id)}/connections`) as ConnectionView[]) all.push({ serviceId: s.id, ...conn })
      }
      showList(ctx, all, connectionTable, (x) => x.id)
      return
    }
    case 'backend': case 'backends': {
      const [serviceId] = args(rest, ['SERVICE_ID'])
      const svc = await c.request('GET', `/v1/endpoint-services/${seg(serviceId as string)}`) as ServiceView
      showList(ctx, svc.backends, backendTable, (b) => b.id)
      return
    }
    case 'allowed-account': case 'allowed-accounts': {
      const [serviceId] = args(rest, ['SERVICE_ID'])
      showList(ctx, await c.list(`/v1/endpoint-services/${seg(serviceId as string)}/allowed-accounts`, 'string') as string[], accountTable, (a) => a)
      return
    }
    case 'available-service': case 'available-services': {
      const [name] = args(rest, [], ['NAME'])
      const path = name === undefined ? '/v1/available-services' : `/v1/available-services?name=${seg(name)}`
      showList(ctx, await c.list(path) as AvailableView[], availableTable, (s) => s.id)
      return
    }
    default:
      throw usage(kind === undefined ? 'get needs what to get' : `get: unknown kind ${JSON.stringify(kind)}`)
  }
}

/** `--service` is an id, a full serviceName, or a short name the caller can see exactly once. */
async function serviceRef (ctx: Ctx, ref: string): Promise<{ serviceId: string } | { serviceName: string }> {
  if (/^vpcesvc-[0-9a-f]{12}$/.test(ref)) return { serviceId: ref }
  if (ref.includes('.')) return { serviceName: ref }
  const found = await ctx.client.list(`/v1/available-services?name=${seg(ref)}`) as AvailableView[]
  if (found.length === 1) return { serviceId: (found[0] as AvailableView).id }
  if (found.length === 0) throw new ApiError('NotFound', `service: no service named ${JSON.stringify(ref)} is available to this account`, 404)
  throw usage(`--service ${JSON.stringify(ref)}: ${found.length} services carry that name (${found.map((s) => s.id).join(', ')}); pass an id`)
}

async function create (ctx: Ctx, positionals: string[]): Promise<void> {
  const [kind, ...rest] = positionals
  const v = ctx.values
  const c = ctx.client
  if (kind === 'service') {
    args(rest, [])
    only(v, ['filename', 'name', 'port', 'backend', 'allow', 'acceptance-required'], 'create service')
    let body: unknown
    if (v.filename !== undefined) {
      if (v.name !== undefined || v.port !== undefined || v.backend !== undefined || v.allow !== undefined || v['acceptance-required'] !== undefined) {
        throw usage('create service takes either -f FILE or --port/--name/--backend/--allow flags, not both')
      }
      body = await readInput(ctx.io, v.filename)
    } else {
      if (v.port === undefined) throw usage('create service needs -f FILE or at least one --port TERMINAL:SERVICE')
      body = {
        ...(v.name === undefined ? {} : { name: v.name }),
        ...(v['acceptance-required'] === true ? { acceptanceRequired: true } : {}),
        portMappings: v.port.map(parsePort),
        ...(v.backend === undefined ? {} : { backends: v.backend.map(parseBackend) }),
        ...(v.allow === undefined ? {} : { allowedAccounts: v.allow })
      }
    }
    showService(ctx, await c.request('POST', '/v1/endpoint-services', body) as ServiceView)
    return
  }
  if (kind === 'endpoint') {
    args(rest, [])
    only(v, ['filename', 'service', 'subnet', 'ip', 'no-private-dns'], 'create endpoint')
    let body: unknown
    if (v.filename !== undefined) {
      if (v.service !== undefined || v.subnet !== undefined || v.ip !== undefined || v['no-private-dns'] !== undefined) {
        throw usage('create endpoint takes either -f FILE or --service/--subnet flags, not both')
      }
      body = await readInput(ctx.io, v.filename)
    } else {
      if (v.service === undefined || v.service === '') throw usage('create endpoint needs --service ID|SERVICENAME')
      if (v.subnet === undefined || v.subnet === '') throw usage('create endpoint needs --subnet ID')
      body = {
        ...await serviceRef(ctx, v.service),
        subnetId: v.subnet,
        ...(v.ip === undefined ? {} : { ip: v.ip }),
        ...(v['no-private-dns'] === true ? { privateDns: false } : {})
      }
    }
    const ep = await c.request('POST', '/v1/endpoints', body) as EndpointView
    show(ctx, ep, (e) => endpointTable([e]), (e) => [e.id])
    return
  }
  throw usage(kind === undefined ? 'create needs service or endpoint' : `create: unknown kind ${JSON.stringify(kind)} (service or endpoint)`)
}

async function patch (ctx: Ctx, positionals: string[]): Promise<void> {
  only(ctx.values, ['filename'], 'patch')
  const [kind, ...rest] = positionals
  if (kind !== 'service' && kind !== 'endpoint') throw usage(kind === undefined ? 'patch needs service or endpoint' : `patch: unknown kind ${JSON.stringify(kind)}`)
  const [id] = args(rest, ['ID'])
  if (ctx.values.filename === undefined) throw usage(`patch ${kind} needs -f FILE|-`)
  const body = await readInput(ctx.io, ctx.values.filename)
  if (kind === 'service') {
    showService(ctx, await ctx.client.request('PATCH', `/v1/endpoint-services/${seg(id as string)}`, body) as ServiceView)
  } else {
    show(ctx, await ctx.client.request('PATCH', `/v1/endpoints/${seg(id as string)}`, body) as EndpointView, (e) => endpointTable([e]), (e) => [e.id])
  }
}

/** A change that answers 204: say what was done (nothing with -o json, the API said nothing). */
function done (ctx: Ctx, id: string, what: string): void {
  if (ctx.output === 'id') ctx.io.stdout(id + '\n')
  else if (ctx.output !== 'json') ctx.io.stdout(what + '\n')
}

async function remove (ctx: Ctx, positionals: string[]): Promise<void> {
  only(ctx.values, [], 'delete')
  const [kind, ...rest] = positionals
  if (kind !== 'service' && kind !== 'endpoint') throw usage(kind === undefined ? 'delete needs service or endpoint' : `delete: unknown kind ${JSON.stringify(kind)}`)
  const [id] = args(rest, ['ID'])
  await ctx.client.request('DELETE', kind === 'service' ? `/v1/endpoint-services/${seg(id as string)}` : `/v1/endpoints/${seg(id as string)}`)
  done(ctx, id as string, `${kind} ${id as string} deleted`)
}

async function decide (ctx: Ctx, positionals: string[], decision: 'accept' | 'reject'): Promise<void> {
  only(ctx.values, [], decision)
  const [serviceId, endpointId] = args(positionals, ['SERVICE_ID', 'ENDPOINT_ID']) as [string, string]
  const conn = await ctx.client.request('POST', `/v1/endpoint-services/${seg(serviceId)}/connections/${seg(endpointId)}/${decision}`) as ConnectionView
  show(ctx, conn, (x) => connectionTable([{ ...x, serviceId }]), (x) => [x.id])
}

async function allow (ctx: Ctx, positionals: string[], add: boolean): Promise<void> {
  only(ctx.values, [], add ? 'allow' : 'disallow')
  const [serviceId, accountId] = args(positionals, ['SERVICE_ID', 'ACCOUNT_ID']) as [string, string]
  const path = `/v1/endpoint-services/${seg(serviceId)}/allowed-accounts`
  if (add) {
    const answer = await ctx.client.request('POST', path, { accountId }) as { items: string[] }
    show(ctx, answer, (x) => accountTable(x.items), (x) => x.items)
  } else {
    await ctx.client.request('DELETE', `${path}/${seg(accountId)}`)
    done(ctx, accountId, `account ${accountId} no longer allowed on ${serviceId}`)
  }
}

async function backends (ctx: Ctx, positionals: string[]): Promise<void> {
  const [action, ...rest] = positionals
  const v = ctx.values
  const c = ctx.client
  const showBackend = (b: BackendView): void => show(ctx, b, (x) => backendTable([x]), (x) => [x.id])
  switch (action) {
    case 'add': {
      only(v, ['zone', 'weight'], 'backends add')
      const [serviceId, address] = args(rest, ['SERVICE_ID', 'ADDRESS']) as [string, string]
      if (v.zone === undefined || v.zone === '') throw usage('backends add needs --zone ZONE')
      const body = { address, zone: v.zone, ...(v.weight === undefined ? {} : { weight: parseWeight(v.weight, '--weight') }) }
      showBackend(await c.request('POST', `/v1/endpoint-services/${seg(serviceId)}/backends`, body) as BackendView)
      return
    }
    case 'remove': {
      only(v, [], 'backends remove')
      const [serviceId, backendId] = args(rest, ['SERVICE_ID', 'BACKEND_ID']) as [string, string]
      await c.request('DELETE', `/v1/endpoint-services/${seg(serviceId)}/backends/${seg(backendId)}`)
      done(ctx, backendId, `backend ${backendId} removed from ${serviceId}`)
      return
    }
    case 'set-weight': case 'set-zone': {
      only(v, [], `backends ${action}`)
      const last = action === 'set-weight' ? 'WEIGHT' : 'ZONE'
      const [serviceId, backendId, value] = args(rest, ['SERVICE_ID', 'BACKEND_ID', last]) as [string, string, string]
      const body = action === 'set-weight' ? { weight: parseWeight(value, 'WEIGHT') } : { zone: value }
      showBackend(await c.request('PATCH', `/v1/endpoint-services/${seg(serviceId)}/backends/${seg(backendId)}`, body) as BackendView)
      return
    }
    case 'replace': {
      only(v, ['filename'], 'backends replace')
      const [serviceId] = args(rest, ['SERVICE_ID']) as [string]
      if (v.filename === undefined) throw usage('backends replace needs -f FILE|-')
      const answer = await c.request('PUT', `/v1/endpoint-services/${seg(serviceId)}/backends`, await readInput(ctx.io, v.filename)) as { items: BackendView[] }
      show(ctx, answer, (x) => backendTable(x.items), (x) => x.items.map((b) => b.id))
      return
    }
    default:
      throw usage(action === undefined ? 'backends needs add, remove, set-weight, set-zone or replace' : `backends: unknown action ${JSON.stringify(action)}`)
  }
}

async function dispatch (ctx: Ctx, verb: string, positionals: string[]): Promise<void> {
  switch (verb) {
    case 'get': return get(ctx, positionals)
    case 'create': return create(ctx, positionals)
    case 'patch': return patch(ctx, positionals)
    case 'delete': return remove(ctx, positionals)
    case 'accept': return decide(ctx, positionals, 'accept')
    case 'reject': return decide(ctx, positionals, 'reject')
    case 'allow': return allow(ctx, positionals, true)
    case 'disallow': return allow(ctx, positionals, false)
    case 'backends': return backends(ctx, positionals)
    default: throw usage(`unknown command ${JSON.stringify(verb)}`)
  }
}

/** Runs one CLI command; resolves with the exit code. Never throws. */
export async function runCli (argv: readonly string[], io: CliIo): Promise<number> {
  try {
    let parsed: { values: Values, positionals: string[] }
    try {
      parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true }) as { values: Values, positionals: string[] }
    } catch (err) {
      throw usage((err as Error).message)
    }
    const { values, positionals } = parsed
    const [verb, ...rest] = positionals
    if (values.help === true) { io.stdout(CLI_USAGE + '\n'); return 0 }
    const o = values.output ?? 'table'
    let output: Output
    if (o === 'table' || o === 'json' || o === 'id') output = o
    else if (o.startsWith('jsonpath=')) output = parseJsonPath(o.slice('jsonpath='.length))
    else throw usage(`-o ${JSON.stringify(o)}: expected table, json, id or jsonpath={.FIELD}`)
    const api = values.api ?? (io.env.LINKGATE_API || undefined) ?? DEFAULT_API
    let url: URL
    try { url = new URL(api) } catch { throw usage(`--api ${JSON.stringify(api)}: not a URL (e.g. ${DEFAULT_API})`) }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw usage(`--api ${JSON.stringify(api)}: expected an http:// or https:// URL`)
    const token = values.token ?? io.env.LINKGATE_TOKEN ?? ''
    if (token === '') throw usage('no token: pass --token TOKEN or set LINKGATE_TOKEN')
    if (/[\r\n]/.test(token)) throw usage('--token: must be one line')
    let timeoutMs: number | undefined
    if (values['request-timeout'] !== undefined) {
      const seconds = Number(values['request-timeout'])
      if (!/^\d+(\.\d+)?$/.test(values['request-timeout']) || seconds <= 0 || seconds > 3600) {
        throw usage(`--request-timeout ${JSON.stringify(values['request-timeout'])}: expected seconds, more than 0 and at most 3600`)
      }
      timeoutMs = Math.round(seconds * 1000)
    }
    const client = new ApiClient({ api: url.href, token, ...(timeoutMs === undefined ? {} : { timeoutMs }) })
    await dispatch({ client, output, values, io }, verb ?? '', rest)
    return 0
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`linkgate: ${err.message}\n${CLI_USAGE}\n`)
      return 2
    }
    if (err instanceof ApiError) {
      io.stderr(`${printable(err.code)}: ${printable(err.message)}\n`)
      return 1
    }
    if (err instanceof TransportError) {
      io.stderr(`linkgate: ${printable(err.message)}\n`)
      return 1
    }
    io.stderr(`linkgate: ${printable(err instanceof Error ? err.message : String(err))}\n`)
    return 1
  }
}

/**
 * Text from the server, made safe for a terminal: control characters (ESC sequences that would
 * retitle, clear or recolour the terminal, CR, BEL) are shown as \uXXXX escapes.
 */
function printable (text: string): string {
  return escapeControls(text)
}

/** The process's own streams and environment. */
let pipeWatched = false
export const processIo: CliIo = {
  stdout: (text) => {
    // `linkgate get ... | head`: a reader that went away is the end of the output, not a crash.
    if (!pipeWatched) {
      pipeWatched = true
      process.stdout.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0)
        throw err
      })
    }
    process.stdout.write(text)
  },
  stderr: (text) => { process.stderr.write(text) },
  env: process.env,
  async readStdin () {
    const chunks: Buffer[] = []
    let size = 0
    for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
      size += chunk.length
      if (size > MAX_INPUT_BYTES) throw usage(`standard input: more than ${MAX_INPUT_BYTES} bytes`)
      chunks.push(chunk)
    }
    return Buffer.concat(chunks).toString('utf8')
  }
}
