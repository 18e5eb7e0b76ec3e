// List pagination (SPEC §10): `?limit=` 1–1000 (default 100), `?nextToken=` opaque, answers
// `{items, nextToken?}` with no nextToken on the last page; a bad limit or token is a 400 that
// names the parameter.
import t from 'tap'
import { CONSUMER, OTHER, startApi, tcpService, type ApiHarness } from '../helpers/api-harness.ts'

const subnets = [{ id: 'subnet-a', cidr: '127.73.10.0/24', zone: 'zone-a' }, { id: 'subnet-b', cidr: '127.73.11.0/24', zone: 'zone-b' }]
const quotas = { servicesPerAccount: 300, endpointsPerAccount: 300 }

async function createServices (api: ApiHarness, n: number, extra: Record<string, unknown> = {}): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < n; i++) {
    const res = await api.call('POST', '/v1/endpoint-services', { body: tcpService({ name: `s${i}`, ...extra }) })
    if (res.status !== 201) throw new Error(`create: ${res.status} ${JSON.stringify(res.body)}`)
    ids.push(res.body.id)
  }
  return ids
}

/** Follow nextToken to the end; returns the pages' item ids. */
async function pages (api: ApiHarness, path: string, limit: number, token?: string): Promise<string[][]> {
  const out: string[][] = []
  let next: string | undefined
  for (let i = 0; i < 50; i++) {
    const sep = path.includes('?') ? '&' : '?'
    const res = await api.call('GET', `${path}${sep}limit=${limit}${next === undefined ? '' : `&nextToken=${encodeURIComponent(next)}`}`, { token })
    if (res.status !== 200) throw new Error(`${path}: ${res.status} ${JSON.stringify(res.body)}`)
    out.push(res.body.items.map((x: { id?: string } | string) => (typeof x === 'string' ? x : x.id)))
    next = res.body.nextToken
    if (next === undefined) return out
    if (typeof next !== 'string' || next === '') throw new Error('nextToken must be a non-empty string when present')
  }
  throw new Error('too many pages')
}

t.test('services page by limit; the pages hold every service once, in order, and the last has no nextToken', async (t) => {
  const api = await startApi(t, { subnets, quotas })
  const ids = await createServices(api, 7)
  const got = await pages(api, '/v1/endpoint-services', 3)
  t.same(got.map((p) => p.length), [3, 3, 1])
  t.same(got.flat(), [...ids].sort(), 'every service once, ascending by id')

  const exact = await pages(api, '/v1/endpoint-services', 7)
  t.same(exact.map((p) => p.length), [7], 'a page that ends exactly at the end has no nextToken')
  const whole = await api.call('GET', '/v1/endpoint-services')
  t.equal(whole.body.items.length, 7)
  t.notOk('nextToken' in whole.body, 'nextToken is absent, not null, on the last page')
  t.match(whole.body.items[0], { backends: [{ health: 'unknown' }] }, 'items are full service views')
})

t.test('the default limit is 100 and the largest is 1000', async (t) => {
  const api = await startApi(t, { subnets, quotas })
  const ids = await createServices(api, 101)
  const first = await api.call('GET', '/v1/endpoint-services')
  t.equal(first.body.items.length, 100)
  t.type(first.body.nextToken, 'string')
  const rest = await api.call('GET', `/v1/endpoint-services?nextToken=${first.body.nextToken}`)
  t.same(rest.body.items.map((s: { id: string }) => s.id), [[...ids].sort()[100]])
  t.notOk('nextToken' in rest.body)
  const big = await api.call('GET', '/v1/endpoint-services?limit=1000')
  t.equal(big.body.items.length, 101)
})

