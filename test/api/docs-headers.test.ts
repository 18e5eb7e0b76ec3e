// /v1/docs and /v1/openapi.json carry the headers a browser needs to treat them safely:
// nosniff, no referrer, no framing, and a CSP that lets only the page's own inline script and
// style run (hash sources, no 'unsafe-inline'). Addresses: 127.84.0.0/16, ports 0.
import { createHash } from 'node:crypto'
import t from 'tap'
import { startApi } from '../helpers/api-harness.ts'

const sha256 = (text: string): string => `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`

t.test('the docs page: nosniff, no-referrer, DENY framing, and a CSP that names its own inline code by hash', async (t) => {
  const api = await startApi(t, {}, '127.84.0.11')
  const res = await fetch(`${api.url}/v1/docs`)
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-content-type-options'), 'nosniff')
  t.equal(res.headers.get('referrer-policy'), 'no-referrer')
  t.equal(res.headers.get('x-frame-options'), 'DENY')
  const csp = res.headers.get('content-security-policy') ?? ''
  const html = await res.text()
  const directives = new Map(csp.split(';').map((d) => d.trim().split(/\s+/)).map(([name = '', ...values]) => [name, values]))
  t.same(directives.get('default-src'), ["'none'"])
  t.same(directives.get('frame-ancestors'), ["'none'"])
  t.same(directives.get('connect-src'), ["'self'"])
  t.notMatch(csp, /unsafe-inline|unsafe-eval|\*/, 'no blanket allowance')
  // Every inline script and style of the page as served is allowed by exactly its hash.
  const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1] as string)
  const styles = [...html.matchAll(/<style>([\s\S]*?)<\/style>/g)].map((m) => m[1] as string)
  t.equal(scripts.length, 1)
  t.equal(styles.length, 1)
  t.same(directives.get('script-src'), scripts.map(sha256))
  t.same(directives.get('style-src'), styles.map(sha256))
  t.notMatch(html, /\sstyle=|\son[a-z]+=|<script[^>]*src=|<link/i, 'no inline attribute or outside asset that the CSP would block')
})

t.test('the OpenAPI document is not sniffed either', async (t) => {
  const api = await startApi(t, {}, '127.84.0.11')
  const res = await fetch(`${api.url}/v1/openapi.json`)
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-content-type-options'), 'nosniff')
  const doc = await res.json() as { paths: Record<string, Record<string, { requestBody?: { content: Record<string, unknown> } }>> }
  const patch = doc.paths['/v1/endpoints/{id}']?.patch
  t.ok(patch?.requestBody?.content['application/merge-patch+json'], 'PATCH documents the merge-patch type')
})
