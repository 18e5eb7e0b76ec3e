// IP allocation by index (SPEC §3, §11): the lowest free host address, also after addresses
// below the search mark are given back; a requested address is checked by one lookup.
import t from 'tap'
import { startApi, tcpService } from '../helpers/api-harness.ts'

t.test('a freed address below the allocation mark is handed out again first, then allocation continues upwards', async (t) => {
  const api = await startApi(t, {
    subnets: [{ id: 'subnet-a', cidr: '127.73.40.0/24', zone: 'zone-a' }, { id: 'subnet-b', cidr: '127.73.41.0/24', zone: 'zone-b' }],
    quotas: { servicesPerAccount: 10, endpointsPerAccount: 50 }
  })
  const svc = (await api.call('POST', '/v1/endpoint-services', { body: tcpService() })).body
  const create = async (body: Record<string, unknown> = {}): Promise<{ status: number, body: any }> =>
    api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-a', ...body } })
  const ips: string[] = []
  const ids: string[] = []
  for (let i = 0; i < 4; i++) {
    const ep = await create()
    ips.push(ep.body.ip)
    ids.push(ep.body.id)
  }
  t.same(ips, ['127.73.40.2', '127.73.40.3', '127.73.40.4', '127.73.40.5'])
  t.equal((await api.call('DELETE', `/v1/endpoints/${ids[1]}`)).status, 204)
  t.equal((await api.call('DELETE', `/v1/endpoints/${ids[0]}`)).status, 204)
  t.equal((await create()).body.ip, '127.73.40.2', 'the lowest freed address first')
  t.equal((await create()).body.ip, '127.73.40.3')
  t.equal((await create({ ip: '127.73.40.7' })).body.ip, '127.73.40.7', 'a requested free address')
  t.equal((await create()).body.ip, '127.73.40.6', 'then upwards from the mark, skipping used ones')
  t.equal((await create()).body.ip, '127.73.40.8')
  const taken = await create({ ip: '127.73.40.7' })
  t.equal(taken.status, 409)
  t.match(taken.body.error.message, /^ip: 127\.73\.40\.7 is already used/)
  t.equal((await api.call('POST', '/v1/endpoints', { body: { serviceId: svc.id, subnetId: 'subnet-b' } })).body.ip, '127.73.41.2', 'each subnet has its own mark')
})