t.test('a bad limit or nextToken is a 400 InvalidParameter naming it, on every list route', async (t) => {
  const api = await startApi(t, { subnets, quotas })
  const [id] = await createServices(api, 1, { allowedAccounts: [CONSUMER.id] })
  const routes = ['/v1/endpoint-services', '/v1/endpoints', `/v1/endpoint-services/${id}/connections`, `/v1/endpoint-services/${id}/allowed-accounts`, '/v1/available-services']
  const bad: Array<[string, RegExp]> = [
    ['limit=0', /^limit: must be an integer from 1 to 1000/],
    ['limit=1001', /^limit: /],
    ['limit=-5', /^limit: /],
    ['limit=1.5', /^limit: /],
    ['limit=abc', /^limit: /],
    ['limit=', /^limit: /],
    ['nextToken=', /^nextToken: /],
    ['nextToken=not-a-token', /^nextToken: /],
    ['nextToken=%2F%2F%2F', /^nextToken: /],
    [`nextToken=${Buffer.from('v2.vpcesvc-000000000000').toString('base64url')}`, /^nextToken: /],
    [`nextToken=${'A'.repeat(5000)}`, /^nextToken: /]
  ]
  for (const route of routes) {
    for (const [query, message] of bad) {
      const res = await api.call('GET', `${route}?${query}`)
      t.equal(res.status, 400, `${route}?${query.slice(0, 40)}: 400`)
      t.equal(res.body.error.code, 'InvalidParameter')
      t.match(res.body.error.message, message)
    }
  }
})

t.test('endpoints and connections page; the consumer sees only its own', async (t) => {
  const api = await startApi(t, { subnets, quotas })
  const [svc] = await createServices(api, 1, { allowedAccounts: [CONSUMER.id] })
  const mine: string[] = []
  for (let i = 0; i < 5; i++) {
    const res = await api.call('POST', '/v1/endpoints', { token: CONSUMER.token, body: { serviceId: svc, subnetId: 'subnet-a' } })
    t.equal(res.status, 201)
    mine.push(res.body.id)
  }
  const own = await api.call('POST', '/v1/endpoints', { body: { serviceId: svc, subnetId: 'subnet-b' } })
  t.same((await pages(api, '/v1/endpoints', 2, CONSUMER.token)).flat(), [...mine].sort())
  t.same((await pages(api, '/v1/endpoints', 2)).flat(), [own.body.id])
  const conns = await pages(api, `/v1/endpoint-services/${svc}/connections`, 4)
  t.same(conns.map((p) => p.length), [4, 2])
  t.same(conns.flat(), [...mine, own.body.id].sort())
})

t.test('available services merge own, allowed and "*" services without duplicates across pages', async (t) => {
  const api = await startApi(t, { subnets, quotas })
  const allowed = await createServices(api, 4, { allowedAccounts: [CONSUMER.id] })
  const everyone = await createServices(api, 3, { allowedAccounts: ['*'] })
  const both = await createServices(api, 2, { allowedAccounts: [CONSUMER.id, '*'] })
  await createServices(api, 3) // owner only: invisible to the consumer
  const own: string[] = []
  for (let i = 0; i < 2; i++) {
    const res = await api.call('POST', '/v1/endpoint-services', { token: CONSUMER.token, body: tcpService({ name: `mine${i}` }) })
    own.push(res.body.id)
  }
  const expected = [...allowed, ...everyone, ...both, ...own].sort()
  for (const limit of [1, 2, 3, 5, 100]) {
    t.same((await pages(api, '/v1/available-services', limit, CONSUMER.token)).flat(), expected, `limit ${limit}`)
  }
  t.same((await pages(api, '/v1/available-services', 2, OTHER.token)).flat(), [...everyone, ...both].sort(), 'another account sees the "*" ones')
  const byName = await pages(api, '/v1/available-services?name=s1', 1, CONSUMER.token)
  t.same(byName.flat(), [allowed[1], everyone[1], both[1]].sort(), 'a name filter pages too, skipping services the caller may not see')
})

t.test('allowed accounts page in their stored order', async (t) => {
  const api = await startApi(t, { subnets, quotas })
  const [id] = await createServices(api, 1)
  const accounts = Array.from({ length: 5 }, (_, i) => String(200000000000 + i))
  for (const accountId of accounts) await api.call('POST', `/v1/endpoint-services/${id}/allowed-accounts`, { body: { accountId } })
  const got = await pages(api, `/v1/endpoint-services/${id}/allowed-accounts`, 2)
  t.same(got, [accounts.slice(0, 2), accounts.slice(2, 4), accounts.slice(4)])
})
