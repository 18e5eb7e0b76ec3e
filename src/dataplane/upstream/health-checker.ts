// Active health checks (SPEC §3 healthCheck, §5 Health): one prober per backend of every
// service whose healthCheck is enabled, reconciled from the store's state and change events, so
// backends, services and healthCheck PATCHes take effect without a restart. Verdicts go to the
// shared UpstreamState (which owns the state machine); this module also logs every transition
// and keeps linkgate_backend_up current for every backend of every service.
//
// Verdict rules:
// - `healthyThreshold` consecutive passes → healthy ("rise"), `unhealthyThreshold` consecutive
//   failures → unhealthy ("fall"); from `unknown` the first verdict follows the same thresholds
//   (HAProxy rise/fall, AWS NLB healthy/unhealthy threshold count).
// - Passive verdicts (3 failed connects seen by the proxies, UpstreamState.connectFailed) hold
//   "until an active check passes" (SPEC §5): ONE passing probe clears a backend that is
//   unhealthy only by passive verdict. A backend that the active checker itself declared
//   unhealthy needs the full `healthyThreshold` — a passive verdict must not shorten it, and a
//   single lucky probe must not undo a fall the operator's thresholds asked for.
// - A backend without active checks (healthCheck disabled, or a UDP-only service without
//   healthCheck.port) has nothing that could ever pass, so a passive verdict there expires
//   after `passiveEjectionSeconds` (default 30 s, Envoy outlier detection's base_ejection_time)
//   instead of ejecting the backend until the process restarts.
// - Turning checks off releases the checker's own unhealthy verdict (HAProxy: a server
//   without `check` is considered up).
//
// Scheduling: each prober's first check runs at a random offset within the interval, so many
// backends never probe in lockstep; then one check per interval, start to start (a check
// never overlaps the next). Every timer is unref'd; close() aborts in-flight probes.
import type { Logger } from 'pino'
import { healthCheckPort, type Backend, type ChangeEvent, type EndpointService, type HealthCheck } from '../../control/model.ts'
import type { Store } from '../../control/store.ts'
import type { Metrics } from '../../metrics/metrics.ts'
import { LogLimiter } from '../socket-errors.ts'
import { probeHttp, type HttpProbeTarget } from './health-check-http.ts'
import { probeTcp, type ProbeResult } from './health-check-tcp.ts'
import type { HealthTransition, UpstreamState } from './upstream-state.ts'

export interface HealthCheckerOptions {
  readonly store: Store
  readonly upstream: UpstreamState
  readonly metrics: Metrics
  readonly logger: Logger
  /** How long a passive verdict holds on a backend that has no active check (seconds). */
  readonly passiveEjectionSeconds?: number
}

/** Envoy's outlier-detection base_ejection_time default. */
export const DEFAULT_PASSIVE_EJECTION_SECONDS = 30

interface ProbeSettings extends HttpProbeTarget {
  readonly protocol: HealthCheck['protocol']
  readonly intervalMs: number
  readonly healthyThreshold: number
  readonly unhealthyThreshold: number
  /** Equal keys probe the same way; a different key restarts the prober. */
  readonly key: string
}

type BackendUpLabels = { service_id: string, backend_id: string, address: string, zone: string }
type BackendUpChild = ReturnType<Metrics['backendUp']['labels']>

interface BackendEntry {
  readonly serviceId: string
  readonly backendId: string
  /** linkgate_backend_up series currently published for this backend. */
  labels: BackendUpLabels
  gauge: BackendUpChild
  prober: Prober | undefined
  /** The active checker's own verdict is `unhealthy`: only `healthyThreshold` passes clear it. */
  activeUnhealthy: boolean
  /** Expiry of a passive verdict on a backend without active checks. */
  passiveRelease: NodeJS.Timeout | undefined
}

interface ServiceEntry {
  readonly backends: Map<string, BackendEntry>
  /** healthCheck enabled but no port to probe (UDP-only service without healthCheck.port). */
  portless: boolean
}

