// Child process of hardening-emfile.test.ts, run under a small open-file limit (`ulimit -n`):
// one process holding a TCP echo backend, a DataPlane (no connection budget, so the descriptors
// really run out) and a HealthChecker probing the backend every 100 ms, while the parent opens
// more connections than there are descriptors. Talks JSON lines on stdout, commands on stdin.
import { connect } from 'node:net'
import { createInterface } from 'node:readline'
import pino from 'pino'
import { HealthChecker } from '../../src/dataplane/upstream/health-checker.ts'
import {
  makeBackend, makeEndpoint, makeService, metricValue, openStore, putEndpoint, putService, roundTrip, startDataPlane, startEchoServer
} from '../helpers/dataplane-fixtures.ts'

const t = { teardown: () => {} } // the process exits at the end
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const echo = await startEchoServer(t, '127.71.20.20')
const store = await openStore(t)
const backend = makeBackend('127.71.20.20')
const base = makeService({ portMappings: [{ protocol: 'TCP', servicePort: echo.port, terminalPort: 7320 }], backends: [backend] })
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

// The parent now opens more connections than there are descriptors here (each costs three:
// accepted, backend socket, backend's accepted socket) and says "peak", then closes them and
// says "after".
const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (line === 'peak') {
    process.stdout.write(JSON.stringify({
      healthAtPeak: fx.upstream.backendHealth(service.id, backend.id),
      overload: await metricValue(fx.metrics, 'linkgate_connections_refused_total', { endpoint_id: endpoint.id, reason: 'overload' }),
      passiveFailures: fx.upstream.record(service.id, backend.id).passiveFailures,
      probeWarnings: warnings.filter((w) => w.includes('lack of local resources')).length,
      acceptWarnings: warnings.filter((w) => w.includes('accept failed') || w.includes('cannot open a backend connection')).length
    }) + '\n')
  } else if (line === 'after') {
    const after = connect({ host: '127.71.20.10', port: 7320 })
    after.on('error', () => {})
    let served = ''
    try {
      served = (await roundTrip(after, 'after')).toString()
    } catch (err) {
      served = `error: ${(err as Error).message}`
    }
    process.stdout.write(JSON.stringify({ served, healthAfter: fx.upstream.backendHealth(service.id, backend.id) }) + '\n')
    process.exit(0)
  }
}
