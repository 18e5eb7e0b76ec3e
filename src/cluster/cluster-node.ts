// A node's part in cluster mode (SPEC §12), as app.ts starts it: the etcd client, the etcd
// store, membership (the node's lease and registration) and ownership (which accepted endpoint
// IPs this node owns, fed from the store's change events) and, when `cluster.interface` is set,
// the address actuator that puts owned IPs on that interface. `GET /v1/cluster` and the cluster
// metrics read `items()`. Without a `cluster` section, `singleNodeItems` answers for the node alone.
//
// What the data plane serves (`owns`) is the owned IPs whose address is on the interface (every
// owned IP without an interface): an IP is served only after its claim succeeded AND `ip addr
// replace` put it there, so the listener can bind; an IP that is lost stops being served before
// its address is removed. An address lives leaseTtl - 1 s (as test/fixtures/cluster-node.ts:
// the refresh runs a beat after the keepalive, and a killed owner's address must be gone before
// the next owner's take-over grace ends) and is refreshed at every lease renewal.
import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import type { Etcd3 } from 'etcd3'
import type { Logger } from 'pino'
import { Gauge, type Registry } from 'prom-client'
import { isBindFailure, type State } from '../control/model.ts'
import type { Config } from '../control/schemas.ts'
import { EtcdStore } from '../control/store-etcd.ts'
import { AddressActuator } from './address-actuator.ts'
import { createEtcdClient } from './etcd-client.ts'
import { Membership } from './membership.ts'
import { Ownership } from './ownership.ts'

export type ClusterConfig = NonNullable<Config['cluster']>

/** One live node as `GET /v1/cluster` lists it. */
export interface ClusterNodeItem {
  readonly nodeId: string
  readonly live: true
  readonly ownedIps: string[]
}

/** The endpoint IPs that need a node to serve them: those the data plane listens on (accepted, or failed by a bind and retrying). */
export function acceptedIps (state: State): Set<string> {
  const ips = new Set<string>()
  for (const ep of Object.values(state.endpoints)) if (ep.status === 'accepted' || (ep.status === 'failed' && isBindFailure(ep))) ips.add(ep.ip)
  return ips
}

/** Whether this process may change addresses (CAP_NET_ADMIN, bit 12 of CapEff in /proc/self/status). */
function hasNetAdmin (): boolean {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))
    return m !== null && (BigInt(`0x${m[1] as string}`) & (1n << 12n)) !== 0n
  } catch {
    return true // not Linux's procfs: let `ip` say what is wrong
  }
}

const byAddress = (ips: Iterable<string>): string[] => [...ips].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))

/** A node without a `cluster` section: itself alone, owning every accepted endpoint IP. */
export function singleNodeItems (state: State): ClusterNodeItem[] {
  return [{ nodeId: hostname(), live: true, ownedIps: byAddress(acceptedIps(state)) }]
}

export class ClusterNode {
  readonly nodeId: string
  readonly store: EtcdStore
  readonly #client: Etcd3
  readonly #membership: Membership
  readonly #ownership: Ownership
  readonly #actuator: AddressActuator | undefined
  readonly #logger: Logger
  #unsubscribe: (() => void) | undefined
  /** Owned, as ownership last said (claim succeeded, take-over grace over). */
  #owned: ReadonlySet<string> = new Set()
  /** Owned and on the interface: what the data plane listens on. */
  #served: ReadonlySet<string> = new Set()
  /** Presence checks of added addresses run one at a time. */
  #checking: Promise<void> = Promise.resolve()
  /** Owned IPs whose address was not usable at the last check (logged when it changes). */
  #missing = 0
  #onServed: ((changed: readonly string[]) => void) | undefined
  #releasing: Promise<void> | undefined
  #closing: Promise<void> | undefined

  private constructor (nodeId: string, client: Etcd3, store: EtcdStore, membership: Membership, ownership: Ownership,
    actuator: AddressActuator | undefined, logger: Logger) {
    this.nodeId = nodeId
    this.#client = client
    this.store = store
    this.#membership = membership
    this.#ownership = ownership
    this.#actuator = actuator
    this.#logger = logger
  }

