// Read the YAML file, fill defaults and validate with the shared schemas (SPEC §2). Every
// problem is reported with its path in the file; after this the config is frozen.
import { readFile } from 'node:fs/promises'
import ipaddr from 'ipaddr.js'
import { parseDocument } from 'yaml'
import { ConfigError } from '../errors.ts'
import { ControlPlane } from '../control/control-plane.ts'
import { deepFreeze } from '../control/model.ts'
import { ConfigSchema, type Config } from '../control/schemas.ts'
import { check } from '../control/validation.ts'

export type { Config }

export async function loadConfigFile (file: string): Promise<Config> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new ConfigError(file, [`cannot read: ${(err as Error).message}`])
  }
  return parseConfig(text, file)
}

export function parseConfig (text: string, file = '<config>'): Config {
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true })
  if (doc.errors.length > 0) {
    throw new ConfigError(file, doc.errors.map((e) => `YAML: ${e.message.split('\n')[0] ?? e.message}`))
  }
  const raw: unknown = doc.toJS() ?? {}
  return resolveConfig(raw, file)
}

/**
 * Defaults + schema + cross-field rules + the declared resources' rules, ALL reported at once
 * (SPEC §10): `check-config` and `start` both come here, so they accept and refuse the same
 * files with the same list. `raw` is modified (defaults filled); the result is frozen.
 */
export function resolveConfig (raw: unknown, file = '<config>'): Config {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError(file, ['(root): must be a mapping of keys (got ' + (Array.isArray(raw) ? 'a list' : typeof raw) + ')'])
  }
  const errors = check(ConfigSchema, raw)
  // `workers` is "auto" or a number: one line instead of one per branch of the union.
  const workerErrors = errors.filter((e) => e.startsWith('workers:'))
  if (workerErrors.length > 0) {
    errors.splice(0, errors.length, ...errors.filter((e) => !e.startsWith('workers:')),
      `workers: must be "auto" or an integer from 1 to 256 (got ${JSON.stringify((raw as Record<string, unknown>).workers)})`)
  }
  // The cross checks run on what the schema passed: a broken item is left out (its error is
  // already listed) and the others are still checked, so one run names every problem.
  const valid = validPart(raw as Record<string, unknown>, errors)
  errors.push(...crossCheck(valid.sparse, valid.brokenSections))
  if (valid.declarable) {
    // zones, subnets and accounts are looked up by id there: no holes.
    const dense = (list: readonly unknown[]): unknown[] => list.filter((x) => x !== undefined)
    const v = valid.sparse
    errors.push(...ControlPlane.checkDeclared({
      ...v, zones: dense(v.zones), subnets: dense(v.subnets), accounts: dense(v.accounts)
    } as Config, valid.brokenServiceIds))
  }
  if (errors.length > 0) throw new ConfigError(file, [...new Set(errors)])
  return deepFreeze(raw as Config)
}

const LISTS = ['zones', 'subnets', 'accounts', 'services', 'endpoints'] as const

/**
 * `raw` without the parts that have schema errors: a list item with an error becomes a hole
 * (indices, and so the paths in messages, stay as in the file); `declarable` is false when a
 * section the declared rules depend on is broken as a whole.
 */
interface ValidPart {
  sparse: Config
  declarable: boolean
  brokenSections: ReadonlySet<string>
  /** Ids of declared services left out for their schema errors: endpoints naming them are not "not found" as well. */
  brokenServiceIds: ReadonlySet<string>
}

function validPart (raw: Record<string, unknown>, errors: readonly string[]): ValidPart {
  const brokenSections = new Set<string>()
  const brokenItems = new Map<string, Set<number>>()
  for (const e of errors) {
    const item = /^([A-Za-z]+)\[(\d+)\]/.exec(e)
    if (item !== null) {
      const set = brokenItems.get(item[1] as string) ?? new Set<number>()
      set.add(Number(item[2]))
      brokenItems.set(item[1] as string, set)
      continue
    }
    const section = /^([A-Za-z]+)[.:]/.exec(e)
    if (section !== null) brokenSections.add(section[1] as string)
  }
  const sparse: Record<string, unknown> = { ...raw }
  for (const key of LISTS) {
    const list = raw[key]
    if (brokenSections.has(key) || !Array.isArray(list)) { sparse[key] = []; continue }
    const bad = brokenItems.get(key)
    const copy: unknown[] = []
    copy.length = list.length
    list.forEach((item, i) => { if (bad === undefined || !bad.has(i)) copy[i] = item })
    sparse[key] = copy
  }
  const brokenServiceIds = new Set<string>()
  const services = raw.services
  if (Array.isArray(services)) {
    for (const i of brokenItems.get('services') ?? []) {
      const id = (services[i] as { id?: unknown } | null)?.id
      if (typeof id === 'string') brokenServiceIds.add(id)
    }
  }
  const needed = ['region', 'dns', 'quotas', 'zones', 'subnets', 'accounts']
  return {
    sparse: sparse as unknown as Config,
    declarable: !needed.some((k) => brokenSections.has(k)),
    brokenSections,
    brokenServiceIds
  }
}

