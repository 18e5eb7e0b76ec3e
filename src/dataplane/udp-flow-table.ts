// The UDP flows of one listener (SPEC §5): a flow is one client address:port, found again on
// every datagram, and expired after `udpIdleTimeoutSeconds` of silence in both directions.
//
// Lookup is on the per-datagram hot path (STYLE habit 10), so no string key is built from
// address and port: an IPv4 client is found by one number, `address as uint32 * 65536 + port`
// (at most 2^48, an exact double), parsed from node's dotted-quad `rinfo.address` by a
// char-code loop that allocates nothing. An IPv6 client is found by its address string (node
// hands a fresh one per datagram; hashing it allocates nothing) and then its port.
//
// Idle expiry is a coarse clock, not a timer per flow or per datagram: a datagram only copies
// the table's `tick` into its flow; one unref'd interval per table advances the tick and
// sweeps. This is the periodic-scan design of Linux conntrack's gc worker and nginx's
// `proxy_timeout` without per-packet timer updates.

/** What the table needs of a flow; the proxy's flow object carries these fields. */
export interface FlowEntry {
  readonly address: string
  readonly port: number
  /** IPv4: `ipv4FlowKey(address, port)`; IPv6: -1. Set by `add`. */
  key: number
  /** The table's tick when the flow last saw a datagram, either direction. Set by `add` and `touch`. */
  seen: number
}

export interface FlowTableOptions<F extends FlowEntry> {
  /** Silence after which a flow expires (SPEC §2 `limits.udpIdleTimeoutSeconds`, in ms). */
  readonly idleTimeoutMs: number
  /** Called once per expired flow, after it has left the table. */
  readonly onExpire: (flow: F) => void
}

/** Sweep granularity: an eighth of the timeout, between 10 ms and 1 s. */
const SWEEPS_PER_TIMEOUT = 8
const MIN_SWEEP_MS = 10
const MAX_SWEEP_MS = 1000

/**
 * `a.b.c.d` and a port as one number (`uint32(address) * 65536 + port`), or -1 when `address`
 * is not a dotted quad (IPv6, IPv4-mapped IPv6, garbage).
 */
export function ipv4FlowKey (address: string, port: number): number {
  const len = address.length
  if (len < 7 || len > 15) return -1
  let n = 0
  let octet = 0
  let digits = 0
  let dots = 0
  for (let i = 0; i < len; i++) {
    const c = address.charCodeAt(i)
    if (c === 46) { // '.'
      if (digits === 0 || octet > 255) return -1
      n = n * 256 + octet
      octet = 0
      digits = 0
      dots++
    } else if (c >= 48 && c <= 57 && digits < 3) {
      octet = octet * 10 + (c - 48)
      digits++
    } else {
      return -1
    }
  }
  if (dots !== 3 || digits === 0 || octet > 255) return -1
  return (n * 256 + octet) * 65536 + port
}

export class UdpFlowTable<F extends FlowEntry> {
  /** Advanced by one at every sweep; flows record it on every datagram. */
  tick = 0
  /** Sweep period in ms and the number of whole periods of silence that expire a flow. */
  readonly sweepMs: number
  readonly idleTicks: number
  readonly #v4 = new Map<number, F>()
  readonly #v6 = new Map<string, Map<number, F>>()
  /** Every flow, for sweeping and draining. */
  readonly #all = new Set<F>()
  readonly #onExpire: (flow: F) => void
  #timer: NodeJS.Timeout | null = null

  constructor (options: FlowTableOptions<F>) {
    const timeout = options.idleTimeoutMs
    if (!(timeout > 0)) throw new RangeError(`invalid idleTimeoutMs: ${timeout} (expected > 0)`)
    this.sweepMs = Math.min(MAX_SWEEP_MS, Math.max(MIN_SWEEP_MS, timeout / SWEEPS_PER_TIMEOUT))
    // A flow seen during tick k may have been seen just before tick k+1 began, so it expires at
    // the sweep that starts tick k + idleTicks + 1: never early, at most two sweeps late.
    this.idleTicks = Math.ceil(timeout / this.sweepMs)
    this.#onExpire = options.onExpire
  }

  get size (): number {
    return this.#all.size
  }

  /** The flow of a client, or undefined. Allocates nothing. */
  get (address: string, port: number): F | undefined {
    const key = ipv4FlowKey(address, port)
    if (key >= 0) return this.#v4.get(key)
    const ports = this.#v6.get(address)
    return ports === undefined ? undefined : ports.get(port)
  }

  /** Insert a new flow (its client must not have one) and mark it seen now. */
  add (flow: F): void {
    const key = ipv4FlowKey(flow.address, flow.port)
    flow.key = key
    flow.seen = this.tick
    if (key >= 0) {
      this.#v4.set(key, flow)
    } else {
      let ports = this.#v6.get(flow.address)
      if (ports === undefined) {
        ports = new Map()
        this.#v6.set(flow.address, ports)
      }
      ports.set(flow.port, flow)
    }
    this.#all.add(flow)
    if (this.#timer === null) {
      this.#timer = setInterval(this.#sweep, this.sweepMs)
      this.#timer.unref()
    }
  }

  /** Mark a flow active now (a datagram in either direction). */
  touch (flow: F): void {
    flow.seen = this.tick
  }

  /** Remove a flow; false when it was not in the table (already expired or removed). */
  delete (flow: F): boolean {
    if (!this.#all.delete(flow)) return false
    if (flow.key >= 0) {
      this.#v4.delete(flow.key)
    } else {
      const ports = this.#v6.get(flow.address)
      if (ports !== undefined) {
        ports.delete(flow.port)
        if (ports.size === 0) this.#v6.delete(flow.address)
      }
    }
    return true
  }

  values (): IterableIterator<F> {
    return this.#all.values()
  }

  /** Remove every flow and stop the sweep timer; returns the flows removed. */
  drain (): F[] {
    const flows = [...this.#all]
    this.#all.clear()
    this.#v4.clear()
    this.#v6.clear()
    this.#stop()
    return flows
  }

  /** One sweep, as the timer runs it: advance the clock and expire the flows silent too long. */
  readonly #sweep = (): void => {
    const now = ++this.tick
    const limit = this.idleTicks
    let expired: F[] | undefined
    for (const flow of this.#all) {
      if (now - flow.seen > limit) (expired ??= []).push(flow)
    }
    if (expired !== undefined) {
      for (const flow of expired) {
        // onExpire of an earlier flow may have removed this one (destroy from a callback).
        if (this.delete(flow)) this.#onExpire(flow)
      }
    }
    if (this.#all.size === 0) this.#stop()
  }

  #stop (): void {
    if (this.#timer !== null) {
      clearInterval(this.#timer)
      this.#timer = null
    }
  }
}
