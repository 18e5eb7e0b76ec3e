// Measures a data-plane worker's restart (SPEC §11: within 1 s) and the spare's memory.
// Usage: node scripts/measure-worker-restart.ts [runs=5]   (Node 24: node_modules/.bin/node)
// Prints {"restartMs":[...]} (kill of worker 0 -> both workers listening again, each run after
// the spare has loaded and past the 10 s crash-loop window) and {"spareHeapUsedMiB",
// "perSpareRssMiB"} (4 idle spares of the built dist/ entry when it exists, else the .ts one).
// Addresses: 127.81.20.1, port 0.
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'
import { buildApp } from '../src/app.ts'
import { buildConfig } from '../src/config/load-config.ts'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const runs = Number(process.argv[2] ?? 5)
const dir = await mkdtemp(join(tmpdir(), 'linkgate-restart-'))
const app = buildApp(buildConfig({
  listen: { api: '127.81.20.1:0', dns: '127.81.20.1:0' },
  stateDir: join(dir, 'state'),
  subnets: [{ id: 'subnet-a', cidr: '127.81.20.0/24', zone: 'zone-a' }],
  zones: ['zone-a'],
  log: { level: 'error' },
  workers: 2
}), { workers: true })
await app.start()
const pool = app.workers
if (pool === undefined) throw new Error('no workers')
const restartMs: number[] = []
for (let i = 0; i < runs; i++) {
  while (!pool.hasSpare) await sleep(5)
  await sleep(3000) // the spare has loaded its modules
  const before = pool.threadIds()[0]
  const t0 = performance.now()
  await pool.kill(0)
  while (!(pool.threadIds()[0] !== undefined && pool.threadIds()[0] !== before && pool.serving === 2)) await sleep(2)
  restartMs.push(Math.round(performance.now() - t0))
  if (i < runs - 1) await sleep(7500) // past the crash-loop window (10 s between deaths)
}
console.log(JSON.stringify({ restartMs }))
await app.close()
await rm(dir, { recursive: true, force: true })

const dist = new URL('../dist/dataplane/workers/worker-entry.js', import.meta.url)
const entry = existsSync(dist) ? dist : new URL('../src/dataplane/workers/worker-entry.ts', import.meta.url)
const rss0 = process.memoryUsage().rss
const spares = Array.from({ length: 4 }, () => new Worker(entry, { workerData: { spare: true } }))
await sleep(5000)
const heaps = await Promise.all(spares.map((w) => w.getHeapStatistics()))
console.log(JSON.stringify({
  entry: entry.pathname,
  spareHeapUsedMiB: heaps.map((h) => Math.round(h.used_heap_size / 104857.6) / 10),
  // Rough: the main thread's own garbage moves the process RSS too.
  perSpareRssMiB: Math.round((process.memoryUsage().rss - rss0) / 4 / 104857.6) / 10
}))
await Promise.all(spares.map((w) => w.terminate()))
