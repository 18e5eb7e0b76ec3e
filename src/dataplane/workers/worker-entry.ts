// A data-plane worker thread (SPEC §11): the TCP/UDP listeners and the DNS server of linkgate,
// bound with SO_REUSEPORT next to the other workers'. The control plane stays on the main
// thread; this thread gets a snapshot of the store and then every committed change as a
// message, applies them to its own MemoryView, and feeds the unchanged DataPlane and DnsServer
// through the same `subscribe` interface. Health verdicts come from the main thread's
// HealthChecker; passive failures seen here go to it. Limits are shared counters (Atomics).
import { createLogger } from '../../logger.ts'
import { parentPort, workerData } from 'node:worker_threads'
import pino from 'pino'
import { Registry } from 'prom-client'
import { deepFreeze, type ChangeEvent, type Endpoint, type EndpointService } from '../../control/model.ts'
import { MemoryView, Subscribers, type Change, type ChangeListener, type Draft, type IndexName, type Store } from '../../control/store.ts'
import { DnsServer } from '../../dns/server.ts'
import { createMetrics } from '../../metrics/metrics.ts'
import { createAccessLog, ERROR_LOG_INTERVAL_MS } from '../access-log.ts'
import { DataPlane } from '../data-plane.ts'
import { socketSharing } from '../socket-sharing.ts'
import { createUdpListener } from '../udp-proxy.ts'
import { UpstreamState, type HealthRecord } from '../upstream/upstream-state.ts'
import type { FromWorker, SpareData, StoreChangeMessage, ToWorker, WorkerData } from './protocol.ts'
import { SharedBudget, SharedCounters } from './shared-counters.ts'

/** The store as a worker sees it: a read-only mirror of the main thread's, fed by messages. */
class MirrorStore implements Store {
  readonly #view = new MemoryView()
  readonly #subscribers: Subscribers

  constructor (onError: (err: unknown) => void) {
    this.#subscribers = new Subscribers(onError)
  }

