// The one place that builds an etcd v3 client for cluster mode (SPEC §12). etcd3 (microsoft/etcd3)
// runs on @grpc/grpc-js: pure JavaScript, nothing to compile. test/cluster/etcd-client.test.ts
// checks the calls linkgate relies on against Debian's etcd 3.4 on Node 24.
import { Etcd3 } from 'etcd3'

export interface EtcdClientOptions {
  /** `http://host:port` URLs of the etcd members. */
  endpoints: readonly string[]
  /** Deadline of every unary call (get, put, txn, lease grant/revoke); streams have none. */
  callTimeoutMs?: number
}

export function createEtcdClient (options: EtcdClientOptions): Etcd3 {
  if (options.endpoints.length === 0) throw new RangeError('cluster.etcd.endpoints: needs at least one URL')
  for (const [i, url] of options.endpoints.entries()) {
    if (!/^https?:\/\/[^/\s]+(:\d+)?\/?$/.test(url)) {
      throw new RangeError(`cluster.etcd.endpoints[${i}]: ${JSON.stringify(url)} is not an http://host:port URL`)
    }
  }
  const callTimeoutMs = options.callTimeoutMs ?? 2000
  return new Etcd3({
    hosts: [...options.endpoints],
    // Without a deadline a call to an unreachable member waits for ever; membership and
    // ownership retry on their own clocks instead.
    defaultCallOptions: (context) => context.isStream ? {} : { deadline: Date.now() + callTimeoutMs }
  })
}

/** etcd's answer revisions are decimal strings (int64); keep them exact. */
export const nextRevision = (revision: string): string => (BigInt(revision) + 1n).toString()
