// GET /v1/openapi.json (SPEC §14): served without a token, accepted by a standard OpenAPI 3.1
// validator, and listing exactly the routes fastify registered — with the request schemas the
// control plane validates with, so the document cannot drift from the API.
import { Validator } from '@seriousme/openapi-schema-validator'
import pino from 'pino'
import { Registry } from 'prom-client'
import t from 'tap'
import { buildApiServer } from '../../src/api/server.ts'
import { buildConfig } from '../../src/config/load-config.ts'
import { ControlPlane } from '../../src/control/control-plane.ts'
import { BackendInput, EndpointCreate, ServiceCreate } from '../../src/control/schemas.ts'
import { SqliteStore } from '../../src/control/store-sqlite.ts'
import { createMetrics } from '../../src/metrics/metrics.ts'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PROVIDER, startApi } from '../helpers/api-harness.ts'

const METHODS = ['get', 'post', 'put', 'patch', 'delete'] as const

/** fastify's `/v1/x/:id` → OpenAPI's `/v1/x/{id}`. */
const toOpenApiPath = (url: string): string => url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')

t.test('the document is served without a token, as JSON', async (t) => {
  const api = await startApi(t)
  const res = await fetch(`${api.url}/v1/openapi.json`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^application\/json/)
  const doc = await res.json() as { openapi: string }
  t.equal(doc.openapi, '3.1.0')
  const wrong = await api.call('GET', '/v1/openapi.json', { token: 'not-a-token' })
  t.equal(wrong.status, 200, 'a bad token does not matter on a public route')
  const other = await api.call('GET', '/v1/endpoints', { token: null })
  t.equal(other.status, 401, 'the other /v1 routes still need a token')
})

t.test('a standard OpenAPI 3.1 validator accepts the document', async (t) => {
  const api = await startApi(t)
  const doc = (await api.call('GET', '/v1/openapi.json')).body
  const validator = new Validator()
  const result = await validator.validate(doc)
  t.same(result.errors, undefined, 'no validation errors')
  t.equal(result.valid, true)
  t.equal(validator.version, '3.1')
  // The validator does reject: the same document with a response that lacks its description.
  const broken = structuredClone(doc)
  delete broken.paths['/healthz'].get.responses['200'].description
  t.equal((await new Validator().validate(broken)).valid, false, 'a broken copy is refused')
})

/**
 * fastify's own list of its routes, from `printRoutes({ commonPrefix: false })`: a tree whose
 * lines read `│   ├── /segment (GET, HEAD)`, four columns per level, children extending the
 * path of their parent.
 */
export function fastifyRoutes (tree: string): string[] {
  const out: string[] = []
  const stack: string[] = []
  for (const line of tree.split('\n')) {
    const m = /^((?:│   | {4})*)(?:├── |└── )(\S+)(?: \(([A-Z, ]+)\))?$/.exec(line)
    if (m === null) continue
    const depth = (m[1] as string).length / 4
    stack.length = depth
    const path = stack.join('') + (m[2] as string)
    stack.push(m[2] as string)
    for (const method of (m[3] ?? '').split(', ').filter(Boolean)) out.push(`${method} ${path}`)
  }
  return out
}

t.test('every route fastify registers is in the document, and nothing else', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-openapi-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const config = buildConfig({ stateDir: dir })
  const store = await SqliteStore.open(dir)
  t.teardown(() => store.close())
  const app = buildApiServer({
    control: new ControlPlane(config, store, { backendHealth: () => 'unknown' }),
    metrics: createMetrics(new Registry(), { defaultMetrics: false }),
    logger: pino({ level: 'silent' })
  })
  t.teardown(() => app.close())
  await app.ready()
  const doc = (await app.inject({ method: 'GET', url: '/v1/openapi.json' })).json() as { paths: Record<string, Record<string, { summary?: string }>> }
  const registered = fastifyRoutes(app.printRoutes({ commonPrefix: false }))
    .filter((r) => !r.startsWith('HEAD ') && !r.startsWith('OPTIONS '))
    .map(toOpenApiPath)
  const documented: string[] = []
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const m of METHODS) {
      const op = item[m]
      if (op === undefined) continue
      documented.push(`${m.toUpperCase()} ${path}`)
      t.ok(op.summary !== undefined && op.summary !== '', `${m.toUpperCase()} ${path} has a summary (a route without one was never described)`)
    }
  }
  t.ok(registered.length >= 23, `fastify registered ${registered.length} routes`)
  t.same([...documented].sort(), [...registered].sort(), 'the two lists are the same')
})

