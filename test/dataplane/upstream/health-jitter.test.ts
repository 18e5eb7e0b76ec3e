// 100 backends (127.24.5.1–100, one port): their first checks are spread over the interval.
import { performance } from 'node:perf_hooks'
import t from 'tap'
import { backendOf, eventually, harness, putService, serviceId, serviceOf, startBackends } from './health-helpers.ts'

const COUNT = 100
const INTERVAL_MS = 1000

t.test('the first checks of 100 backends are spread over the interval, not one burst', async (t) => {
  const hosts = Array.from({ length: COUNT }, (_, i) => `127.24.5.${i + 1}`)
  const servers = await startBackends(t, hosts, { kind: 'tcp' })
  const h = await harness(t)
  const id = serviceId()
  await putService(h.store, serviceOf(id, {
    port: servers[0]?.port,
    backends: servers.map((s, i) => backendOf(`be-${(0x500 + i).toString(16).padStart(8, '0')}`, s.host)),
    healthCheck: { intervalSeconds: INTERVAL_MS / 1000, timeoutSeconds: 0.5 }
  }))
  const started = performance.now()
  h.checker.start()
  t.ok(await eventually(() => servers.every((s) => s.accepted.length > 0), INTERVAL_MS * 3), 'every backend was probed')

  const firsts = servers.map((s) => (s.accepted[0] as number) - started).sort((a, b) => a - b)
  const spread = (firsts.at(-1) as number) - (firsts[0] as number)
  t.ok(spread >= INTERVAL_MS * 0.7, `first probes span ${Math.round(spread)} ms of the ${INTERVAL_MS} ms interval`)
  let busiest = 0
  for (let i = 0, j = 0; i < firsts.length; i++) {
    while ((firsts[i] as number) - (firsts[j] as number) >= 100) j++
    busiest = Math.max(busiest, i - j + 1)
  }
  t.ok(busiest <= COUNT * 0.3, `at most 30% of first probes in any 100 ms window (busiest: ${busiest})`)
  t.ok((firsts.at(-1) as number) < INTERVAL_MS * 1.5, 'every first probe came within about one interval')
})
