// A real control API (fastify on 127.0.0.1 port 0) over a real store in a temp dir, without the
// data plane: for tests of the control plane's rules through HTTP.
import { mkdtemp, rm } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { Registry } from 'prom-client'
import { buildApiServer } from '../../src/api/server.ts'
import { buildConfig } from '../../src/config/load-config.ts'
import { ControlPlane } from '../../src/control/control-plane.ts'
import { SqliteStore } from '../../src/control/store-sqlite.ts'
import { UpstreamState } from '../../src/dataplane/upstream/upstream-state.ts'
import { createMetrics, type Metrics } from '../../src/metrics/metrics.ts'

export const PROVIDER = { id: '100000000001', token: 'provider-dev-token' }
export const CONSUMER = { id: '100000000002', token: 'consumer-dev-token' }
export const OTHER = { id: '100000000003', token: 'other-dev-token-3' }

export interface Reply {
  status: number
  body: any
}

export interface ApiHarness {
  url: string
  store: SqliteStore
  control: ControlPlane
  metrics: Metrics
  call (method: string, path: string, options?: { token?: string | null, body?: unknown, raw?: string, headers?: Record<string, string> }): Promise<Reply>
}

interface Teardown { teardown (fn: () => unknown): void }

export async function startApi (t: Teardown, partial: Record<string, unknown> = {}, host = '127.0.0.1'): Promise<ApiHarness> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-api-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const config = buildConfig({
    stateDir: dir,
    accounts: [
      { id: PROVIDER.id, name: 'provider', token: PROVIDER.token },
      { id: CONSUMER.id, name: 'consumer', token: CONSUMER.token },
      { id: OTHER.id, name: 'other', token: OTHER.token }
    ],
    ...partial
  })
  const store = await SqliteStore.open(dir)
  const control = new ControlPlane(config, store, new UpstreamState())
  const metrics = createMetrics(new Registry(), { defaultMetrics: false })
  const app = buildApiServer({ control, metrics, logger: pino({ level: 'silent' }) })
  await app.listen({ host, port: 0 })
  t.teardown(() => app.close())
  const { port } = app.server.address() as AddressInfo
  const url = `http://${host}:${port}`
  return {
    url,
    store,
    control,
    metrics,
    async call (method, path, options = {}) {
      const headers: Record<string, string> = { ...options.headers }
      const token = options.token === undefined ? PROVIDER.token : options.token
      if (token !== null) headers.authorization = `Bearer ${token}`
      let body: string | undefined = options.raw
      if (options.body !== undefined) body = JSON.stringify(options.body)
      if (body !== undefined && headers['content-type'] === undefined) headers['content-type'] = 'application/json'
      const res = await fetch(url + path, { method, headers, body })
      const text = await res.text()
      return { status: res.status, body: text === '' ? undefined : JSON.parse(text) }
    }
  }
}

export const tcpService = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  name: 'db',
  portMappings: [{ protocol: 'TCP', servicePort: 5432, terminalPort: 15432 }],
  backends: [{ address: '127.0.0.1', zone: 'zone-a', weight: 100 }],
  ...extra
})
