// Ajv compiled once per schema; errors turned into "path.to[2].field: what is wrong (got X)".
import { isIP } from 'node:net'
import AjvModule, { type ErrorObject, type ValidateFunction } from 'ajv'
import type { TSchema } from '@sinclair/typebox'
import { invalidParameter } from '../errors.ts'

// ajv is CommonJS; under NodeNext its default export arrives as the module object.
const Ajv = AjvModule as unknown as typeof AjvModule.default

export function isCidr (value: string): boolean {
  const slash = value.indexOf('/')
  if (slash < 0) return false
  const addr = value.slice(0, slash)
  const bits = value.slice(slash + 1)
  if (!/^\d{1,3}$/.test(bits)) return false
  const family = isIP(addr)
  if (family === 0) return false
  const n = Number(bits)
  return family === 4 ? n <= 32 : n <= 128
}

/** `host:port` or `[v6]:port`, port 0–65535 (0 = any free port, for tests). */
export function parseHostPort (value: string): { host: string, port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(value)
  if (m === null) return undefined
  const host = m[1] ?? m[2] ?? ''
  const port = Number(m[3])
  if (isIP(host) === 0 || port > 65535) return undefined
  return { host, port }
}

const ajv = new Ajv({ allErrors: true, useDefaults: true, coerceTypes: false, verbose: true, strict: false })
ajv.addFormat('ip', (v: string) => isIP(v) !== 0)
ajv.addFormat('cidr', isCidr)
ajv.addFormat('hostport', (v: string) => parseHostPort(v) !== undefined)
ajv.addFormat('dns-suffix', (v: string) =>
  v.length <= 200 && /^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(v))

const compiled = new WeakMap<TSchema, ValidateFunction>()

function compile (schema: TSchema): ValidateFunction {
  let fn = compiled.get(schema)
  if (fn === undefined) {
    fn = ajv.compile(schema)
    compiled.set(schema, fn)
  }
  return fn
}

/** `/portMappings/2/terminalPort` → `portMappings[2].terminalPort`, led by `prefix`. */
export function jsonPointerToPath (prefix: string, pointer: string): string {
  let out = prefix
  for (const raw of pointer.split('/').slice(1)) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~')
    if (/^\d+$/.test(part)) out += `[${part}]`
    else out += out === '' ? part : `.${part}`
  }
  return out
}

function show (value: unknown): string {
  const text = JSON.stringify(value)
  if (text === undefined) return String(value)
  return text.length > 60 ? `${text.slice(0, 57)}...` : text
}

const formatHints: Record<string, string> = {
  ip: 'an IPv4 or IPv6 address literal',
  cidr: 'a CIDR such as 10.0.0.0/24',
  hostport: 'host:port such as 127.0.0.1:8480 or [::1]:8480',
  'dns-suffix': 'a lowercase DNS name such as privatelink.internal'
}

function describe (prefix: string, e: ErrorObject): string {
  const params = e.params as Record<string, unknown>
  const at = (extra?: string): string => {
    const p = jsonPointerToPath(prefix, e.instancePath)
    if (extra === undefined) return p === '' ? 'body' : p
    return p === '' ? extra : `${p}.${extra}`
  }
  switch (e.keyword) {
    case 'additionalProperties':
      return `${at(String(params.additionalProperty))}: unknown field`
    case 'required':
      return `${at(String(params.missingProperty))}: is required`
    case 'enum':
      return `${at()}: must be one of ${(params.allowedValues as unknown[]).join(', ')} (got ${show(e.data)})`
    case 'format':
      return `${at()}: must be ${formatHints[String(params.format)] ?? String(params.format)} (got ${show(e.data)})`
    case 'pattern':
      return `${at()}: must match ${String(params.pattern)} (got ${show(e.data)})`
    case 'type':
      return `${at()}: must be ${String(params.type)} (got ${show(e.data)})`
    default:
      return `${at()}: ${e.message ?? 'is invalid'}${typeof e.data === 'object' ? '' : ` (got ${show(e.data)})`}`
  }
}

/** Validate `value` (defaults are filled in place); return one message per problem. */
export function check (schema: TSchema, value: unknown, prefix = ''): string[] {
  const fn = compile(schema)
  if (fn(value)) return []
  const seen = new Set<string>()
  for (const e of fn.errors ?? []) seen.add(describe(prefix, e))
  return [...seen]
}

/** Validate an API body or parameter; throws InvalidParameter naming every bad field. */
export function validate<T> (schema: TSchema, value: unknown, prefix = ''): T {
  if (value === undefined || value === null) {
    throw invalidParameter(`${prefix === '' ? 'body' : prefix}: is required (a JSON object)`)
  }
  const errors = check(schema, value, prefix)
  if (errors.length > 0) throw invalidParameter(errors.join('; '))
  return value as T
}
