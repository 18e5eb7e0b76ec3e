// List pagination (SPEC §10): every list route takes `?limit=` (1–1000, default 100) and
// `?nextToken=`; the answer is `{"items": [...], "nextToken": "..."}`, without `nextToken` on
// the last page. The token is opaque to clients: base64url of `v1.` + the last key of the page
// (an id, or a position for lists inside one resource). Pages follow key order, so a resource
// created or deleted while a client pages through shifts nothing it has not seen yet.
import { invalidParameter } from '../errors.ts'

export const DEFAULT_LIMIT = 100
export const MAX_LIMIT = 1000
const TOKEN_PREFIX = 'v1.'
const KEY = /^[\x21-\x7e]{1,200}$/

export interface PageRequest {
  readonly limit: number
  /** The last key of the previous page. */
  readonly after: string | undefined
}

export interface Page<T> {
  items: T[]
  nextToken?: string
}

const one = (value: unknown): unknown => (Array.isArray(value) ? value[value.length - 1] : value)

/** `?limit=&nextToken=` of a request (fastify's parsed query), validated. */
export function parsePageRequest (query: unknown): PageRequest {
  const q = (query !== null && typeof query === 'object' ? query : {}) as Record<string, unknown>
  let limit = DEFAULT_LIMIT
  const rawLimit = one(q.limit)
  if (rawLimit !== undefined) {
    const text = String(rawLimit)
    if (!/^[0-9]{1,7}$/.test(text) || Number(text) < 1 || Number(text) > MAX_LIMIT) {
      throw invalidParameter(`limit: must be an integer from 1 to ${MAX_LIMIT} (got ${JSON.stringify(text.slice(0, 32))})`)
    }
    limit = Number(text)
  }
  const rawToken = one(q.nextToken)
  if (rawToken === undefined) return { limit, after: undefined }
  return { limit, after: decodeToken(String(rawToken)) }
}

export function encodeToken (key: string): string {
  return Buffer.from(TOKEN_PREFIX + key, 'utf8').toString('base64url')
}

function decodeToken (token: string): string {
  const bad = (): never => {
    throw invalidParameter('nextToken: not a token this API issued (pass the nextToken of the previous answer unchanged)')
  }
  if (!/^[A-Za-z0-9_-]{1,400}$/.test(token)) return bad()
  const text = Buffer.from(token, 'base64url').toString('utf8')
  if (!text.startsWith(TOKEN_PREFIX)) return bad()
  const key = text.slice(TOKEN_PREFIX.length)
  if (!KEY.test(key) || encodeToken(key) !== token) return bad()
  return key
}

/**
 * A page from `keys`, which holds up to `limit + 1` keys in order after the cursor: the extra one
 * only says that there is more.
 */
export function pageOf<T> (keys: readonly string[], limit: number, item: (key: string) => T | undefined): Page<T> {
  const items: T[] = []
  for (const key of keys.slice(0, limit)) {
    const value = item(key)
    if (value !== undefined) items.push(value)
  }
  const last = keys[limit - 1]
  return keys.length > limit && last !== undefined ? { items, nextToken: encodeToken(last) } : { items }
}

/**
 * Up to `n` keys after `after`, in order and without duplicates, from several ordered sources
 * (e.g. a caller's own services and those that allow it).
 */
export function mergeSources (sources: ReadonlyArray<(after: string | undefined, n: number) => readonly string[]>, after: string | undefined, n: number): string[] {
  const all = new Set<string>()
  for (const source of sources) for (const key of source(after, n)) all.add(key)
  return [...all].sort().slice(0, n)
}

/** A position in a list inside one resource, as a page key. */
export function offsetOf (after: string | undefined): number {
  if (after === undefined) return 0
  if (!/^[0-9]{1,9}$/.test(after)) throw invalidParameter('nextToken: not a token of this list (pass the nextToken of the previous answer unchanged)')
  return Number(after)
}
