// A node's part in cluster mode (SPEC §12), as app.ts starts it: the etcd client, the etcd
// store, membership (the node's lease and registration) and ownership (which accepted endpoint
// IPs this node owns, fed from the store's change events). `GET /v1/cluster` and the cluster
// metrics read `items()`. Without a `cluster` section, `singleNodeItems` answers for the node alone.
import { hostname } from 'node:os'
import type { Etcd3 } from 'etcd3'
import type { Logger } from 'pino'
import { Gauge, type Registry } from 'prom-client'
import { isBindFailure, type State } from '../control/model.ts'
import type { Config } from '../control/schemas.ts'
import { EtcdStore } from '../control/store-etcd.ts'
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
  #unsubscribe: (() => void) | undefined
  #owned: ReadonlySet<string> = new Set()
  #onOwned: ((changed: readonly string[]) => void) | undefined
  #closing: Promise<void> | undefined

  private constructor (nodeId: string, client: Etcd3, store: EtcdStore, membership: Membership, ownership: Ownership) {
    this.nodeId = nodeId
    this.#client = client
    this.store = store
    this.#membership = membership
    this.#ownership = ownership
  }

  /** Open the store, register the node, start claiming the accepted endpoint IPs. */
  static async start (config: ClusterConfig, logger: Logger): Promise<ClusterNode> {
    const client = createEtcdClient({ endpoints: config.etcd.endpoints })
    const { prefix } = config.etcd
    let store: EtcdStore | undefined
    let membership: Membership | undefined
    let node: ClusterNode | undefined
    try {
      store = await EtcdStore.open(client, { prefix, onWarning: (err) => { logger.warn({ err }, 'etcd store') } })
      membership = new Membership({ client, prefix, nodeId: config.nodeId, leaseTtlSeconds: config.leaseTtlSeconds })
      membership.on('warning', (err: unknown) => { logger.warn({ err }, 'cluster membership') })
      membership.on('state', (state: string) => { logger.info({ nodeId: config.nodeId, state }, 'cluster membership') })
      await membership.start()
      const ownership = new Ownership({
        client,
        prefix,
        membership,
        // Adding the addresses to cluster.interface is the next step (README "Cluster").
        onChange: (owned) => {
          logger.info({ owned: owned.size }, 'owned endpoint IPs changed')
          if (node !== undefined) node.#ownedChanged(owned)
        }
      })
      ownership.on('warning', (err: unknown) => { logger.warn({ err }, 'cluster ownership') })
      node = new ClusterNode(config.nodeId, client, store, membership, ownership)
      await ownership.start()
      const wanted = store
      ownership.setWanted(acceptedIps(wanted.state))
      node.#unsubscribe = store.subscribe((events) => {
        if (events.some((e) => e.kind === 'endpoint')) ownership.setWanted(acceptedIps(wanted.state))
      })
      if (config.interface !== undefined) logger.warn({ interface: config.interface }, 'cluster.interface: owned IPs are claimed but not yet added to the interface')
      return node
    } catch (err) {
      await membership?.stop().catch(() => {})
      await store?.close().catch(() => {})
      client.close()
      throw err
    }
  }

  /** Whether this node owns (and so serves) `ip` now. */
  owns (ip: string): boolean { return this.#owned.has(ip) }

  /** Hear which IPs this node gained or lost (one listener: the data plane's `servedChanged`). */
  onOwnedChanged (listener: (changed: readonly string[]) => void): void { this.#onOwned = listener }

  #ownedChanged (owned: ReadonlySet<string>): void {
    const changed = [...owned].filter((ip) => !this.#owned.has(ip)).concat([...this.#owned].filter((ip) => !owned.has(ip)))
    this.#owned = new Set(owned)
    if (changed.length > 0) this.#onOwned?.(changed)
  }

  /** Live nodes with the IPs each owns, as etcd says. */
  items (): ClusterNodeItem[] {
    const owned = new Map<string, string[]>([...this.#membership.nodes].map((n) => [n, []]))
    for (const [ip, node] of this.#ownership.owners()) owned.get(node)?.push(ip)
    return [...owned].sort(([a], [b]) => (a < b ? -1 : 1)).map(([nodeId, ips]) => ({ nodeId, live: true, ownedIps: byAddress(ips) }))
  }

  /** Release the IPs, leave the cluster (revoke the lease), close the store and the client. Safe twice. */
  close (): Promise<void> {
    this.#closing ??= (async () => {
      this.#unsubscribe?.()
      await this.#ownership.stop().catch(() => {})
      await this.#membership.stop().catch(() => {})
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
