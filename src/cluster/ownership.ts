// Endpoint IP ownership in cluster mode (SPEC §12), as MetalLB's layer-2 mode picks a VIP's
// speaker: every node ranks the live nodes for an IP by sha256(node + "#" + ip) and the first
// one claims it. The claim is an etcd transaction `create_revision(<prefix>owners/<ip>) == 0 ->
// put under the claimant's lease`, so however the nodes' views differ, one IP has one owner key.
// An IP stays with its owner while the owner's lease lives (no rebalancing that would cut live
// connections); when the key goes (owner dead, fenced, or released) the IP needs an owner again.
// If the first-ranked node does not claim (its view lags, it is fenced), the k-th ranked node
// claims after k x claimStepMs, so an IP never waits for one node.
//
// Break before make: `onChange` (which adds addresses) hears of an IP only after the claim
// transaction succeeded; a released IP leaves `onChange`'s set before its key is deleted; a
// fence empties the set at once, without waiting for etcd. An IP taken over from another node
// reaches `onChange` only `takeoverGraceMs` after that node's key went: a killed owner's address
// lives until its valid_lft runs out, and the kernel removes it 0.2-0.4 s after that (measured
// on Linux 6.18 with valid_lft 3: gone after 3.20-3.39 s), while etcd may expire the lease a
// little before the owner's last refresh plus TTL.
import { createHash } from 'node:crypto'
import { isIP } from 'node:net'
import { EventEmitter } from 'node:events'
import type { Etcd3 } from 'etcd3'
import type { Membership } from './membership.ts'
import { PrefixMirror } from './prefix-mirror.ts'

export interface OwnershipOptions {
  client: Etcd3
  /** Same prefix as the membership's (`/linkgate/`). */
  prefix: string
  membership: Membership
  /** Called with the full set of IPs this node owns whenever it changes; add/remove addresses here.
   *  Calls never overlap; the set passed last is the truth. */
  onChange: (owned: ReadonlySet<string>) => void | Promise<void>
  /** Delay per rank before a lower-ranked node claims an IP nobody claimed (default 500 ms). */
  claimStepMs?: number
  /** Wait after another node's owner key of an IP went, before adding that IP (default 500 ms). */
  takeoverGraceMs?: number
}

/** Live nodes ordered by preference for one IP (MetalLB: sha256 of node + "#" + ip). */
export function rankNodes (ip: string, nodes: Iterable<string>): string[] {
  const keyed = [...nodes].map((node) => ({ node, h: createHash('sha256').update(`${node}#${ip}`).digest('hex') }))
  keyed.sort((a, b) => a.h < b.h ? -1 : a.h > b.h ? 1 : a.node < b.node ? -1 : 1)
  return keyed.map((k) => k.node)
}

const sameSet = (a: ReadonlySet<string>, b: ReadonlySet<string>): boolean => a.size === b.size && [...a].every((x) => b.has(x))

export class Ownership extends EventEmitter {
  readonly #client: Etcd3
  readonly #ownersPrefix: string
  readonly #membership: Membership
  readonly #onChange: OwnershipOptions['onChange']
  readonly #claimStepMs: number
  readonly #graceMs: number
  /** When another node's owner key of an IP was deleted (for the take-over grace). */
  readonly #freedAt = new Map<string, number>()
  readonly #mirror: PrefixMirror
  #wanted = new Set<string>()
  #owned = new Set<string>()
  /** Epoch of the membership in which #owned was claimed. */
  #ownedEpoch = -1
  #applied: ReadonlySet<string> = new Set()
  /** Revision of our own successful claim, until the mirror has caught up with it. */
  readonly #claimedAt = new Map<string, bigint>()
  readonly #unownedSince = new Map<string, number>()
  #running = false
  #dirty = false
  #timer: NodeJS.Timeout | undefined
  #timerAt = 0
  #closed = false
  #applying: Promise<void> = Promise.resolve()
  readonly #onState = (): void => this.#membershipChanged()
  readonly #onNodes = (): void => this.#kick()