  /** Open the store, clean the interface, register the node, start claiming the accepted endpoint IPs.
   *  `subnets`: the endpoint subnets (CIDRs) whose /32 (/128) addresses on the interface are this node's to manage. */
  static async start (config: ClusterConfig, logger: Logger, subnets: readonly string[] = []): Promise<ClusterNode> {
    const client = createEtcdClient({ endpoints: config.etcd.endpoints })
    const { prefix } = config.etcd
    let store: EtcdStore | undefined
    let membership: Membership | undefined
    let actuator: AddressActuator | undefined
    let node: ClusterNode | undefined
    try {
      if (config.interface !== undefined) {
        const iface = config.interface
        // An owner that cannot add its addresses would hold IPs nobody answers: refuse to start.
        if (!hasNetAdmin()) throw new Error(`cluster.interface ${JSON.stringify(iface)}: adding addresses needs CAP_NET_ADMIN (run as root or grant the capability), or leave cluster.interface out`)
        actuator = new AddressActuator({
          iface,
          lifetimeSeconds: Math.max(1, config.leaseTtlSeconds - 1),
          subnets,
          onWarning: (err) => { logger.warn({ err, interface: iface }, 'cluster.interface') }
        })
        // Nothing is owned yet: a killed predecessor's endpoint addresses go. A missing interface
        // (or no `ip`) stops the start here, naming the field.
        await actuator.start().catch((err: unknown) => { throw new Error(`cluster.interface ${JSON.stringify(iface)}: ${(err as Error).message}`) })
        if (actuator.hasIpv6) {
          await actuator.enableNdiscNotify().catch((err: unknown) => {
            logger.warn({ err, interface: iface }, 'cluster.interface: could not set ndisc_notify; moved IPv6 endpoint IPs are not announced')
          })
        }
      }
      store = await EtcdStore.open(client, { prefix, onWarning: (err) => { logger.warn({ err }, 'etcd store') } })
      membership = new Membership({ client, prefix, nodeId: config.nodeId, leaseTtlSeconds: config.leaseTtlSeconds })
      membership.on('warning', (err: unknown) => { logger.warn({ err }, 'cluster membership') })
      membership.on('state', (state: string) => { logger.info({ nodeId: config.nodeId, state }, 'cluster membership') })
      await membership.start()
      const ownership = new Ownership({
        client,
        prefix,
        membership,
        // As the lab's fixture: a lower-ranked node steps in after 1.5 s per rank, so a slow
        // first-ranked claim on a loaded machine is not beaten by a stand-in (which would keep
        // the IP: no rebalancing). Failover is unaffected: the first-ranked live node claims at once.
        claimStepMs: 1500,
        onChange: async (owned) => {
          logger.info({ owned: owned.size }, 'owned endpoint IPs changed')
          if (node !== undefined) await node.#ownedChanged(owned)
        }
      })
      ownership.on('warning', (err: unknown) => { logger.warn({ err }, 'cluster ownership') })
      node = new ClusterNode(config.nodeId, client, store, membership, ownership, actuator, logger)
      const self = node
      if (actuator !== undefined) {
        const addresses = actuator
        // Every renewal gives the addresses a fresh lifetime; one that could not be added is tried again.
        membership.on('renewed', () => {
          void addresses.refresh().then(() => { if (self.#served.size < self.#owned.size) return self.#checkPresent() })
        })
      }
      await ownership.start()
      const wanted = store
      ownership.setWanted(acceptedIps(wanted.state))
      node.#unsubscribe = store.subscribe((events) => {
        if (events.some((e) => e.kind === 'endpoint')) ownership.setWanted(acceptedIps(wanted.state))
      })
      return node
    } catch (err) {
      await membership?.stop().catch(() => {})
      await actuator?.close().catch(() => {})
      await store?.close().catch(() => {})
      client.close()
      throw err
    }
  }

  /** Whether this node serves `ip` now: it owns it and (with an interface) the address is there. */
  owns (ip: string): boolean { return this.#served.has(ip) }

  /** The IPs `owns` says yes to (for the data-plane workers' snapshot). */
  get served (): ReadonlySet<string> { return this.#served }

  /** Hear which IPs this node started or stopped serving (one listener: the data plane's `servedChanged`). */
  onOwnedChanged (listener: (changed: readonly string[]) => void): void { this.#onServed = listener }

  async #ownedChanged (owned: ReadonlySet<string>): Promise<void> {
    this.#owned = new Set(owned)
    // Break before make on this node too: what is no longer owned stops being served first.
    this.#setServed([...this.#served].filter((ip) => owned.has(ip)))
    if (this.#actuator === undefined) { this.#setServed(owned); return }
    await this.#actuator.set(owned)
    await this.#checkPresent()
  }

  /** Serve the owned IPs whose address is on the interface now (usable: not tentative, not DAD-failed). */
  #checkPresent (): Promise<void> {
    const actuator = this.#actuator
    if (actuator === undefined) return Promise.resolve()
    this.#checking = this.#checking.then(async () => {
      if (this.#releasing !== undefined) return
      let present: Set<string>
      try {
        present = new Set(await actuator.listInterface({ usable: true }))
      } catch (err) {
        this.#logger.warn({ err }, 'cluster.interface: cannot list its addresses')
        return
      }
      // #owned as it is now (it may have shrunk while the list ran).
      const served = [...this.#owned].filter((ip) => present.has(ip))
      const missing = this.#owned.size - served.length
      if (missing > 0 && missing !== this.#missing) {
        this.#logger.info({ missing }, 'owned endpoint IPs not usable on the interface yet (IPv6 DAD, or the add failed): served once they are, checked at each lease renewal')
      }
      this.#missing = missing
      this.#setServed(served)
    })
    return this.#checking
  }

  #setServed (ips: Iterable<string>): void {
    const next = new Set(ips)
    const changed = [...next].filter((ip) => !this.#served.has(ip)).concat([...this.#served].filter((ip) => !next.has(ip)))
    this.#served = next
    if (changed.length > 0 && this.#releasing === undefined) this.#onServed?.(changed)
  }

  /** Live nodes with the IPs each owns, as etcd says. */
  items (): ClusterNodeItem[] {
    const owned = new Map<string, string[]>([...this.#membership.nodes].map((n) => [n, []]))
    for (const [ip, node] of this.#ownership.owners()) owned.get(node)?.push(ip)
    return [...owned].sort(([a], [b]) => (a < b ? -1 : 1)).map(([nodeId, ips]) => ({ nodeId, live: true, ownedIps: byAddress(ips) }))
  }

  /**
   * Graceful stop, first step: remove the addresses, delete the owner keys, revoke the lease, so
   * the other nodes take the IPs over at once. The data plane is not told (it is draining: live
   * connections keep their sockets). The store stays open until `close`. Safe twice.
   */
  release (): Promise<void> {
    this.#releasing ??= (async () => {
      this.#unsubscribe?.()
      await this.#ownership.stop().catch(() => {})
      await this.#actuator?.close().catch(() => {})
      await this.#membership.stop().catch(() => {})
    })()
    return this.#releasing
  }

  /** Release the IPs, leave the cluster (revoke the lease), close the store and the client. Safe twice. */
  close (): Promise<void> {
    this.#closing ??= (async () => {
      await this.release()
      await this.store.close()
      this.#client.close()
    })()
    return this.#closing
  }
}

/** linkgate_cluster_nodes and linkgate_owned_endpoint_ips, computed at scrape time from `items`. */
export function registerClusterMetrics (registry: Registry, nodeId: string, items: () => ClusterNodeItem[]): void {
  new Gauge({
    name: 'linkgate_cluster_nodes',
    help: 'Live cluster nodes this node sees (1 without a cluster section).',
    registers: [registry],
    collect () { this.set(items().length) }
  })
  new Gauge({
    name: 'linkgate_owned_endpoint_ips',
    help: 'Endpoint IPs this node owns and serves.',
    registers: [registry],
    collect () { this.set(items().find((i) => i.nodeId === nodeId)?.ownedIps.length ?? 0) }
  })
}