function settingsOf (hc: HealthCheck, address: string, port: number, proxyProtocol: EndpointService['proxyProtocol']): ProbeSettings {
  const intervalMs = Math.round(hc.intervalSeconds * 1000)
  const timeoutMs = Math.round(hc.timeoutSeconds * 1000)
  return {
    protocol: hc.protocol,
    host: address,
    port,
    path: hc.path,
    intervalMs,
    timeoutMs,
    healthyThreshold: hc.healthyThreshold,
    unhealthyThreshold: hc.unhealthyThreshold,
    // An HTTP check of a PROXY-protocol service starts with a LOCAL header (SPEC §13).
    proxyProtocol: hc.protocol === 'HTTP' ? proxyProtocol : undefined,
    key: `${hc.protocol} ${address} ${port} ${hc.path} ${intervalMs} ${timeoutMs} ${hc.healthyThreshold} ${hc.unhealthyThreshold}` +
      (hc.protocol === 'HTTP' ? ` ${proxyProtocol ?? 'off'}` : '')
  }
}

/** Probes one backend once per interval and reports each result; knows nothing of verdicts. */
class Prober {
  readonly settings: ProbeSettings
  /** Consecutive passes and failures of this prober (reset when settings change). */
  successes = 0
  failures = 0
  readonly #onResult: (prober: Prober, result: ProbeResult) => void
  #timer: NodeJS.Timeout | undefined
  #abort: AbortController | undefined
  #inflight: Promise<void> | undefined
  #stopped = false

  constructor (settings: ProbeSettings, onResult: (prober: Prober, result: ProbeResult) => void) {
    this.settings = settings
    this.#onResult = onResult
  }

  /** First check at a random offset within the interval (jitter). */
  start (): void {
    this.#schedule(Math.random() * this.settings.intervalMs)
  }

  /** Stop the timer and abort an in-flight probe; resolves once that probe has let go of its socket. */
  stop (): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#abort?.abort()
    return this.#inflight ?? Promise.resolve()
  }

  #schedule (delayMs: number): void {
    this.#timer = setTimeout(this.#run, delayMs)
    this.#timer.unref()
  }

  readonly #run = (): void => {
    this.#timer = undefined
    if (this.#stopped) return
    const started = performance.now()
    const abort = new AbortController()
    this.#abort = abort
    const s = this.settings
    const probe = s.protocol === 'HTTP' ? probeHttp(s, abort.signal) : probeTcp(s, abort.signal)
    this.#inflight = probe.then((result) => {
      this.#abort = undefined
      this.#inflight = undefined
      if (this.#stopped) return
      try {
        this.#onResult(this, result)
      } finally {
        if (!this.#stopped) this.#schedule(Math.max(0, s.intervalMs - (performance.now() - started)))
      }
    })
  }
}

export class HealthChecker {
  readonly #store: Store
  readonly #upstream: UpstreamState
  readonly #metrics: Metrics
  readonly #logger: Logger
  readonly #passiveEjectionMs: number
  readonly #services = new Map<string, ServiceEntry>()
  readonly #localTroubleLog = new LogLimiter(60_000)
  #unsubscribe: (() => void) | undefined
  #started = false
  #closed = false
  #closing: Promise<void> | undefined

  constructor (opts: HealthCheckerOptions) {
    this.#store = opts.store
    this.#upstream = opts.upstream
    this.#metrics = opts.metrics
    this.#logger = opts.logger
    this.#passiveEjectionMs = (opts.passiveEjectionSeconds ?? DEFAULT_PASSIVE_EJECTION_SECONDS) * 1000
  }

