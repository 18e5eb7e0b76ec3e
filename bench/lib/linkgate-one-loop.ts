// linkgate with its data plane on the main thread, in the same event loop as the control plane,
// API, health checks and store: what linkgate was before data-plane workers (SPEC §11). Case 10
// compares it with `workers: 1` and `2`. The CLI always starts workers, so this calls the built
// app (dist/, what `linkgate start` runs) through buildApp without them; bench-only.
//   node --max-semi-space-size=8 bench/lib/linkgate-one-loop.ts CONFIG
// Ends on SIGTERM/SIGINT (graceful close).
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const file = process.argv[2]
if (file === undefined) {
  process.stderr.write('usage: linkgate-one-loop.ts CONFIG\n')
  process.exit(2)
}
const dist = join(import.meta.dirname, '../../dist')
// Loaded at run time from the build, so the figures are the built code's (and tsc does not
// follow dist/ from here).
const { buildApp } = await import(pathToFileURL(join(dist, 'app.js')).href) as {
  buildApp: (config: unknown, options: { configFile?: string, workers?: boolean }) => { start: () => Promise<unknown>, close: () => Promise<void>, destroy: () => void }
}
const { loadConfigFile } = await import(pathToFileURL(join(dist, 'config/load-config.js')).href) as { loadConfigFile: (file: string) => Promise<unknown> }

const app = buildApp(await loadConfigFile(file), { configFile: file, workers: false })
try {
  await app.start()
} catch (err) {
  app.destroy()
  process.stderr.write(`linkgate-one-loop: ${(err as Error).message}\n`)
  process.exit(1)
}
process.stdout.write('linkgate (one loop) started\n')
let stopping = false
const stop = (): void => {
  if (stopping) return
  stopping = true
  app.close().finally(() => process.exit(0))
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
