// The control plane's resources, as SPEC §3 describes them. Everything the store hands out is
// deep-frozen: the data plane and DNS may keep references without copying.

export type Protocol = 'TCP' | 'UDP'

export interface PortMapping {
  readonly protocol: Protocol
  readonly servicePort: number
  readonly terminalPort: number
}

export interface Backend {
  readonly id: string
  readonly address: string
  readonly zone: string
  readonly weight: number
}

export interface HealthCheck {
  readonly enabled: boolean
  readonly protocol: 'TCP' | 'HTTP'
  /** Absent: the first TCP servicePort (see `healthCheckPort`). */
  readonly port?: number
  readonly path: string
  readonly intervalSeconds: number
  readonly timeoutSeconds: number
  readonly healthyThreshold: number
  readonly unhealthyThreshold: number
}

/** Service states (SPEC §3). Local creation is synchronous, so a stored service is `available`. */
export type ServiceStatus = 'creating' | 'available' | 'failed' | 'deleting' | 'deleted'

/** PROXY protocol header toward the backends of a service's TCP mappings (SPEC §13). */
export type ProxyProtocol = 'off' | 'v1' | 'v2'

export interface EndpointService {
  readonly id: string
  readonly name?: string
  readonly serviceName: string
  readonly ownerAccountId: string
  readonly status: ServiceStatus
  readonly acceptanceRequired: boolean
  readonly sameZonePreferred: boolean
  readonly portMappings: readonly PortMapping[]
  readonly backends: readonly Backend[]
  readonly healthCheck: HealthCheck
  /** TCP only; applies to connections accepted after a change. Absent (a record from before SPEC §13): off. */
  readonly proxyProtocol?: ProxyProtocol
  readonly allowedAccounts: readonly string[]
  readonly createdAt: string
}

export type EndpointStatus = 'pendingAcceptance' | 'creating' | 'accepted' | 'rejected' | 'failed' | 'deleting'

/**
 * Allowed endpoint transitions, in one place (STYLE habit 5).
 * accept/reject are the provider's decision; `failed` comes from the data plane (bind error).
 * A rejected endpoint may still be accepted later, as on AWS ("reject" is not final there either).
 * failed → accepted only by the data plane, when a bind failure heals (SPEC §10); the provider
 * cannot accept a failed endpoint.
 */
// pendingAcceptance/rejected → failed: their endpoint service was deleted (ControlPlane.deleteService).
export const endpointTransitions: Readonly<Record<EndpointStatus, readonly EndpointStatus[]>> = {
  pendingAcceptance: ['accepted', 'rejected', 'failed', 'deleting'],
  creating: ['accepted', 'failed', 'deleting'],
  accepted: ['rejected', 'failed', 'deleting'],
  rejected: ['accepted', 'failed', 'deleting'],
  failed: ['accepted', 'deleting'],
  deleting: []
}

/** How the data plane's bind-failure reasons begin (`bind 127.0.0.1:80: EADDRINUSE ...`). */
export const BIND_FAILURE_PREFIX = 'bind '

/** Failed because a listener could not be bound: the data plane keeps retrying (SPEC §10). */
export function isBindFailure (endpoint: Pick<Endpoint, 'status' | 'statusReason'>): boolean {
  return endpoint.status === 'failed' && endpoint.statusReason?.startsWith(BIND_FAILURE_PREFIX) === true
}

export interface Endpoint {
  readonly id: string
  readonly serviceId: string
  readonly serviceName: string
  readonly ownerAccountId: string
  readonly subnetId: string
  readonly zone: string
  readonly ip: string
  readonly privateDns: boolean
  readonly allowedSources: readonly string[]
  readonly status: EndpointStatus
  readonly statusReason?: string
  readonly dnsNames: readonly string[]
  readonly createdAt: string
}

export interface State {
  readonly services: Readonly<Record<string, EndpointService>>
  readonly endpoints: Readonly<Record<string, Endpoint>>
}

export type ChangeAction = 'created' | 'updated' | 'deleted'

/**
 * One committed change of one resource, carrying what changed: `before` is undefined for
 * `created`, `after` for `deleted`. Consumers act on these alone, so they never rescan the state.
 */
export type ChangeEvent =
  | { readonly kind: 'service', readonly action: ChangeAction, readonly id: string, readonly before: EndpointService | undefined, readonly after: EndpointService | undefined }
  | { readonly kind: 'endpoint', readonly action: ChangeAction, readonly id: string, readonly before: Endpoint | undefined, readonly after: Endpoint | undefined }

export type BackendHealth = 'healthy' | 'unhealthy' | 'unknown'

/** Implemented by the data plane's health checker; the API reads backend health through it. */
export interface HealthSource {
  backendHealth (serviceId: string, backendId: string): BackendHealth
}

export function healthCheckPort (service: Pick<EndpointService, 'healthCheck' | 'portMappings'>): number | undefined {
  if (service.healthCheck.port !== undefined) return service.healthCheck.port
  return service.portMappings.find((m) => m.protocol === 'TCP')?.servicePort
}

export function deepFreeze<T> (value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const key of Object.keys(value)) deepFreeze((value as Record<string, unknown>)[key])
  }
  return value
}
