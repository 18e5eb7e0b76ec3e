// The process-wide connection budget (SPEC §10): `limits.maxConnections` live TCP connections
// plus UDP flows over all endpoints. A TCP connection holds two descriptors (client and backend
// socket), a UDP flow one; the budget is sized so that 1,024 descriptors stay free for the API,
// DNS, health checks and the state store whatever the data plane does:
// `max(64, floor((RLIMIT_NOFILE soft - 1024) / 2))`.
//
// The counter is a tiny class on purpose: with data-plane workers (SPEC §11) the same two
// methods can sit on a SharedArrayBuffer slot with Atomics.add / Atomics.sub, and no caller changes.
import { readFileSync } from 'node:fs'

/** Descriptors kept back for everything that is not a proxied connection. */
export const RESERVED_DESCRIPTORS = 1024
/** Descriptors a budget unit may take: a TCP pair is two sockets. */
export const DESCRIPTORS_PER_CONNECTION = 2
export const MIN_MAX_CONNECTIONS = 64

export class ConnectionBudget {
  readonly limit: number
  #active = 0

  constructor (limit: number) {
    if (!(limit > 0)) throw new RangeError(`invalid connection budget: ${limit} (expected > 0)`)
    this.limit = limit
  }

  get active (): number {
    return this.#active
  }

  /** Take one slot; false when `limit` are taken (the caller refuses with reason "overload"). */
  tryAcquire (): boolean {
    if (this.#active >= this.limit) return false
    this.#active++
    return true
  }

  release (): void {
    if (this.#active > 0) this.#active--
  }
}

/** A budget that never refuses (embedding, unit tests). */
export function unlimitedBudget (): ConnectionBudget {
  return new ConnectionBudget(Number.POSITIVE_INFINITY)
}

/**
 * The soft RLIMIT_NOFILE of this process, from /proc/self/limits ("Max open files"), or
 * undefined where that file does not exist (not Linux) or says "unlimited".
 */
export function softOpenFileLimit (limitsText?: string): number | undefined {
  let text = limitsText
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'latin1')
    } catch {
      return undefined
    }
  }
  const match = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text)
  if (match === null) return undefined
  const soft = Number(match[1])
  return Number.isSafeInteger(soft) && soft > 0 ? soft : undefined
}

export function defaultMaxConnections (softLimit: number): number {
  return Math.max(MIN_MAX_CONNECTIONS, Math.floor((softLimit - RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION))
}

/**
 * `limits.maxConnections` for this process: the configured value if the open-file limit can
 * carry it, else the derived default. Throws a message naming both numbers when an explicit
 * value needs more descriptors than the soft limit allows.
 */
export function resolveMaxConnections (configured: number | undefined, softLimit: number | undefined): number {
  if (softLimit === undefined) return configured ?? defaultMaxConnections(65536)
  if (configured === undefined) return defaultMaxConnections(softLimit)
  const needed = DESCRIPTORS_PER_CONNECTION * configured + RESERVED_DESCRIPTORS
  if (needed > softLimit) {
    throw new RangeError(
      `limits.maxConnections: ${configured} needs ${needed} open files (2 per connection + ${RESERVED_DESCRIPTORS} reserved), ` +
      `but the open-file limit (RLIMIT_NOFILE soft) is ${softLimit}; raise the limit (ulimit -n ${needed}) ` +
      `or set at most ${Math.floor((softLimit - RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION)}`)
  }
  return configured
}