function duplicates<T> (items: readonly T[], key: (item: T) => string, path: (i: number) => string, what: string): string[] {
  const seen = new Map<string, number>()
  const out: string[] = []
  items.forEach((item, i) => {
    const k = key(item)
    const first = seen.get(k)
    if (first === undefined) seen.set(k, i)
    else out.push(`${path(i)}: duplicate ${what} ${JSON.stringify(k)} (first at ${path(first)})`)
  })
  return out
}

/** Rules across fields; a check that leans on a broken section (already named) is skipped. */
function crossCheck (c: Config, broken: ReadonlySet<string>): string[] {
  const errors: string[] = []
  errors.push(...duplicates(c.zones, (z) => z, (i) => `zones[${i}]`, 'zone'))
  errors.push(...duplicates(c.subnets, (s) => s.id, (i) => `subnets[${i}].id`, 'subnet id'))
  errors.push(...duplicates(c.accounts, (a) => a.id, (i) => `accounts[${i}].id`, 'account id'))
  errors.push(...duplicates(c.accounts, (a) => a.token, (i) => `accounts[${i}].token`, 'token'))
  errors.push(...duplicates(c.services, (s) => s.id, (i) => `services[${i}].id`, 'service id'))
  errors.push(...duplicates(c.endpoints, (e) => e.id, (i) => `endpoints[${i}].id`, 'endpoint id'))
  const zones = new Set(c.zones)
  const parsed: Array<[ipaddr.IPv4 | ipaddr.IPv6, number] | undefined> = []
  const configured = c.zones.filter((z) => z !== undefined).join(', ')
  c.subnets.forEach((s, i) => {
    if (!broken.has('zones') && !zones.has(s.zone)) errors.push(`subnets[${i}].zone: unknown zone ${JSON.stringify(s.zone)} (configured: ${configured})`)
    const cidr = ipaddr.parseCIDR(s.cidr)
    const network = ipaddr.IPv4.isIPv4(s.cidr.split('/')[0] ?? '')
      ? ipaddr.IPv4.networkAddressFromCIDR(s.cidr)
      : ipaddr.IPv6.networkAddressFromCIDR(s.cidr)
    if (network.toString() !== cidr[0].toString()) {
      errors.push(`subnets[${i}].cidr: ${s.cidr} has host bits set (did you mean ${network.toString()}/${cidr[1]}?)`)
    }
    for (let j = 0; j < i; j++) {
      const other = parsed[j]
      if (other === undefined || other[0].kind() !== cidr[0].kind()) continue
      if (cidr[0].match(other) || (other[0] as ipaddr.IPv4).match(cidr as [ipaddr.IPv4, number])) {
        errors.push(`subnets[${i}].cidr: ${s.cidr} overlaps subnets[${j}] (${c.subnets[j]?.cidr})`)
      }
    }
    parsed[i] = cidr
  })
  const accounts = new Set(c.accounts.map((a) => a.id))
  c.services.forEach((s, i) => {
    if (!broken.has('accounts') && !accounts.has(s.ownerAccountId)) errors.push(`services[${i}].ownerAccountId: unknown account ${s.ownerAccountId}`)
  })
  c.endpoints.forEach((e, i) => {
    if (!broken.has('accounts') && !accounts.has(e.ownerAccountId)) errors.push(`endpoints[${i}].ownerAccountId: unknown account ${e.ownerAccountId}`)
  })
  return errors
}

/** A full config from a partial one: for tests and embedding. */
export function buildConfig (partial: Record<string, unknown> = {}): Config {
  return resolveConfig(structuredClone(partial))
}
