// The `cluster` config section (SPEC §12): defaults, and every bad value named by its field.
import t from 'tap'
import { buildConfig } from '../../src/config/load-config.ts'

t.test('a minimal cluster section gets the defaults; none at all stays single-node', async (t) => {
  t.equal(buildConfig({}).cluster, undefined)
  t.same(buildConfig({ cluster: { nodeId: 'n1', etcd: { endpoints: ['http://198.18.0.11:2379'] } } }).cluster,
    { nodeId: 'n1', etcd: { endpoints: ['http://198.18.0.11:2379'], prefix: '/linkgate/' }, leaseTtlSeconds: 3 })
})

t.test('every bad value is named by its field, all in one error', async (t) => {
  const bad = {
    nodeId: 'Node_1',
    etcd: { endpoints: ['ftp://198.18.0.11:2379', 'http://a b'], prefix: 'linkgate', extra: 1 },
    leaseTtlSeconds: 31,
    interface: 'eth0; reboot'
  }
  const err = t.throws(() => buildConfig({ cluster: bad })) as { errors?: string[] } | undefined
  const fields = (err?.errors ?? []).map((e) => e.split(':')[0])
  t.same(fields.sort(), [
    'cluster.etcd.endpoints[0]', 'cluster.etcd.endpoints[1]', 'cluster.etcd.extra', 'cluster.etcd.prefix',
    'cluster.interface', 'cluster.leaseTtlSeconds', 'cluster.nodeId'
  ].sort(), (err?.errors ?? []).join('\n'))
  t.throws(() => buildConfig({ cluster: { nodeId: 'n1', etcd: { endpoints: [] } } }), /cluster\.etcd\.endpoints: must NOT have fewer than 1 items/)
  t.throws(() => buildConfig({ cluster: { nodeId: 'n1', etcd: { endpoints: ['http://x:1'] }, leaseTtlSeconds: 1 } }), /cluster\.leaseTtlSeconds: must be >= 2/)
  t.throws(() => buildConfig({ cluster: { etcd: { endpoints: ['http://x:1'] } } }), /cluster\.nodeId/)
})