t.test('request bodies are the schemas the control plane validates with', async (t) => {
  const api = await startApi(t)
  const doc = (await api.call('GET', '/v1/openapi.json')).body
  const body = (path: string, method: string): any => doc.paths[path][method].requestBody.content['application/json'].schema
  // Serialized, the TypeBox objects are plain JSON Schema: the same text.
  t.same(body('/v1/endpoint-services', 'post'), JSON.parse(JSON.stringify(ServiceCreate)))
  t.same(body('/v1/endpoints', 'post'), JSON.parse(JSON.stringify(EndpointCreate)))
  t.same(body('/v1/endpoint-services/{id}/backends', 'post'), JSON.parse(JSON.stringify(BackendInput)))
  t.same(doc.paths['/v1/openapi.json'].get.security, [], 'the document itself needs no token')
  t.same(doc.security, [{ bearer: [] }], 'everything else needs a bearer token')
})

t.test('documentation schemas do not validate or reshape: the control plane still answers', async (t) => {
  const api = await startApi(t)
  const bad = await api.call('POST', '/v1/endpoint-services', { token: PROVIDER.token, body: { portMappings: [{ protocol: 'TCP', servicePort: 1, terminalPort: 70000 }] } })
  t.equal(bad.status, 400)
  t.match(bad.body.error.message, /portMappings\[0\]\.terminalPort: must be <= 65535/, "the control plane's message, not fastify's")
  const unknownId = await api.call('GET', '/v1/endpoint-services/not-an-id', { token: PROVIDER.token })
  t.equal(unknownId.status, 404, 'a malformed id is still 404, not a params-validation 400')
  const created = await api.call('POST', '/v1/endpoint-services', {
    token: PROVIDER.token,
    body: { name: 'docs', portMappings: [{ protocol: 'TCP', servicePort: 80, terminalPort: 80 }], backends: [{ address: '127.75.0.9', zone: 'zone-a' }] }
  })
  t.equal(created.status, 201)
  t.equal(created.body.backends[0].weight, 100, "the control plane's defaults still apply")
  t.equal(created.body.backends[0].health, 'unknown', 'answers are not filtered by the response schema')
  const again = await api.call('POST', '/v1/endpoint-services', { token: PROVIDER.token, body: { portMappings: [{ protocol: 'TCP', servicePort: 1, terminalPort: 1 }], colour: 'blue' } })
  t.equal(again.status, 400)
  t.match(again.body.error.message, /colour/, 'an unknown field is still named')
})

t.test('GET /v1/docs: a page for people, self-contained, without a token', async (t) => {
  const api = await startApi(t)
  const res = await fetch(`${api.url}/v1/docs`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^text\/html/)
  const csp = res.headers.get('content-security-policy') ?? ''
  t.match(csp, /default-src 'none'/, 'the browser is told to load nothing from elsewhere')
  t.match(csp, /connect-src 'self'/, 'only this gateway may be fetched (the document)')
  const html = await res.text()
  t.notMatch(html, /(src|href)=["']?(https?:)?\/\//i, 'no script, style or link from another host')
  t.notMatch(html, /\.innerHTML|insertAdjacentHTML|document\.write/, 'text from the document is never parsed as HTML')
  const script = /<script>([\s\S]*?)<\/script>/.exec(html)?.[1] ?? ''
  t.doesNotThrow(() => new Function(script), 'the inline script is valid JavaScript') // eslint-disable-line no-new-func
  t.match(script, /fetch\('\/v1\/openapi\.json'\)/, 'it reads the OpenAPI document')
})
