// Messages between the main thread and a data-plane worker (SPEC §11). Everything in them is
// structured-cloneable: the config, store resources, and the SharedArrayBuffers of the counters.
import type { BackendHealth, Endpoint, EndpointService } from '../../control/model.ts'
import type { Config } from '../../control/schemas.ts'
import type { MetricsJson } from '../../metrics/metrics.ts'

export interface WorkerData {
  readonly index: number
  readonly config: Config
  readonly maxConnections: number
  readonly counters: SharedArrayBuffer
  readonly own: SharedArrayBuffer
  /** BigInt64 slot 0: when (Date.now()) any worker last logged an access-log write error. */
  readonly logGate: SharedArrayBuffer
  readonly services: EndpointService[]
  readonly endpoints: Endpoint[]
  /** endpoint id -> counter slot */
  readonly slots: Array<[string, number]>
  /** Verdicts other than `unknown`: [serviceId, backendId, health]. */
  readonly health: Array<[string, string, BackendHealth]>
  /** Cluster mode (SPEC §12): the endpoint IPs this node serves; null: every IP. */
  readonly served: string[] | null
}

export type StoreChangeMessage =
  | { readonly kind: 'service', readonly id: string, readonly after: EndpointService | undefined }
  | { readonly kind: 'endpoint', readonly id: string, readonly after: Endpoint | undefined }

/** A spare's workerData: it loads its modules and waits for an `activate` message. */
export interface SpareData {
  readonly spare: true
}

/** Main -> worker. */
export type ToWorker =
  | { readonly type: 'activate', readonly data: WorkerData }
  | { readonly type: 'changes', readonly changes: StoreChangeMessage[], readonly slots: Array<[string, number]> }
  | { readonly type: 'health', readonly serviceId: string, readonly backendId: string, readonly to: BackendHealth, readonly reason: string }
  | { readonly type: 'metrics', readonly id: number }
  | { readonly type: 'close', readonly graceMs: number }
  | { readonly type: 'served', readonly add: string[], readonly remove: string[] }

/** Worker -> main. */
export type FromWorker =
  | { readonly type: 'ready', readonly dns: { readonly udp: AddressLike, readonly tcp: AddressLike } }
  /** A spare has loaded its modules and waits for `activate`. */
  | { readonly type: 'spareLoaded' }
  | { readonly type: 'fatal', readonly message: string }
  | { readonly type: 'passive', readonly serviceId: string, readonly backendId: string, readonly ok: boolean, readonly reason: string }
  | { readonly type: 'endpointFailed', readonly endpointId: string, readonly reason: string }
  | { readonly type: 'endpointRecovered', readonly endpointId: string }
  | { readonly type: 'metrics', readonly id: number, readonly metrics: MetricsJson }
  | { readonly type: 'closed' }

export interface AddressLike {
  readonly address: string
  readonly family: string
  readonly port: number
}
