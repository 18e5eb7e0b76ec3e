// Child process of hardening-emfile.test.ts, run under a small open-file limit (`ulimit -n`):
// a DataPlane (no connection budget, so the descriptors really run out) and a HealthChecker
// probing the parent's echo backend (port in argv[2]) every 100 ms. On the parent's word it holds
// every free descriptor but one, then none, while the parent connects through the proxy. Talks
// JSON lines on stdout, commands on stdin.
import { closeSync, openSync } from 'node:fs'
import { connect } from 'node:net'
import { createInterface } from 'node:readline'
import pino from 'pino'
import { HealthChecker } from '../../src/dataplane/upstream/health-checker.ts'
import {
  makeBackend, makeEndpoint, makeService, metricValue, openStore, putEndpoint, putService, roundTrip, startDataPlane
} from '../helpers/dataplane-fixtures.ts'

const t = { teardown: () => {} } // the process exits at the end
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
// The backend runs in the parent: here, only the proxy and the probes compete for descriptors.
const echoPort = Number(process.argv[2])
const store = await openStore(t)
const backend = makeBackend('127.71.20.20')
const base = makeService({ portMappings: [{ protocol: 'TCP', servicePort: echoPort, terminalPort: 7320 }], backends: [backend] })
const service = { ...base, healthCheck: { ...base.healthCheck, enabled: true, intervalSeconds: 0.1, timeoutSeconds: 0.05, healthyThreshold: 1, unhealthyThreshold: 2 } }
const endpoint = makeEndpoint(service, { ip: '127.71.20.10' })
await putService(store, service)
await putEndpoint(store, endpoint)
const warnings: string[] = []
const logger = pino({ level: 'warn' }, { write: (line: string) => { warnings.push(JSON.parse(line).msg as string) } })
const fx = await startDataPlane(t, { store, options: { logger } })
const health = new HealthChecker({ store, upstream: fx.upstream, metrics: fx.metrics, logger })
health.start()
await sleep(300)
const healthBefore = fx.upstream.backendHealth(service.id, backend.id)

process.stdout.write(JSON.stringify({ ready: true, healthBefore }) + '\n')

// Commands from the parent, one per line; each is answered with one JSON line.
//   fill     hold descriptors (/dev/null) until EMFILE, then give one back: one left
//   squeeze  take that last one too: none left
//   peak     what the proxy and the health checker have seen
//   release  give every held descriptor back
//   after    connect through the proxy once more, report, exit
const held: number[] = []
const stats = async (): Promise<Record<string, unknown>> => ({
  health: fx.upstream.backendHealth(service.id, backend.id),
  overload: await metricValue(fx.metrics, 'linkgate_connections_refused_total', { endpoint_id: endpoint.id, reason: 'overload' }),
  passiveFailures: fx.upstream.record(service.id, backend.id).passiveFailures,
  probeWarnings: warnings.filter((w) => w.includes('lack of local resources')).length,
  proxyWarnings: warnings.filter((w) => w.includes('accept failed') || w.includes('cannot open a backend connection')).length
})
const grab = (): boolean => {
  try {
    held.push(openSync('/dev/null', 'r'))
    return true
  } catch {
    return false
  }
}
for await (const line of createInterface({ input: process.stdin })) {
  if (line === 'fill') {
    while (grab()) {}
    closeSync(held.pop() as number)
    process.stdout.write(JSON.stringify({ held: held.length }) + '\n')
  } else if (line === 'squeeze') {
    process.stdout.write(JSON.stringify({ squeezed: grab() }) + '\n')
  } else if (line === 'peak') {
    process.stdout.write(JSON.stringify(await stats()) + '\n')
  } else if (line === 'release') {
    for (const fd of held.splice(0)) closeSync(fd)
    process.stdout.write(JSON.stringify({ released: true }) + '\n')
  } else if (line === 'after') {
    const after = connect({ host: '127.71.20.10', port: 7320 })
    after.on('error', () => {})
    let served = ''
    try {
      served = (await roundTrip(after, 'after')).toString()
    } catch (err) {
      served = `error: ${(err as Error).message}`
    }
    process.stdout.write(JSON.stringify({ served, ...(await stats()) }) + '\n')
    process.exit(0)
  }
}
