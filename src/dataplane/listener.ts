// The contract between the listener reconciler and the per-protocol proxies: one ProxyListener
// per (accepted endpoint, port mapping), bound on `endpoint.ip:mapping.terminalPort`.
import type { Logger } from 'pino'
import type { PortMapping } from '../control/model.ts'
import type { Config } from '../control/schemas.ts'
import type { Metrics } from '../metrics/metrics.ts'
import type { AccessLog } from './access-log.ts'
import type { EndpointRuntime } from './endpoint-runtime.ts'
import type { UpstreamState } from './upstream/upstream-state.ts'

export interface ListenerContext {
  readonly runtime: EndpointRuntime
  readonly mapping: PortMapping
  readonly limits: Config['limits']
  readonly metrics: Metrics
  readonly logger: Logger
  readonly upstream: UpstreamState
  readonly accessLog: AccessLog
}

export interface ProxyListener {
  /** Bind; rejects with the bind error (EADDRINUSE, EADDRNOTAVAIL...) and holds nothing then. */
  listen (): Promise<void>
  /** Stop accepting and end every live connection or flow of this listener now (reason recorded). */
  destroy (reason: CloseReason): void
  /** Stop accepting; resolve when live connections have ended by themselves. */
  close (): Promise<void>
}

export type ListenerFactory = (ctx: ListenerContext) => ProxyListener

/** Why a proxied connection or UDP flow ended; the access log's `closeReason`. */
export type CloseReason = 'client' | 'backend' | 'idle' | 'limit' | 'source' | 'reset' | 'shutdown' | 'no_backend' | 'connect_failed' | 'removed' | 'overload'
