// The control API's own bounds (SPEC §10): a body over 1 MiB is answered 413 and the client
// reads it; at most limits.apiMaxConnections connections, idle ones make room so that a real
// client keeps being served; headers within 10 s, the whole request within 30 s (408 or close);
// idle keep-alive connections close after 5 s.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { CONSUMER, startApi } from '../helpers/api-harness.ts'

const MiB = 1024 * 1024
const CHILD = fileURLToPath(new URL('../helpers/api-child.ts', import.meta.url))

/** The API in another process: the client must not share its event loop (see api-child.ts). */
async function apiProcess (t: Test): Promise<string> {
  const child = spawn(process.execPath, [CHILD], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(async () => {
    child.stdin.end()
    if (child.exitCode === null) await once(child, 'exit')
  })
  let text = ''
  for await (const chunk of child.stdout) {
    text += String(chunk)
    if (text.includes('\n')) break
  }
  return text.trim()
}

function open (url: string): Promise<Socket> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const s = connect({ host: hostname, port: Number(port) }, () => resolve(s))
    s.once('error', reject)
  })
}

/** Resolves with what the peer sent and when (ms after `since`) the socket closed. */
function untilClosed (socket: Socket, since: number): Promise<{ text: string, ms: number }> {
  return new Promise((resolve) => {
    let text = ''
    socket.setEncoding('utf8')
    socket.on('data', (d: string) => { text += d })
    socket.on('error', () => {})
    socket.once('close', () => resolve({ text, ms: Date.now() - since }))
  })
}

t.test("a body over 1 MiB: Node's fetch reads the 413, ten times in a row, at 2, 5 and 15 MiB", async (t) => {
  const url = await apiProcess(t)
  for (const size of [2, 5, 15]) {
    const body = JSON.stringify({ name: 'x', pad: 'x'.repeat(size * MiB) })
    for (let i = 0; i < 10; i++) {
      let status: number | string
      try {
        const res = await fetch(`${url}/v1/endpoint-services`, {
          method: 'POST', headers: { authorization: `Bearer ${CONSUMER.token}`, 'content-type': 'application/json' }, body
        })
        status = res.status
        const json = await res.json() as any
        t.equal(json.error.code, 'PayloadTooLarge')
      } catch (err) {
        status = String((err as { cause?: { code?: string } }).cause?.code ?? err)
      }
      t.equal(status, 413, `${size} MiB, try ${i + 1}: 413`)
    }
  }
  const list = await fetch(`${url}/v1/endpoint-services`, { headers: { authorization: `Bearer ${CONSUMER.token}` } })
  t.same(await list.json(), { items: [] }, 'nothing was created')
})

t.test('in-process too: the 413 and nothing created', async (t) => {
  const api = await startApi(t)
  const body = JSON.stringify({ name: 'x', pad: 'x'.repeat(2 * MiB) })
  for (let i = 0; i < 3; i++) {
    const res = await fetch(`${api.url}/v1/endpoint-services`, {
      method: 'POST', headers: { authorization: `Bearer ${CONSUMER.token}`, 'content-type': 'application/json' }, body
    })
    t.equal(res.status, 413, `try ${i + 1}: 413`)
    const json = await res.json() as any
    t.equal(json.error.code, 'PayloadTooLarge')
  }
  t.same(api.store.state.services, {}, 'nothing was created')
})

t.test('a chunked body over 1 MiB (no Content-Length) gets the 413 too', async (t) => {
  const api = await startApi(t)
  for (let i = 0; i < 3; i++) {
    let sent = 0
    const stream = new ReadableStream<Uint8Array>({
      pull (controller) {
        if (sent >= 3 * MiB) { controller.close(); return }
        controller.enqueue(new Uint8Array(64 * 1024).fill(0x20))
        sent += 64 * 1024
      }
    })
    const res = await fetch(`${api.url}/v1/endpoints`, {
      method: 'POST', headers: { authorization: `Bearer ${CONSUMER.token}` }, body: stream, duplex: 'half'
    } as RequestInit)
    t.equal(res.status, 413, `chunked try ${i + 1}: 413`)
    await res.arrayBuffer()
  }
})

t.test('past 16 MiB the connection is closed and the API keeps answering', async (t) => {
  const api = await startApi(t)
  const s = await open(api.url)
  const closed = untilClosed(s, Date.now())
  s.write(`POST /v1/endpoints HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${CONSUMER.token}\r\ncontent-length: ${64 * MiB}\r\n\r\n`)
  const chunk = Buffer.alloc(256 * 1024, 0x20)
  for (let i = 0; i < 96 && !s.destroyed; i++) {
    if (!s.write(chunk)) await new Promise<void>((resolve) => { s.once('drain', resolve); s.once('close', resolve) })
  }
  const { ms } = await closed
  t.ok(ms < 15_000, `closed after ${ms} ms`)
  const res = await fetch(`${api.url}/healthz`)
  t.equal(res.status, 200)
})

