// The CLI against answers a friendly linkgate never sends: a body that trickles in slower than
// the deadline, lists with null items, and resource fields carrying terminal control sequences
// (C0, C1 such as the 8-bit CSI U+009B, bidi overrides). Each ends in a clear `linkgate: ...`
// line or escaped text, never a raw abort message, a TypeError or a live escape sequence.
// Addresses: 127.84.0.0/16, ports 0.
import { once } from 'node:events'
import { createServer, type RequestListener } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { runCli } from '../../src/cli/cli.ts'

async function serve (t: Test, handler: RequestListener): Promise<string> {
  const server = createServer(handler)
  server.listen(0, '127.84.0.30')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return `http://127.84.0.30:${(server.address() as AddressInfo).port}`
}

async function cli (args: string[], env: Record<string, string> = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  let stdout = ''
  let stderr = ''
  const code = await runCli(args, { stdout: (s) => { stdout += s }, stderr: (s) => { stderr += s }, readStdin: async () => '', env })
  return { code, stdout, stderr }
}

const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/

t.test('a body that trickles past the deadline ends with a clear message, not a raw abort', async (t) => {
  const api = await serve(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.write('{"items": [')
    const timer = setInterval(() => { if (!res.destroyed) res.write(' ') }, 100)
    res.on('close', () => clearInterval(timer))
  })
  const started = Date.now()
  const r = await cli(['get', 'endpoints', '--request-timeout', '0.6', '--api', api, '--token', 'tok-1'])
  t.ok(Date.now() - started < 5000, 'bounded')
  t.equal(r.code, 1)
  t.match(r.stderr, /^linkgate: GET http:\/\/127\.84\.0\.30:\d+\/v1\/endpoints: the answer did not complete within 0\.6 s/)
  t.notMatch(r.stderr, /aborted|AbortError|TimeoutError/)
})

t.test('a body cut off mid-way says so', async (t) => {
  const api = await serve(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' })
    res.write('{"items": [')
    setTimeout(() => res.destroy(), 50)
  })
  const r = await cli(['get', 'endpoints', '--api', api, '--token', 'tok-1'])
  t.equal(r.code, 1)
  t.match(r.stderr, /^linkgate: GET \S+: the answer was cut off/)
  t.notMatch(r.stderr, /^linkgate: terminated$/m)
})

t.test('null items in a list are a clear error, for every table', async (t) => {
  const api = await serve(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ items: [{ id: 'vpce-000000000001', serviceId: 'x', status: 'accepted', ip: '1.2.3.4', zone: 'a', dnsNames: [] }, null] }))
  })
  for (const kind of ['endpoints', 'services', 'connections', 'available-services']) {
    const r = await cli(['get', kind, '--api', api, '--token', 'tok-1'])
    t.equal(r.code, 1, kind)
    t.match(r.stderr, /^linkgate: GET \/v1\/\S+: items\[1\] is null, not a resource/, `${kind}: ${r.stderr}`)
    t.notMatch(r.stderr, /TypeError|Cannot read/)
  }
  // A single resource missing its lists is not a crash either.
  const bare = await serve(t, (_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":"vpcesvc-000000000001"}') })
  const one = await cli(['get', 'service', 'vpcesvc-000000000001', '--api', bare, '--token', 'tok-1'])
  t.equal(one.code, 1)
  t.match(one.stderr, /^linkgate: the answer does not have the shape of a linkgate resource/)
  t.notMatch(one.stderr, /TypeError|Cannot read/)
})

t.test('control characters in table cells, ids and JSON output are escaped', async (t) => {
  const evil = 'db\u001b]0;pwned\u0007\u009b2J\u202egnp.exe\r'
  const api = await serve(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ items: [{ id: `vpce-1${evil}`, serviceId: evil, status: 'accepted', ip: '1.2.3.4', zone: evil, dnsNames: [evil] }] }))
  })
  for (const output of ['table', 'id', 'json', 'jsonpath={.zone}']) {
    const r = await cli(['get', 'endpoints', '-o', output, '--api', api, '--token', 'tok-1'])
    t.equal(r.code, 0, output)
    t.notMatch(r.stdout.replace(/\n/g, ''), CONTROL, `${output}: no control or bidi character reaches the terminal`)
    t.match(r.stdout, /\\u009b2J/, `${output}: the escape is visible`)
  }
  const json = await cli(['get', 'endpoints', '-o', 'json', '--api', api, '--token', 'tok-1'])
  t.equal((JSON.parse(json.stdout) as { items: Array<{ zone: string }> }).items[0]?.zone, evil, '-o json stays JSON with the same value')
})
