// The main thread's side of the data-plane workers (SPEC §11): starts `workers` threads, sends
// each the config, a snapshot of the store and then every committed change, relays health
// verdicts to them and their passive failures and bind failures back, gathers their metrics at
// scrape time, restarts one that dies (within 1 s, its share of the shared counters taken
// back), and drains them all at shutdown.
//
// A restart takes over a spare: one extra thread that has loaded the worker's modules (most of
// a cold start: 0.3-0.9 s on a loaded 2-core machine) and binds nothing until it is activated
// with a dead worker's data. A new spare is started once the replacement serves. README "Data-
// plane workers" gives the restart times and the spare's memory.
import { wantsPretty } from '../../logger.ts'
import type { AddressInfo } from 'node:net'
import { Worker } from 'node:worker_threads'
import type { Logger } from 'pino'
import type { BackendHealth, ChangeEvent } from '../../control/model.ts'
import type { Config } from '../../control/schemas.ts'
import type { Store } from '../../control/store.ts'
import type { Metrics, MetricsJson } from '../../metrics/metrics.ts'
import type { HealthTransition, UpstreamState } from '../upstream/upstream-state.ts'
import type { FromWorker, SpareData, StoreChangeMessage, ToWorker, WorkerData } from './protocol.ts'
import { allocateCounters, reclaimShare, SlotTable } from './shared-counters.ts'

/** A dead worker is started again after this long (SPEC §11: within 1 s). */
export const RESTART_DELAY_MS = 200
/** How long a scrape waits for a worker's metrics before it leaves that worker out. */
const METRICS_TIMEOUT_MS = 2000