t.test('300 idle connections do not lock a real client out', async (t) => {
  const api = await startApi(t)
  const idle: Socket[] = []
  t.teardown(() => { for (const s of idle) s.destroy() })
  for (let i = 0; i < 300; i++) {
    const s = await open(api.url)
    s.on('error', () => {})
    idle.push(s)
  }
  await new Promise((resolve) => setTimeout(resolve, 200))
  for (let i = 0; i < 5; i++) {
    const started = Date.now()
    const res = await fetch(`${api.url}/v1/endpoints`, { headers: { authorization: `Bearer ${CONSUMER.token}`, connection: 'close' } })
    t.equal(res.status, 200, `request ${i + 1} answered`)
    await res.text()
    t.ok(Date.now() - started < 2000, `within 2 s (${Date.now() - started} ms)`)
  }
  const gauge = (await api.metrics.apiConnections.get()).values[0]?.value ?? 0
  t.ok(gauge <= 256, `open API connections ${gauge} <= 256`)
  const closed = await api.metrics.apiConnectionsClosedTotal.get()
  const idleClosed = closed.values.find((v) => v.labels.reason === 'idle')?.value ?? 0
  t.ok(idleClosed >= 44, `${idleClosed} idle connections closed to make room`)
  const alive = idle.filter((s) => !s.destroyed).length
  t.ok(alive <= 256, `${alive} of the 300 still open`)
})

t.test('256 slow uploads do not lock a real client out either', async (t) => {
  const api = await startApi(t)
  const slow: Socket[] = []
  t.teardown(() => { for (const s of slow) s.destroy() })
  for (let i = 0; i < 260; i++) {
    const s = await open(api.url)
    s.on('error', () => {})
    s.write(`POST /v1/endpoints HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${CONSUMER.token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{`)
    slow.push(s)
  }
  await new Promise((resolve) => setTimeout(resolve, 300))
  for (let i = 0; i < 3; i++) {
    const started = Date.now()
    const res = await fetch(`${api.url}/v1/endpoints`, { headers: { authorization: `Bearer ${CONSUMER.token}`, connection: 'close' } })
    t.equal(res.status, 200, `request ${i + 1} answered`)
    await res.text()
    t.ok(Date.now() - started < 2000, `within 2 s (${Date.now() - started} ms)`)
  }
  const closed = await api.metrics.apiConnectionsClosedTotal.get()
  const slowClosed = closed.values.find((v) => v.labels.reason === 'slow_body')?.value ?? 0
  const refused = closed.values.find((v) => v.labels.reason === 'limit')?.value ?? 0
  t.ok(slowClosed >= 1, `${slowClosed} slow uploads closed to make room`)
  t.equal(refused, 0, 'no new connection was turned away')
  t.same(api.store.state.endpoints, {}, 'nothing was created')
})

t.test('a slowloris gets 408 or a close after 10 s; a slow body after 30 s; the API answers meanwhile', async (t) => {
  const api = await startApi(t)
  const started = Date.now()
  // Headers, one byte a second: never complete.
  const loris = await open(api.url)
  t.teardown(() => loris.destroy())
  const lorisDone = untilClosed(loris, started)
  const head = 'GET /v1/endpoints HTTP/1.1\r\nhost: x\r\nx-slow: ' + 'a'.repeat(100)
  let i = 0
  const drip = setInterval(() => { if (!loris.destroyed && i < head.length) loris.write(head[i++] as string) }, 1000)
  t.teardown(() => clearInterval(drip))
  // Complete headers, then a body one byte every 2 s.
  const slowBody = await open(api.url)
  t.teardown(() => slowBody.destroy())
  const bodyDone = untilClosed(slowBody, started)
  slowBody.write(`POST /v1/endpoints HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${CONSUMER.token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n`)
  const trickle = setInterval(() => { if (!slowBody.destroyed) slowBody.write(' ') }, 2000)
  t.teardown(() => clearInterval(trickle))

  // Meanwhile a normal client is served promptly.
  for (let k = 0; k < 3; k++) {
    await new Promise((resolve) => setTimeout(resolve, 2500))
    const before = Date.now()
    const res = await fetch(`${api.url}/v1/endpoints`, { headers: { authorization: `Bearer ${CONSUMER.token}` } })
    t.equal(res.status, 200)
    await res.text()
    t.ok(Date.now() - before < 1000, `normal request in ${Date.now() - before} ms`)
  }
  const l = await lorisDone
  t.ok(l.ms >= 9_500 && l.ms <= 13_000, `slow headers closed after ${l.ms} ms (10 s + check interval)`)
  t.ok(l.text === '' || /^HTTP\/1\.1 408[^]*"code":"RequestTimeout"/.test(l.text), `answer: ${JSON.stringify(l.text.slice(0, 200))}`)
  const b = await bodyDone
  t.ok(b.ms >= 29_000 && b.ms <= 33_000, `slow body closed after ${b.ms} ms (30 s + check interval)`)
  t.ok(b.text === '' || /^HTTP\/1\.1 408[^]*"code":"RequestTimeout"/.test(b.text), `answer: ${JSON.stringify(b.text.slice(0, 200))}`)
  t.same(api.store.state.endpoints, {}, 'nothing was created')
})

t.test('an idle keep-alive connection is closed after 5 s', async (t) => {
  const api = await startApi(t)
  const s = await open(api.url)
  t.teardown(() => s.destroy())
  const done = untilClosed(s, Date.now())
  s.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n')
  const { text, ms } = await done
  t.match(text, /^HTTP\/1\.1 200/)
  t.match(text, /keep-alive/i)
  t.ok(ms >= 4_500 && ms <= 7_000, `closed after ${ms} ms`)
})
