// Exact limits over every data-plane worker (SPEC §11): `limits.maxConnections` and
// `maxConnectionsPerEndpoint` are counters in one SharedArrayBuffer that every worker updates
// with Atomics (compare-and-swap, so no worker ever admits past a limit and no message travels
// per connection).
//
// Layout: Int32 slot 0 is the process-wide budget, slots 1..ENDPOINT_SLOTS are endpoints (the
// main thread gives each endpoint a slot and sends it along with the endpoint). Each worker also
// keeps its own share of every slot in a second buffer that only it writes: when a worker dies,
// the main thread takes that share back out of the shared counts, so a crash leaks no capacity.
import { ConnectionBudget } from '../connection-budget.ts'

export const ENDPOINT_SLOTS = 65536
const SLOT_COUNT = ENDPOINT_SLOTS + 1
export const BUDGET_SLOT = 0

export function allocateCounters (): SharedArrayBuffer {
  return new SharedArrayBuffer(SLOT_COUNT * Int32Array.BYTES_PER_ELEMENT)
}

/** Take one unit of `slot` unless `limit` are taken; exact under concurrency (CAS loop). */
function tryTake (shared: Int32Array, own: Int32Array, slot: number, limit: number): boolean {
  for (;;) {
    const current = Atomics.load(shared, slot)
    if (current >= limit) return false
    if (Atomics.compareExchange(shared, slot, current, current + 1) === current) break
  }
  Atomics.add(own, slot, 1)
  return true
}

function give (shared: Int32Array, own: Int32Array, slot: number): void {
  // Never below zero: a unit this worker does not hold is not given back.
  if (Atomics.load(own, slot) <= 0) return
  Atomics.sub(own, slot, 1)
  Atomics.sub(shared, slot, 1)
}

/** One worker's face of the shared counters. */
export class SharedCounters {
  readonly shared: Int32Array
  readonly own: Int32Array

  constructor (shared: SharedArrayBuffer, own: SharedArrayBuffer) {
    this.shared = new Int32Array(shared)
    this.own = new Int32Array(own)
  }

  /** The per-endpoint counter of `slot` (1..ENDPOINT_SLOTS). */
  endpoint (slot: number): EndpointCounter {
    if (!(Number.isInteger(slot) && slot >= 1 && slot <= ENDPOINT_SLOTS)) throw new RangeError(`invalid endpoint slot ${slot}`)
    return new EndpointCounter(this, slot)
  }
}

export class EndpointCounter {
  readonly #counters: SharedCounters
  readonly #slot: number

  constructor (counters: SharedCounters, slot: number) {
    this.#counters = counters
    this.#slot = slot
  }

  get active (): number {
    return Atomics.load(this.#counters.shared, this.#slot)
  }

  tryAcquire (limit: number): boolean {
    return tryTake(this.#counters.shared, this.#counters.own, this.#slot, limit)
  }

  release (): void {
    give(this.#counters.shared, this.#counters.own, this.#slot)
  }
}

/** `limits.maxConnections` over every worker, with ConnectionBudget's face (the callers do not change). */
export class SharedBudget extends ConnectionBudget {
  readonly #counters: SharedCounters

  constructor (limit: number, counters: SharedCounters) {
    super(limit)
    this.#counters = counters
  }

  override get active (): number {
    return Atomics.load(this.#counters.shared, BUDGET_SLOT)
  }

  override tryAcquire (): boolean {
    return tryTake(this.#counters.shared, this.#counters.own, BUDGET_SLOT, this.limit)
  }

  override release (): void {
    give(this.#counters.shared, this.#counters.own, BUDGET_SLOT)
  }
}

/** Main thread: a dead worker's share leaves the shared counts, and its buffer is zeroed for its successor. */
export function reclaimShare (shared: SharedArrayBuffer, own: SharedArrayBuffer): number {
  const s = new Int32Array(shared)
  const o = new Int32Array(own)
  let total = 0
  for (let i = 0; i < o.length; i++) {
    const n = o[i] as number
    if (n === 0) continue
    Atomics.sub(s, i, n)
    o[i] = 0
    total += n
  }
  return total
}

/**
 * Main thread: endpoint id -> slot. A freed slot goes to the back of the queue and is reused
 * only once every never-used slot is taken, so a late release of a deleted endpoint's last
 * connection practically never lands on a new endpoint's count.
 */
export class SlotTable {
  readonly #byId = new Map<string, number>()
  readonly #free: number[] = []
  #next = 1
  readonly #shared: Int32Array

  constructor (shared: SharedArrayBuffer) {
    this.#shared = new Int32Array(shared)
  }

  get (id: string): number | undefined {
    return this.#byId.get(id)
  }

  assign (id: string): number {
    let slot = this.#byId.get(id)
    if (slot !== undefined) return slot
    if (this.#next <= ENDPOINT_SLOTS) slot = this.#next++
    else slot = this.#free.shift()
    if (slot === undefined) throw new RangeError(`more than ${ENDPOINT_SLOTS} endpoints: no counter slot left`)
    Atomics.store(this.#shared, slot, 0)
    this.#byId.set(id, slot)
    return slot
  }

  free (id: string): void {
    const slot = this.#byId.get(id)
    if (slot === undefined) return
    this.#byId.delete(id)
    this.#free.push(slot)
  }

  entries (): Array<[string, number]> {
    return [...this.#byId]
  }
}