const ENTRY = new URL(`./worker-entry${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url)

export interface WorkerPoolOptions {
  readonly count: number
  readonly config: Config
  readonly store: Store
  readonly upstream: UpstreamState
  readonly metrics: Metrics
  readonly logger: Logger
  readonly maxConnections: number
  /** Returns false when the failure was not recorded (cluster mode: an address not on this node yet). */
  readonly onEndpointFailed: (endpointId: string, reason: string) => boolean
  readonly onEndpointRecovered: (endpointId: string) => void
  /** Cluster mode: the endpoint IPs this node serves now (call `servedChanged` when it changes); default every IP. */
  readonly served?: () => ReadonlySet<string>
  /** Keep a spare thread for restarts (default true). */
  readonly spare?: boolean
}

interface Slot {
  readonly index: number
  readonly own: SharedArrayBuffer
  worker: Worker | null
  /** This incarnation said ready (its listeners are bound) and has not exited. */
  serving: boolean
  /** Resolves when this incarnation is ready (or rejects when it could not start). */
  ready: Promise<void>
  closed: Promise<void> | null
  /** When this slot's worker last died (ms since the epoch), to tell a crash loop from a crash. */
  lastExitAt?: number
}

export class WorkerPool {
  readonly #opts: WorkerPoolOptions
  readonly #counters = allocateCounters()
  readonly #logGate = new SharedArrayBuffer(BigInt64Array.BYTES_PER_ELEMENT)
  readonly #slots: SlotTable
  readonly #workers: Slot[] = []
  /** endpoint id -> workers whose bind failed; the endpoint is failed while any is. */
  readonly #bindFailures = new Map<string, Set<number>>()
  readonly #pendingMetrics = new Map<number, (m: MetricsJson) => void>()
  #metricsId = 0
  #config: Config
  #unsubscribe: (() => void) | undefined
  #closing = false
  #restarts = 0
  /** A thread with the worker's modules loaded, waiting to replace a dead worker (or null). */
  #spare: Worker | null = null
  #spareLoaded = false
  #spareListeners: () => void = () => {}
  readonly #useSpare: boolean

  constructor (opts: WorkerPoolOptions) {
    this.#opts = opts
    this.#config = opts.config
    this.#slots = new SlotTable(this.#counters)
    this.#useSpare = opts.spare ?? true
  }

  get size (): number { return this.#workers.length }
  get restarts (): number { return this.#restarts }
  /** Workers whose listeners are bound now. */
  get serving (): number { return this.#workers.filter((w) => w.serving).length }
  /** Live TCP connections + UDP flows over every worker. */
  get active (): number { return Atomics.load(new Int32Array(this.#counters), 0) }
  threadIds (): Array<number | undefined> { return this.#workers.map((w) => w.worker?.threadId) }

  /** Start every worker; resolves with the DNS addresses once all of them serve. */
  async start (): Promise<{ udp: AddressInfo, tcp: AddressInfo }> {
    const { store, upstream, metrics } = this.#opts
    for (const id in store.state.endpoints) {
      try {
        this.#slots.assign(id)
      } catch (err) {
        this.#opts.logger.error({ err, endpointId: id }, 'no shared counter slot for this endpoint')
      }
    }
    this.#unsubscribe = store.subscribe(this.#onChanges)
    upstream.on('transition', this.#onTransition)
    metrics.setWorkerSource(() => this.gatherMetrics())
    // The first worker binds DNS (port 0 becomes a real port); the others bind the same port.
    const first = this.#add(0)
    const dns = await first
    this.#config = Object.freeze({ ...this.#config, listen: { ...this.#config.listen, dns: `${hostPort(dns.udp)}` } })
    const rest: Array<Promise<unknown>> = []
    for (let i = 1; i < this.#opts.count; i++) rest.push(this.#add(i))
    await Promise.all(rest)
    this.#startSpare()
    return dns
  }

  /** Whether a spare is waiting now, its modules loaded. */
  get hasSpare (): boolean { return this.#spare !== null && this.#spareLoaded }

  #startSpare (): void {
    if (!this.#useSpare || this.#closing || this.#spare !== null) return
    const spare = new Worker(ENTRY, { workerData: { spare: true } satisfies SpareData, name: 'linkgate-dataplane-spare' })
    this.#spare = spare
    this.#spareLoaded = false
    const loaded = (m: FromWorker): void => { if (m.type === 'spareLoaded' && this.#spare === spare) this.#spareLoaded = true }
    // A spare that fails to load is not replaced: restarts then start a thread from scratch.
    const gone = (err?: unknown): void => {
      if (this.#spare !== spare) return
      this.#spare = null
      if (!this.#closing) this.#opts.logger.warn({ err }, 'the spare data-plane worker ended; restarts will start a new thread')
    }
    const exited = (): void => { gone() }
    spare.on('message', loaded)
    spare.on('error', gone)
    spare.on('exit', exited)
    // Only our own listeners go when the spare takes over: removeAllListeners() would also take
    // the Worker's internal ones (its message port's ref handling) and the takeover then hangs.
    this.#spareListeners = () => {
      spare.off('message', loaded)
      spare.off('error', gone)
      spare.off('exit', exited)
    }
  }

  /** The spare, taken out of its waiting role (its listeners removed), or a new thread. */
  #thread (data: WorkerData, name: string): Worker {
    const spare = this.#spare
    if (spare !== null) {
      this.#spare = null
      this.#spareListeners()
      spare.postMessage({ type: 'activate', data } satisfies ToWorker)
      return spare
    }
    return new Worker(ENTRY, { workerData: data, name })
  }

  #add (index: number): Promise<{ udp: AddressInfo, tcp: AddressInfo }> {
    const slot: Slot = { index, own: new SharedArrayBuffer(this.#counters.byteLength), worker: null, serving: false, ready: Promise.resolve(), closed: null }
    this.#workers[index] = slot
    return this.#spawn(slot)
  }

  #spawn (slot: Slot): Promise<{ udp: AddressInfo, tcp: AddressInfo }> {
    const { store, upstream, logger } = this.#opts
    const health: Array<[string, string, BackendHealth]> = []
    for (const [serviceId, service] of Object.entries(store.state.services)) {
      for (const b of service.backends) {
        const h = upstream.backendHealth(serviceId, b.id)
        if (h !== 'unknown') health.push([serviceId, b.id, h])
      }
    }
    const data: WorkerData = {
      index: slot.index,
      // A worker's stdout is a pipe to this thread: `auto` is decided here, where the terminal is.
      config: { ...this.#config, log: { ...this.#config.log, format: wantsPretty(this.#config.log.format, process.stdout.isTTY === true) ? 'pretty' : 'json' } },
      maxConnections: this.#opts.maxConnections,
      counters: this.#counters,
      own: slot.own,
      logGate: this.#logGate,
      services: Object.values(store.state.services),
      endpoints: Object.values(store.state.endpoints),
      slots: this.#slots.entries(),
      health,
      served: this.#opts.served === undefined ? null : [...this.#opts.served()]
    }
    const worker = this.#thread(data, `linkgate-dataplane-${slot.index}`)
    slot.worker = worker
    const ready = new Promise<{ udp: AddressInfo, tcp: AddressInfo }>((resolve, reject) => {
      let started = false
      worker.on('message', (m: FromWorker) => {
        if (m.type === 'ready') {
          started = true
          slot.serving = true
          resolve(m.dns as { udp: AddressInfo, tcp: AddressInfo })
        } else if (m.type === 'fatal') {
          if (!started) reject(new Error(m.message))
          else logger.error({ worker: slot.index }, `data-plane worker failed: ${m.message}`)
        } else {
          this.#onMessage(slot, m)
        }
      })
      worker.on('error', (err) => {
        logger.error({ err, worker: slot.index }, 'data-plane worker crashed')
        if (!started) reject(err)
      })
      worker.on('exit', (code) => {
        if (!started) reject(new Error(`data-plane worker ${slot.index} exited (code ${code}) before it was ready`))
        this.#onExit(slot, worker, code)
      })
    })
    slot.ready = ready.then(() => {}, () => {})
    return ready
  }

  #onExit (slot: Slot, worker: Worker, code: number): void {
    if (slot.worker !== worker) return
    slot.worker = null
    slot.serving = false
    // Its connections are gone with it: give their units back to the shared counts.
    reclaimShare(this.#counters, slot.own)
    for (const [id, set] of this.#bindFailures) {
      if (set.delete(slot.index) && set.size === 0) {
        this.#bindFailures.delete(id)
        this.#opts.onEndpointRecovered(id)
      }
    }
    if (this.#closing) return
    this.#restarts++
    this.#opts.metrics.workerRestartsTotal.inc()
    // The first death in a while restarts at once (the 1 s of SPEC §11 is mostly module loading);
    // a worker that keeps dying waits RESTART_DELAY_MS between attempts.
    const now = Date.now()
    const delayMs = slot.lastExitAt === undefined || now - slot.lastExitAt > 10_000 ? 0 : RESTART_DELAY_MS
    slot.lastExitAt = now
    this.#opts.logger.error({ worker: slot.index, code }, `data-plane worker exited; restarting it in ${delayMs} ms`)
    const timer = setTimeout(() => {
      if (this.#closing) return
      // The next spare loads once the replacement serves, not in competition with it.
      this.#spawn(slot).then(() => { this.#startSpare() }, (err: unknown) => {
        this.#opts.logger.error({ err, worker: slot.index }, 'data-plane worker could not start again')
      })
    }, delayMs)
    timer.unref()
  }

  #onMessage (slot: Slot, m: FromWorker): void {
    const { upstream, logger } = this.#opts
    switch (m.type) {
      case 'passive': {
        if (this.#opts.store.state.services[m.serviceId]?.backends.some((b) => b.id === m.backendId) !== true) return
        const rec = upstream.record(m.serviceId, m.backendId)
        if (m.ok) upstream.connectSucceeded(rec)
        else upstream.connectFailed(rec, m.reason)
        break
      }
      case 'endpointFailed': {
        let set = this.#bindFailures.get(m.endpointId)
        if (set === undefined) this.#bindFailures.set(m.endpointId, set = new Set())
        const first = set.size === 0
        set.add(slot.index)
        // A failure the app did not record is not tracked either, so that a later real one is reported.
        if (first && !this.#opts.onEndpointFailed(m.endpointId, `${m.reason} (worker ${slot.index})`)) this.#bindFailures.delete(m.endpointId)
        break
      }
      case 'endpointRecovered': {
        const set = this.#bindFailures.get(m.endpointId)
        // A worker that never failed says "recovered" when it sees the failed status: not news.
        if (set === undefined || !set.delete(slot.index)) {
          if (set === undefined) this.#opts.onEndpointRecovered(m.endpointId)
          return
        }
        if (set.size === 0) {
          this.#bindFailures.delete(m.endpointId)
          this.#opts.onEndpointRecovered(m.endpointId)
        }
        break
      }
      case 'metrics':
        this.#pendingMetrics.get(m.id)?.(m.metrics)
        break
      case 'closed': // drained; its 'exit' follows
        break
      default:
        logger.warn({ worker: slot.index, message: (m as { type: string }).type }, 'unexpected message from a data-plane worker')
    }
  }

  readonly #onChanges = (events: readonly ChangeEvent[]): void => {
    const changes: StoreChangeMessage[] = []
    const slots: Array<[string, number]> = []
    for (const e of events) {
      if (e.kind === 'endpoint') {
        if (e.after === undefined) this.#slots.free(e.id)
        else if (e.before === undefined) {
          try {
            slots.push([e.id, this.#slots.assign(e.id)])
          } catch (err) {
            // Past ENDPOINT_SLOTS: the endpoint still serves, its limit counted per worker.
            this.#opts.logger.error({ err, endpointId: e.id }, 'no shared counter slot for this endpoint')
          }
        }
        changes.push({ kind: 'endpoint', id: e.id, after: e.after })
      } else {
        changes.push({ kind: 'service', id: e.id, after: e.after })
      }
    }
    this.#broadcast({ type: 'changes', changes, slots })
  }

  /** Cluster mode: these IPs started or stopped being served (a restarted worker gets the set in its snapshot). */
  servedChanged (ips: readonly string[]): void {
    const served = this.#opts.served?.()
    if (served === undefined) return
    this.#broadcast({ type: 'served', add: ips.filter((ip) => served.has(ip)), remove: ips.filter((ip) => !served.has(ip)) })
  }

  readonly #onTransition = (t: HealthTransition): void => {
    this.#broadcast({ type: 'health', serviceId: t.serviceId, backendId: t.backendId, to: t.to, reason: t.reason })
  }

  #broadcast (m: ToWorker): void {
    // A worker being restarted gets the whole state in its snapshot instead.
    for (const slot of this.#workers) slot.worker?.postMessage(m)
  }

  /** Every live worker's registry as JSON (a worker that does not answer in time is left out). */
  async gatherMetrics (): Promise<MetricsJson[]> {
    const asks = this.#workers.map((slot) => new Promise<MetricsJson | null>((resolve) => {
      const worker = slot.worker
      if (worker === null) { resolve(null); return }
      const id = ++this.#metricsId
      const timer = setTimeout(() => { this.#pendingMetrics.delete(id); resolve(null) }, METRICS_TIMEOUT_MS)
      this.#pendingMetrics.set(id, (json) => { clearTimeout(timer); this.#pendingMetrics.delete(id); resolve(json) })
      worker.postMessage({ type: 'metrics', id } satisfies ToWorker)
    }))
    return (await Promise.all(asks)).filter((m): m is MetricsJson => m !== null)
  }

  /** For tests: end worker `index` as a crash would (it is restarted). */
  async kill (index: number): Promise<void> {
    await this.#workers[index]?.worker?.terminate()
  }

  /** Stop accepting in every worker; live connections get `graceMs`; then the threads end. */
  async close (graceMs: number): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    this.#unsubscribe?.()
    this.#opts.upstream.off('transition', this.#onTransition)
    const spare = this.#spare
    this.#spare = null
    const spareGone = spare === null ? undefined : spare.terminate()
    await Promise.all(this.#workers.map(async (slot) => {
      await slot.ready
      const worker = slot.worker
      if (worker === null) return
      const exited = new Promise<void>((resolve) => { worker.once('exit', () => { resolve() }) })
      worker.postMessage({ type: 'close', graceMs } satisfies ToWorker)
      const timer = setTimeout(() => { void worker.terminate() }, graceMs + 5000)
      await exited
      clearTimeout(timer)
    }))
    await spareGone
    this.#opts.metrics.setWorkerSource(undefined)
  }

  destroy (): void {
    this.#closing = true
    this.#unsubscribe?.()
    this.#opts.upstream.off('transition', this.#onTransition)
    void this.#spare?.terminate()
    this.#spare = null
    for (const slot of this.#workers) void slot.worker?.terminate()
  }
}

function hostPort (a: AddressInfo): string {
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
}

/** `workers: auto | N` as a number. */
export function resolveWorkerCount (workers: 'auto' | number, parallelism: number): number {
  return workers === 'auto' ? Math.max(1, parallelism) : workers
}