  start (): void {
    if (this.#started || this.#closed) return
    this.#started = true
    this.#upstream.on('transition', this.#onTransition)
    this.#unsubscribe = this.#store.subscribe(this.#onChange)
    for (const service of Object.values(this.#store.state.services)) this.#reconcile(service.id, service)
  }

  /** Stop every timer and abort in-flight probes; resolves when their sockets are gone. Safe twice. */
  close (): Promise<void> {
    this.#closing ??= Promise.all(this.#stopAll()).then(() => {})
    return this.#closing
  }

  /** Same as close(), without waiting: probes are aborted either way. */
  destroy (): void {
    void this.close()
  }

  #stopAll (): Array<Promise<void>> {
    this.#closed = true
    this.#unsubscribe?.()
    this.#upstream.off('transition', this.#onTransition)
    const pending: Array<Promise<void>> = []
    for (const service of this.#services.values()) {
      for (const entry of service.backends.values()) {
        if (entry.prober !== undefined) pending.push(entry.prober.stop())
        entry.prober = undefined
        clearTimeout(entry.passiveRelease)
        entry.passiveRelease = undefined
      }
    }
    this.#services.clear()
    return pending
  }

  readonly #onChange = (events: readonly ChangeEvent[]): void => {
    for (const event of events) {
      if (event.kind !== 'service') continue
      // A throw here would reach the store after the change is committed: log it instead.
      try {
        this.#reconcile(event.id, event.after)
      } catch (err) {
        this.#logger.error({ err, serviceId: event.id }, 'health checker: cannot apply service change')
      }
    }
  }

  /** Make probers and metric series match one service (undefined: deleted). */
  #reconcile (serviceId: string, service: EndpointService | undefined): void {
    let entry = this.#services.get(serviceId)
    if (service === undefined || service.status === 'deleted') {
      if (entry === undefined) return
      for (const backend of entry.backends.values()) this.#drop(backend)
      this.#services.delete(serviceId)
      this.#upstream.forget(serviceId)
      return
    }
    if (entry === undefined) {
      entry = { backends: new Map(), portless: false }
      this.#services.set(serviceId, entry)
    }
    const hc = service.healthCheck
    const port = hc.enabled ? healthCheckPort(service) : undefined
    const portless = hc.enabled && port === undefined
    if (portless && !entry.portless && service.backends.length > 0) {
      this.#logger.info({ serviceId }, 'health check enabled but the service has no TCP port and no healthCheck.port: backends are not probed and stay unknown')
    }
    entry.portless = portless

    let restarted = 0
    const wanted = new Set<string>()
    for (const backend of service.backends) {
      wanted.add(backend.id)
      let be = entry.backends.get(backend.id)
      if (be === undefined) {
        be = this.#add(serviceId, backend)
        entry.backends.set(backend.id, be)
      } else {
        this.#relabel(be, backend)
      }
      const settings = port === undefined ? undefined : settingsOf(hc, backend.address, port, service.proxyProtocol)
      if (be.prober?.settings.key === settings?.key) continue
      if (be.prober !== undefined) {
        void be.prober.stop()
        be.prober = undefined
        if (settings !== undefined) restarted++
      }
      if (settings !== undefined) this.#startProber(be, settings)
      else this.#probingStopped(be)
    }
    for (const [id, be] of entry.backends) {
      if (wanted.has(id)) continue
      this.#drop(be)
      entry.backends.delete(id)
      this.#upstream.forget(serviceId, id)
    }
    if (restarted > 0) {
      this.#logger.info({ serviceId, probers: restarted, healthCheck: hc, port }, 'health check settings changed: probers restarted')
    }
  }

