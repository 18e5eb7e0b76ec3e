// Node membership in cluster mode (SPEC §12): the node registers `<prefix>nodes/<nodeId>` under
// a lease of `leaseTtlSeconds`, keeps the lease alive, and mirrors the live node set from a watch.
//
// Fencing runs on the node's OWN clock: etcd3 emits `lost` only after ~2 x TTL without contact,
// far too late, because by then etcd has expired the lease and another node may own our IPs.
// The lease at etcd lives at least TTL past the moment etcd processed our last keepalive, which
// is after we SENT it; so "TTL since the send time of the last answered keepalive" is a deadline
// that etcd's expiry cannot precede (clock rates assumed equal). We fence `fenceMarginMs` before
// it, to leave time to remove addresses. A new etcd leader even gives leases their full TTL again
// (etcd #9395), which only moves etcd's expiry later.
//
// After a fence the node revokes its old lease as soon as etcd answers (that deletes its old
// owner keys), then registers again under a new lease: a new epoch.
import { EventEmitter } from 'node:events'
import { performance } from 'node:perf_hooks'
import type { Etcd3, Lease } from 'etcd3'
import { PrefixMirror } from './prefix-mirror.ts'

/** idle -> registering -> live -> fenced -> registering -> live ...; any -> stopped. */
export type MembershipState = 'idle' | 'registering' | 'live' | 'fenced' | 'stopped'

export interface MembershipOptions {
  client: Etcd3
  /** Key prefix of the cluster, e.g. `/linkgate/` (must start and end with `/`). */
  prefix: string
  nodeId: string
  leaseTtlSeconds: number
  /** Fence this long before the lease could expire at etcd (default 250 ms). */
  fenceMarginMs?: number
  /** How long `start()` waits for a previous incarnation's registration to expire (default 2 x TTL + 2 s). */
  staleWaitMs?: number
}

export const NODE_ID_PATTERN = /^[a-z0-9-]{1,32}$/

