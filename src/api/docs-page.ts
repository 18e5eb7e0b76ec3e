// GET /v1/docs: a page that reads /v1/openapi.json and lists every route with its parameters,
// body and answers. Self-contained — no script, font or style from anywhere else (the CSP
// header says so to the browser too) — so it works on a gateway without internet access.
// Text from the document is inserted with textContent only, never as HTML.
import { createHash } from 'node:crypto'

export const DOCS_PATH = '/v1/docs'

export const DOCS_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>linkgate control API</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #1d2329; }
  h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccd; }
  .op { border: 1px solid #dde; border-radius: 6px; margin: .8rem 0; }
  .op > summary { padding: .45rem .7rem; cursor: pointer; font-family: ui-monospace, monospace; }
  .op > div { padding: 0 .9rem .6rem; }
  .m { display: inline-block; min-width: 4.2rem; font-weight: 700; }
  .GET { color: #1a6fb3; } .POST { color: #23854a; } .PUT { color: #9a6b00; } .PATCH { color: #7a4fb3; } .DELETE { color: #b3261e; }
  .lock { color: #778; font-size: .85em; }
  ul.schema { list-style: none; padding-left: 1.1rem; margin: .2rem 0; font-family: ui-monospace, monospace; font-size: .9em; }
  .t { color: #556; } .c { color: #887; }
  code { background: #f1f2f6; padding: 0 .25rem; border-radius: 3px; }
</style>
</head>
<body>
<h1>linkgate control API</h1>
<p id="intro">Loading <a href="/v1/openapi.json">/v1/openapi.json</a>…</p>
<main id="ops"></main>
<script>
'use strict'
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e }
function constraints (s) {
  const out = []
  for (const k of ['format', 'pattern', 'minimum', 'maximum', 'minLength', 'maxLength', 'minItems', 'maxItems']) if (s[k] !== undefined) out.push(k + ' ' + s[k])
  if (s.enum) out.push('one of ' + s.enum.join(', '))
  if (s.default !== undefined) out.push('default ' + JSON.stringify(s.default))
  return out.join('; ')
}
function typeOf (s) {
  if (!s || typeof s !== 'object') return 'any'
  if (s.type === 'array') return typeOf(s.items) + '[]'
  return s.type || (s.anyOf ? 'one of several' : 'any')
}
function schemaList (s, depth) {
  const ul = el('ul', 'schema')
  if (!s || depth > 6) return ul
  const obj = s.type === 'array' ? s.items : s
  if (!obj || !obj.properties) {
    const li = el('li'); li.append(el('span', 't', typeOf(s)), el('span', 'c', ' ' + constraints(s))); ul.append(li); return ul
  }
  const required = new Set(obj.required || [])
  for (const [name, p] of Object.entries(obj.properties)) {
    const li = el('li')
    li.append(el('b', '', name + (required.has(name) ? '' : '?')), el('span', 't', ': ' + typeOf(p)))
    const c = constraints(p); if (c) li.append(el('span', 'c', '  ' + c))
    if (p.description) li.append(el('span', 'c', '  — ' + p.description))
    const inner = p.type === 'array' ? p.items : p
    if (inner && inner.properties) li.append(schemaList(p, depth + 1))
    ul.append(li)
  }
  return ul
}
function operation (path, method, op, doc) {
  const d = el('details', 'op')
  const s = el('summary')
  s.append(el('span', 'm ' + method.toUpperCase(), method.toUpperCase()), document.createTextNode(path + '  '), el('span', 'c', op.summary || ''))
  const secured = (op.security || doc.security || []).length > 0
  if (secured) s.append(el('span', 'lock', '  (bearer token)'))
  d.append(s)
  const body = el('div')
  if (op.parameters && op.parameters.length) {
    body.append(el('h4', '', 'Parameters'))
    const ul = el('ul', 'schema')
    for (const p of op.parameters) {
      const li = el('li'); li.append(el('b', '', p.name + (p.required ? '' : '?')), el('span', 't', ' (' + p.in + '): ' + typeOf(p.schema)))
      const c = constraints(p.schema || {}); if (c) li.append(el('span', 'c', '  ' + c))
      if (p.description) li.append(el('span', 'c', '  — ' + p.description))
      ul.append(li)
    }
    body.append(ul)
  }
  const rb = op.requestBody && op.requestBody.content && op.requestBody.content['application/json']
  if (rb) { body.append(el('h4', '', 'Body (JSON)'), schemaList(rb.schema, 0)) }
  body.append(el('h4', '', 'Answers'))
  for (const [code, r] of Object.entries(op.responses || {})) {
    const p = el('p'); p.append(el('code', '', code), document.createTextNode(' ' + (r.description || '')))
    body.append(p)
    const c = r.content && (r.content['application/json'] || Object.values(r.content)[0])
    if (c && c.schema && code.startsWith('2')) body.append(schemaList(c.schema, 0))
  }
  d.append(body)
  return d
}
fetch('/v1/openapi.json').then((r) => r.json()).then((doc) => {
  const intro = document.getElementById('intro')
  intro.textContent = (doc.info && doc.info.description) || ''
  const byTag = new Map()
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of ['get', 'post', 'put', 'patch', 'delete']) {
      const op = item[method]; if (!op) continue
      const tag = (op.tags && op.tags[0]) || 'other'
      if (!byTag.has(tag)) byTag.set(tag, [])
      byTag.get(tag).push(operation(path, method, op, doc))
    }
  }
  const main = document.getElementById('ops')
  for (const t of doc.tags || []) {
    if (!byTag.has(t.name)) continue
    main.append(el('h2', '', t.name), el('p', 'c', t.description || ''), ...byTag.get(t.name))
    byTag.delete(t.name)
  }
  for (const [name, ops] of byTag) main.append(el('h2', '', name), ...ops)
}, (err) => { document.getElementById('intro').textContent = 'Could not read openapi.json: ' + err })
</script>
</body>
</html>
`

const inline = (tag: string): string => {
  const open = DOCS_HTML.indexOf(`<${tag}>`) + tag.length + 2
  const body = DOCS_HTML.slice(open, DOCS_HTML.indexOf(`</${tag}>`, open))
  return `'sha256-${createHash('sha256').update(body, 'utf8').digest('base64')}'`
}

/**
 * Only this page's own inline script and style run (CSP 3 hash sources, not 'unsafe-inline'),
 * so text that ever slipped into the page as markup could run nothing; it may fetch only from
 * this origin; no framing, no forms, no <base>.
 */
export const DOCS_CSP = "default-src 'none'; " +
  `script-src ${inline('script')}; style-src ${inline('style')}; ` +
  "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/** Every answer of the page route: the type is what it says (no sniffing), the URL stays here. */
export const DOCS_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': DOCS_CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cache-control': 'no-cache'
}