  constructor (options: OwnershipOptions) {
    super()
    this.#client = options.client
    this.#ownersPrefix = `${options.prefix}owners/`
    this.#membership = options.membership
    this.#onChange = options.onChange
    this.#claimStepMs = options.claimStepMs ?? 500
    this.#graceMs = options.takeoverGraceMs ?? 500
    this.#mirror = new PrefixMirror(options.client, this.#ownersPrefix)
    this.#mirror.on('change', (ip: string, entry: unknown, old: { value: string } | undefined) => {
      if (entry === undefined && old !== undefined && old.value !== this.#membership.nodeId) this.#freedAt.set(ip, Date.now())
      this.#kick()
    })
    this.#mirror.on('warning', (err: unknown) => this.emit('warning', err))
  }

  /** IPs this node owns and has handed to onChange. */
  get owned (): ReadonlySet<string> { return this.#applied }

  /** Every IP's owner as etcd says (ip -> nodeId). */
  owners (): Map<string, string> {
    const out = new Map<string, string>()
    for (const [ip, entry] of this.#mirror.entries) out.set(ip, entry.value)
    return out
  }

  async start (): Promise<void> {
    await this.#mirror.start()
    this.#membership.on('state', this.#onState)
    this.#membership.on('nodes', this.#onNodes)
    this.#kick()
  }

  /** The IPs that need an owner (every accepted endpoint IP). Bad addresses are refused, naming them. */
  setWanted (ips: Iterable<string>): void {
    const wanted = new Set<string>()
    for (const ip of ips) {
      if (isIP(ip) === 0) throw new RangeError(`ownership: ${JSON.stringify(ip)} is not an IP address`)
      wanted.add(ip)
    }
    this.#wanted = wanted
    this.#kick()
  }

  /** Drops every owned IP (onChange with an empty set), deletes the owner keys, stops watching.
   *  Call before Membership.stop(), which revokes the lease. */
  async stop (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearTimeout(this.#timer)
    this.#membership.off('state', this.#onState)
    this.#membership.off('nodes', this.#onNodes)
    const owned = [...this.#owned]
    this.#owned.clear()
    await this.#apply()
    const lease = this.#membership.leaseId
    if (lease !== undefined) {
      await Promise.all(owned.map((ip) => this.#deleteOwnKey(ip, lease).catch(() => {})))
    }
    await this.#mirror.close()
  }

  #membershipChanged (): void {
    // Not live (fenced, re-registering): every address goes now, without waiting for the loop.
    if (this.#membership.state !== 'live' || this.#membership.epoch !== this.#ownedEpoch) {
      this.#owned.clear()
      this.#claimedAt.clear()
      void this.#apply()
    }
    this.#kick()
  }

  #kick (): void {
    if (this.#closed) return
    this.#dirty = true
    if (this.#running) return
    this.#running = true
    void (async () => {
      try {
        while (this.#dirty && !this.#closed) {
          this.#dirty = false
          await this.#reconcile()
        }
      } catch (err) {
        this.emit('warning', err)
        this.#schedule(500)
      } finally {
        this.#running = false
      }
    })()
  }

  /** Runs the loop again in `ms` (the earliest of the pending wishes wins). */
  #schedule (ms: number): void {
    if (this.#closed) return
    const at = Date.now() + ms
    if (this.#timer !== undefined && this.#timerAt <= at) return
    clearTimeout(this.#timer)
    this.#timerAt = at
    this.#timer = setTimeout(() => { this.#timer = undefined; this.#kick() }, ms)
  }

  #live (epoch: number): boolean {
    return !this.#closed && this.#membership.state === 'live' && this.#membership.epoch === epoch
  }

  async #reconcile (): Promise<void> {
    const epoch = this.#membership.epoch
    const lease = this.#membership.leaseId
    if (lease === undefined || !this.#live(epoch)) {
      this.#owned.clear()
      await this.#apply()
      return
    }
    if (this.#ownedEpoch !== epoch) { this.#owned.clear(); this.#ownedEpoch = epoch }
    const owners = this.#mirror.entries
    const mirrorRevision = this.#mirror.revision
    // Keys lost (deleted by someone, or not under our lease) and IPs no longer wanted.
    const release: string[] = []
    for (const ip of [...this.#owned]) {
      const entry = owners.get(ip)
      const claimed = this.#claimedAt.get(ip)
      if (claimed !== undefined && mirrorRevision < claimed) continue // the watch has not shown our claim yet
      this.#claimedAt.delete(ip)
      if (entry === undefined || entry.lease !== lease) { this.#owned.delete(ip); continue }
      if (!this.#wanted.has(ip)) { this.#owned.delete(ip); release.push(ip) }
    }
    // A key under our lease that we do not count yet (a claim whose answer was lost).
    for (const [ip, entry] of owners) {
      if (entry.lease === lease && this.#wanted.has(ip) && !this.#owned.has(ip)) this.#owned.add(ip)
      else if (entry.lease === lease && !this.#wanted.has(ip) && !release.includes(ip)) release.push(ip)
    }
    await this.#apply()
    for (const ip of release) await this.#deleteOwnKey(ip, lease).catch((err: unknown) => this.emit('warning', err))

    // IPs without an owner: claim those where we rank first, or whose turn has come.
    const now = Date.now()
    const candidates = new Set(this.#membership.nodes)
    candidates.add(this.#membership.nodeId)
    for (const ip of [...this.#unownedSince.keys()]) if (!this.#wanted.has(ip) || owners.has(ip)) this.#unownedSince.delete(ip)
    let nextDue = Infinity
    let claimed = false
    let failed = false
    for (const ip of this.#wanted) {
      if (owners.has(ip) || this.#owned.has(ip)) continue
      const since = this.#unownedSince.get(ip) ?? now
      this.#unownedSince.set(ip, since)
      const rank = rankNodes(ip, candidates).indexOf(this.#membership.nodeId)
      const due = since + rank * this.#claimStepMs
      if (due > now) { nextDue = Math.min(nextDue, due); continue }
      if (!this.#live(epoch)) return
      try {
        if (await this.#claim(ip, lease, epoch)) claimed = true
      } catch (err) {
        failed = true
        this.emit('warning', err)
      }
    }
    if (claimed && this.#live(epoch)) await this.#apply()
    if (failed) this.#schedule(500)
    else if (nextDue !== Infinity) this.#schedule(Math.max(10, nextDue - Date.now()))
  }

  async #claim (ip: string, lease: string, epoch: number): Promise<boolean> {
    const key = this.#ownersPrefix + ip
    const res = await this.#client.if(key, 'Create', '==', 0)
      .then(this.#client.put(key).value(this.#membership.nodeId).lease(lease))
      .commit()
    if (!res.succeeded) return false
    // A fence during the transaction: the key dies with the old lease; do not add the address.
    if (!this.#live(epoch)) return false
    this.#owned.add(ip)
    this.#claimedAt.set(ip, BigInt(res.header.revision))
    this.#unownedSince.delete(ip)
    return true
  }

  async #deleteOwnKey (ip: string, lease: string): Promise<void> {
    const key = this.#ownersPrefix + ip
    const entry = this.#mirror.entries.get(ip)
    if (entry === undefined || entry.lease !== lease) return
    await this.#client.if(key, 'Mod', '==', entry.modRevision).then(this.#client.delete().key(key)).commit()
  }

  /** Hands the current owned set to onChange if it differs from the last one; calls never overlap. */
  #apply (): Promise<void> {
    this.#applying = this.#applying.then(async () => {
      const next = new Set<string>()
      const now = Date.now()
      let holdUntil = Infinity
      for (const ip of this.#owned) {
        const freed = this.#freedAt.get(ip)
        if (freed !== undefined && freed + this.#graceMs > now) { holdUntil = Math.min(holdUntil, freed + this.#graceMs); continue }
        this.#freedAt.delete(ip)
        next.add(ip)
      }
      if (holdUntil !== Infinity) this.#schedule(holdUntil - now)
      for (const [ip, freed] of this.#freedAt) if (freed + this.#graceMs <= now) this.#freedAt.delete(ip)
      if (sameSet(next, this.#applied)) return
      this.#applied = next
      try {
        await this.#onChange(next)
      } catch (err) {
        this.emit('warning', err)
      }
      this.emit('owned', next)
    })
    return this.#applying
  }
}