export function validateClusterBasics (o: { prefix: string, nodeId: string, leaseTtlSeconds: number }): void {
  if (!NODE_ID_PATTERN.test(o.nodeId)) throw new RangeError(`cluster.nodeId: ${JSON.stringify(o.nodeId)} must match [a-z0-9-]{1,32}`)
  if (!Number.isInteger(o.leaseTtlSeconds) || o.leaseTtlSeconds < 2 || o.leaseTtlSeconds > 30) {
    throw new RangeError(`cluster.leaseTtlSeconds: ${o.leaseTtlSeconds} (expected an integer 2..30)`)
  }
  if (!/^\/(?:[A-Za-z0-9._-]+\/)*$/.test(o.prefix)) {
    throw new RangeError(`cluster.etcd.prefix: ${JSON.stringify(o.prefix)} must start and end with "/" (e.g. "/linkgate/")`)
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

export class Membership extends EventEmitter {
  readonly #client: Etcd3
  readonly #nodeId: string
  readonly #ttlMs: number
  readonly #ttl: number
  readonly #fenceMarginMs: number
  readonly #staleWaitMs: number
  readonly #nodeKey: string
  readonly #mirror: PrefixMirror
  #state: MembershipState = 'idle'
  #lease: Lease | undefined
  #leaseId: string | undefined
  #epoch = 0
  #nodes = new Set<string>()
  /** Send times of keepalives not yet answered, oldest first (one stream answers in order). */
  #fired: number[] = []
  #lastOkSentAt = 0
  #fenceTimer: NodeJS.Timeout | undefined
  /** Leases of earlier epochs still to revoke once etcd answers. */
  #stale: Lease[] = []
  #recovering: Promise<void> | undefined

  constructor (options: MembershipOptions) {
    super()
    validateClusterBasics(options)
    this.#client = options.client
    this.#nodeId = options.nodeId
    this.#ttl = options.leaseTtlSeconds
    this.#ttlMs = options.leaseTtlSeconds * 1000
    this.#fenceMarginMs = options.fenceMarginMs ?? 250
    this.#staleWaitMs = options.staleWaitMs ?? 2 * this.#ttlMs + 2000
    this.#nodeKey = `${options.prefix}nodes/${options.nodeId}`
    this.#mirror = new PrefixMirror(options.client, `${options.prefix}nodes/`)
    this.#mirror.on('change', (name: string, entry: unknown) => {
      // Our registration deleted under us (an operator's `etcdctl del`): the lease may live on,
      // but the others no longer count us. Fence, which revokes the lease, and register again.
      if (name === this.#nodeId && entry === undefined && this.#state === 'live') this.#fence('registration key deleted')
      this.#updateNodes()
    })
    this.#mirror.on('warning', (err: unknown) => this.emit('warning', err))
  }

  get nodeId (): string { return this.#nodeId }
  get state (): MembershipState { return this.#state }
  /** The lease of the current epoch while live (decimal string), else undefined. */
  get leaseId (): string | undefined { return this.#state === 'live' ? this.#leaseId : undefined }
  /** Increases at every registration; ownership uses it to drop claims of an earlier epoch. */
  get epoch (): number { return this.#epoch }
  /** Live nodes as etcd sees them (registrations whose lease is alive). */
  get nodes (): ReadonlySet<string> { return this.#nodes }

  /** Registers the node; rejects if etcd is unreachable or another live node uses this nodeId. */
  async start (): Promise<void> {
    if (this.#state !== 'idle') throw new Error(`membership: start() in state ${this.#state}`)
    this.#setState('registering')
    try {
      await this.#mirror.start()
      await this.#waitForStaleRegistration(this.#staleWaitMs)
      await this.#register()
    } catch (err) {
      if (this.#is('registering')) this.#setState('idle')
      await this.#mirror.close()
      throw err
    }
  }

  /** Graceful stop: revokes the lease, which deletes the registration and every owner key under it.
   *  Remove the node's addresses before calling this (break before make). */
  async stop (): Promise<void> {
    if (this.#state === 'stopped') return
    this.#setState('stopped')
    clearTimeout(this.#fenceTimer)
    const leases = [...this.#stale, ...(this.#lease === undefined ? [] : [this.#lease])]
    this.#stale = []
    this.#lease = undefined
    await Promise.all(leases.map((lease) => lease.revoke().catch(() => lease.release())))
    await this.#mirror.close()
  }

  async #waitForStaleRegistration (waitMs: number): Promise<void> {
    if (!this.#mirror.entries.has(this.#nodeId)) return
    const deadline = Date.now() + waitMs
    while (this.#mirror.entries.has(this.#nodeId)) {
      if (this.#state === 'stopped') return
      if (Date.now() >= deadline) {
        throw new Error(`cluster.nodeId: node ${this.#nodeId} is registered by a live node (key ${this.#nodeKey} still held after ` +
          `${waitMs} ms); give each node its own nodeId`)
      }
      await sleep(100)
    }
  }

  async #register (): Promise<void> {
    const sentAt = performance.now()
    const lease = this.#client.lease(this.#ttl)
    lease.on('lost', (err: Error) => { if (lease === this.#lease) this.#fence(`lease lost: ${err.message}`) })
    lease.on('keepaliveEstablished', () => { if (lease === this.#lease) this.#fired = [] })
    // etcd3 types this argument as a response; it is the error (lease.js handleKeepaliveError).
    lease.on('keepaliveFailed', (err: unknown) => {
      if (lease !== this.#lease) return
      this.#fired = []
      this.emit('warning', new Error(`lease keepalive failed: ${err instanceof Error ? err.message : String(err)}`))
    })
    lease.on('keepaliveFired', () => {
      if (lease !== this.#lease) return
      this.#fired.push(performance.now())
      if (this.#fired.length > 64) this.#fired.shift()
    })
    lease.on('keepaliveSucceeded', () => {
      if (lease !== this.#lease) return
      // Shift even while registering: the first keepalive is often answered before the
      // registration txn, and a skipped answer would shift every later one by an interval.
      const sent = this.#fired.shift()
      if (sent !== undefined && sent > this.#lastOkSentAt) this.#lastOkSentAt = sent
      if (this.#state !== 'live') return
      this.#armFence()
      this.emit('renewed')
    })
    this.#lease = lease
    let leaseId: string
    try {
      leaseId = String(await lease.grant())
      const value = JSON.stringify({ nodeId: this.#nodeId, lease: leaseId })
      const res = await this.#client.if(this.#nodeKey, 'Create', '==', 0)
        .then(this.#client.put(this.#nodeKey).value(value).lease(leaseId))
        .commit()
      if (!res.succeeded) throw new Error(`cluster.nodeId: node ${this.#nodeId} is registered by a live node (${this.#nodeKey} exists)`)
    } catch (err) {
      this.#lease = undefined
      await lease.revoke().catch(() => lease.release())
      throw err
    }
    if (this.#state === 'stopped') { await lease.revoke().catch(() => lease.release()); return }
    this.#leaseId = leaseId
    this.#lastOkSentAt = sentAt
    this.#epoch++
    this.#setState('live')
    this.#armFence()
    this.#updateNodes()
  }

  #armFence (): void {
    clearTimeout(this.#fenceTimer)
    const deadline = this.#lastOkSentAt + this.#ttlMs - this.#fenceMarginMs
    this.#fenceTimer = setTimeout(() => this.#fence(`no keepalive answered for ${this.#ttl} s`), Math.max(0, deadline - performance.now()))
  }

  #fence (reason: string): void {
    if (this.#state !== 'live') return
    clearTimeout(this.#fenceTimer)
    const lease = this.#lease
    this.#lease = undefined
    this.#leaseId = undefined
    if (lease !== undefined) { lease.release(); this.#stale.push(lease) }
    this.emit('warning', new Error(`fenced: ${reason}`))
    this.#setState('fenced')
    this.#updateNodes()
    this.#recovering ??= this.#recover().finally(() => { this.#recovering = undefined })
  }

  /** After a fence: revoke the old lease(s) once etcd answers, then register again. */
  async #recover (): Promise<void> {
    while (this.#state === 'fenced') {
      try {
        while (this.#stale.length > 0) {
          await (this.#stale[0] as Lease).revoke()
          this.#stale.shift()
        }
        if (this.#state !== 'fenced') return
        this.#setState('registering')
        await this.#waitForStaleRegistration(this.#staleWaitMs)
        await this.#register()
      } catch (err) {
        if (this.#is('registering')) this.#setState('fenced')
        this.emit('warning', err)
        await sleep(1000)
      }
    }
  }

  #updateNodes (): void {
    const nodes = new Set<string>()
    for (const name of this.#mirror.entries.keys()) if (NODE_ID_PATTERN.test(name)) nodes.add(name)
    // Our own registration counts only while we hold it; a fenced node claims nothing.
    if (this.#state === 'live') nodes.add(this.#nodeId)
    else nodes.delete(this.#nodeId)
    if (nodes.size === this.#nodes.size && [...nodes].every((n) => this.#nodes.has(n))) return
    this.#nodes = nodes
    this.emit('nodes', nodes)
  }

  /** A call, so that TypeScript does not narrow #state across awaits. */
  #is (state: MembershipState): boolean { return this.#state === state }

  #setState (state: MembershipState): void {
    if (this.#state === state) return
    this.#state = state
    this.emit('state', state)
  }
}