  #add (serviceId: string, backend: Backend): BackendEntry {
    const labels = labelsOf(serviceId, backend)
    const be: BackendEntry = {
      serviceId,
      backendId: backend.id,
      labels,
      gauge: this.#metrics.backendUp.labels(labels),
      prober: undefined,
      activeUnhealthy: false,
      passiveRelease: undefined
    }
    this.#publish(be)
    return be
  }

  /** A backend's address or zone changed: move its series to the new labels. */
  #relabel (be: BackendEntry, backend: Backend): void {
    if (be.labels.address !== backend.address || be.labels.zone !== backend.zone) {
      this.#metrics.backendUp.remove(be.labels)
      be.labels = labelsOf(be.serviceId, backend)
      be.gauge = this.#metrics.backendUp.labels(be.labels)
    }
    this.#publish(be)
  }

  #publish (be: BackendEntry): void {
    be.gauge.set(this.#upstream.backendHealth(be.serviceId, be.backendId) === 'unhealthy' ? 0 : 1)
  }

  /** A removed backend (or deleted service): no prober, no timer, no series. */
  #drop (be: BackendEntry): void {
    if (be.prober !== undefined) void be.prober.stop()
    be.prober = undefined
    clearTimeout(be.passiveRelease)
    be.passiveRelease = undefined
    this.#metrics.backendUp.remove(be.labels)
  }

  #startProber (be: BackendEntry, settings: ProbeSettings): void {
    clearTimeout(be.passiveRelease)
    be.passiveRelease = undefined
    const prober = new Prober(settings, (p, result) => { this.#onResult(be, p, result) })
    be.prober = prober
    prober.start()
  }

  /** Checks turned off for this backend: release the checker's own verdict; passive ones expire. */
  #probingStopped (be: BackendEntry): void {
    if (be.activeUnhealthy) {
      be.activeUnhealthy = false
      this.#upstream.setHealth(this.#upstream.record(be.serviceId, be.backendId), 'healthy', 'active health check turned off')
    }
    this.#armPassiveRelease(be)
  }

  #onResult (be: BackendEntry, prober: Prober, result: ProbeResult): void {
    if (prober !== be.prober) return
    // Looked up each time rather than kept: a record the data plane forgot and re-created
    // still gets this backend's verdicts.
    const rec = this.#upstream.record(be.serviceId, be.backendId)
    const s = prober.settings
    if (!result.ok && result.local === true) {
      // The probe could not even start here (EMFILE...): no verdict either way (SPEC §10 "Local
      // trouble is not the backend's fault"); the counters keep their streaks.
      this.#localTroubleLog.run((suppressed) => {
        this.#logger.warn({ serviceId: be.serviceId, backendId: be.backendId, reason: result.reason, suppressed },
          'health check could not run for lack of local resources: no verdict')
      })
      return
    }
    if (result.ok) {
      prober.failures = 0
      prober.successes++
      if (prober.successes >= s.healthyThreshold) {
        be.activeUnhealthy = false
        if (rec.health !== 'healthy') {
          this.#upstream.setHealth(rec, 'healthy', `${s.protocol} check passed ${prober.successes} time(s) in a row`)
        }
      } else if (rec.health === 'unhealthy' && !be.activeUnhealthy) {
        this.#upstream.setHealth(rec, 'healthy', `${s.protocol} check passed after passive failures`)
      }
    } else {
      prober.successes = 0
      prober.failures++
      if (prober.failures >= s.unhealthyThreshold) {
        be.activeUnhealthy = true
        if (rec.health !== 'unhealthy') {
          this.#upstream.setHealth(rec, 'unhealthy', `${result.reason} (${s.protocol} check failed ${prober.failures} time(s) in a row)`)
        }
      }
    }
  }

  readonly #onTransition = (t: HealthTransition): void => {
    this.#logger.info({ serviceId: t.serviceId, backendId: t.backendId, from: t.from, to: t.to, reason: t.reason }, 'backend health changed')
    const be = this.#services.get(t.serviceId)?.backends.get(t.backendId)
    if (be === undefined) return
    be.gauge.set(t.to === 'unhealthy' ? 0 : 1)
    if (t.to === 'unhealthy') {
      this.#armPassiveRelease(be)
    } else {
      clearTimeout(be.passiveRelease)
      be.passiveRelease = undefined
    }
  }

  /** A passive verdict on a backend without active checks expires (see the header comment). */
  #armPassiveRelease (be: BackendEntry): void {
    if (this.#closed || be.prober !== undefined || be.passiveRelease !== undefined) return
    if (this.#upstream.backendHealth(be.serviceId, be.backendId) !== 'unhealthy') return
    be.passiveRelease = setTimeout(() => {
      be.passiveRelease = undefined
      this.#upstream.setHealth(this.#upstream.record(be.serviceId, be.backendId), 'healthy',
        `passive verdict expired after ${this.#passiveEjectionMs / 1000} s (no active health check)`)
    }, this.#passiveEjectionMs)
    be.passiveRelease.unref()
  }
}

function labelsOf (serviceId: string, backend: Backend): BackendUpLabels {
  return { service_id: serviceId, backend_id: backend.id, address: backend.address, zone: backend.zone }
}