  get state () { return this.#view.state }
  count (index: IndexName, key: string): number { return this.#view.count(index, key) }
  page (index: IndexName, key: string, after: string | undefined, limit: number): string[] { return this.#view.page(index, key, after, limit) }
  load (kind: 'service' | 'endpoint', value: EndpointService | Endpoint): void { this.#view.load(kind, value) }
  transact<T> (_fn: (draft: Draft) => T): Promise<T> { return Promise.reject(new Error('a data-plane worker does not write the store')) }
  subscribe (listener: ChangeListener): () => void { return this.#subscribers.add(listener) }
  close (): Promise<void> { return Promise.resolve() }

  apply (changes: readonly StoreChangeMessage[]): readonly ChangeEvent[] {
    const state = this.#view.state
    const resolved: Change[] = changes.map((c) => c.kind === 'service'
      ? { kind: 'service', id: c.id, before: state.services[c.id], after: c.after === undefined ? undefined : deepFreeze(c.after) }
      : { kind: 'endpoint', id: c.id, before: state.endpoints[c.id], after: c.after === undefined ? undefined : deepFreeze(c.after) })
    const events = this.#view.apply(resolved)
    this.#subscribers.emit(events)
    return events
  }
}

/** Verdicts are the main thread's; a failed or recovered connect here is reported to it. */
class MirroredUpstream extends UpstreamState {
  readonly #post: (m: FromWorker) => void

  constructor (post: (m: FromWorker) => void) {
    super()
    this.#post = post
  }

  override connectFailed (rec: HealthRecord, reason: string): void {
    rec.passiveFailures++
    this.#post({ type: 'passive', serviceId: rec.serviceId, backendId: rec.backendId, ok: false, reason })
  }

  override connectSucceeded (rec: HealthRecord): void {
    // Only a success after failures is news (no message per connection).
    if (rec.passiveFailures === 0) return
    rec.passiveFailures = 0
    this.#post({ type: 'passive', serviceId: rec.serviceId, backendId: rec.backendId, ok: true, reason: '' })
  }
}

async function main (port: NonNullable<typeof parentPort>, data: WorkerData): Promise<void> {
  const post = (m: FromWorker): void => { port.postMessage(m) }
  socketSharing.reusePort = true
  const { config } = data
  const logger = createLogger(config.log).child({ worker: data.index })
  const metrics = createMetrics(new Registry(), { defaultMetrics: false })
  const store = new MirrorStore((err) => { logger.error({ err }, 'a consumer of store changes failed') })
  for (const s of data.services) store.load('service', s)
  for (const e of data.endpoints) store.load('endpoint', e)
  const slots = new Map(data.slots)
  const counters = new SharedCounters(data.counters, data.own)
  const upstream = new MirroredUpstream(post)
  for (const [serviceId, backendId, health] of data.health) upstream.setHealth(upstream.record(serviceId, backendId), health, 'snapshot')
  // SPEC §10 "logged once per minute" holds for the process: the workers share when it was last.
  const gate = new BigInt64Array(data.logGate)
  const accessLogLogger = pino({
    level: config.log.level,
    hooks: {
      logMethod (args, method, level) {
        if (level >= 50) {
          const now = BigInt(Date.now())
          const last = Atomics.load(gate, 0)
          if (now - last < BigInt(ERROR_LOG_INTERVAL_MS) || Atomics.compareExchange(gate, 0, last, now) !== last) return
        }
        method.apply(this, args)
      }
    }
  }).child({ worker: data.index })
  const served = data.served === null ? null : new Set(data.served)
  const accessLog = createAccessLog(config.log.access, { logger: accessLogLogger, worker: data.index, onDrop: (lines) => { metrics.accessLogDroppedTotal.inc(lines) } })

  const dataPlane = new DataPlane({
    config,
    store,
    metrics,
    logger,
    upstream,
    accessLog,
    udpFactory: createUdpListener,
    budget: new SharedBudget(data.maxConnections, counters),
    endpointCounter: (endpoint) => {
      const slot = slots.get(endpoint.id)
      return slot === undefined ? undefined : counters.endpoint(slot)
    },
    onEndpointFailed: (endpointId, reason) => { post({ type: 'endpointFailed', endpointId, reason }) },
    onEndpointRecovered: (endpointId) => { post({ type: 'endpointRecovered', endpointId }) },
    ...(served === null ? {} : { serves: (ip: string) => served.has(ip) })
  })
  const dns = new DnsServer({ config, store, metrics, logger })

  let closing: Promise<void> | undefined
  port.on('message', (m: ToWorker) => {
    switch (m.type) {
      case 'changes':
        for (const [id, slot] of m.slots) slots.set(id, slot)
        for (const c of m.changes) {
          if (c.kind !== 'service') continue
          // Backends that left: their mirrored verdict goes with them (the main thread forgets its own).
          const before = store.state.services[c.id]
          if (before === undefined) continue
          if (c.after === undefined) upstream.forget(c.id)
          else for (const b of before.backends) if (!c.after.backends.some((a) => a.id === b.id)) upstream.forget(c.id, b.id)
        }
        store.apply(m.changes)
        for (const c of m.changes) if (c.kind === 'endpoint' && c.after === undefined) slots.delete(c.id)
        break
      case 'served':
        for (const ip of m.add) served?.add(ip)
        for (const ip of m.remove) served?.delete(ip)
        dataPlane.servedChanged([...m.add, ...m.remove])
        break
      case 'health':
        upstream.setHealth(upstream.record(m.serviceId, m.backendId), m.to, m.reason)
        break
      case 'metrics':
        void metrics.registry.getMetricsAsJSON().then((json) => { post({ type: 'metrics', id: m.id, metrics: json }) })
        break
      case 'close':
        closing ??= (async () => {
          await Promise.allSettled([dataPlane.close(m.graceMs), dns.close()])
          // The connections ended at the deadline write their lines from their sockets' 'close'
          // events, a turn or two later: let them land before the log closes.
          await new Promise((resolve) => setTimeout(resolve, 100))
          await accessLog.close()
          post({ type: 'closed' })
          port.close()
        })()
        break
    }
  })

  await dataPlane.start()
  const dnsAddresses = await dns.start()
  post({ type: 'ready', dns: dnsAddresses })
}

if (parentPort === null) throw new Error('worker-entry.ts runs in a worker thread')
const parent = parentPort
const run = (data: WorkerData): void => {
  main(parent, data).catch((err: unknown) => {
    parent.postMessage({ type: 'fatal', message: err instanceof Error ? err.message : String(err) } satisfies FromWorker)
    process.exit(1)
  })
}
if ((workerData as Partial<SpareData>).spare === true) {
  // A spare (worker-pool.ts): the imports above are loaded, which is most of a worker's start;
  // it binds nothing until it replaces a dead worker. main() adds its own listener in the same
  // turn, so the messages that follow `activate` reach it.
  parent.once('message', (m: ToWorker) => {
    if (m.type === 'activate') run(m.data)
    else process.exit(1)
  })
  parent.postMessage({ type: 'spareLoaded' } satisfies FromWorker)
} else {
  run(workerData as WorkerData)
}
