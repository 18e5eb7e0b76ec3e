// One schema per object (STYLE habit 2), shared by the config file and the API bodies.
// Defaults live here; `additionalProperties: false` everywhere, so an unknown field is named.
import { Type, type Static, type TSchema } from '@sinclair/typebox'

/** A string enum as plain JSON Schema `enum`, so the error reads "must be one of TCP, UDP". */
const StringEnum = <const T extends readonly string[]>(values: T, options: object = {}) =>
  Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options })

const strict = { additionalProperties: false } as const

export const Port = Type.Integer({ minimum: 1, maximum: 65535 })
export const IpAddress = Type.String({ format: 'ip' })
export const Cidr = Type.String({ format: 'cidr' })
export const AccountId = Type.String({ pattern: '^[0-9]{12}$' })
export const ServiceId = Type.String({ pattern: '^vpcesvc-[0-9a-f]{12}$' })
export const EndpointId = Type.String({ pattern: '^vpce-[0-9a-f]{12}$' })
export const BackendId = Type.String({ pattern: '^be-[0-9a-f]{8}$' })
export const Zone = Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,31}$' })

export const PortMappingSchema = Type.Object({
  protocol: StringEnum(['TCP', 'UDP'] as const),
  servicePort: Port,
  terminalPort: Port
}, strict)

export const BackendInput = Type.Object({
  id: Type.Optional(BackendId),
  address: IpAddress,
  zone: Zone,
  weight: Type.Integer({ minimum: 0, maximum: 100, default: 100 })
}, strict)

const healthCheckFields = {
  enabled: Type.Boolean({ default: true }),
  protocol: StringEnum(['TCP', 'HTTP'] as const, { default: 'TCP' }),
  port: Type.Optional(Port),
  path: Type.String({ pattern: '^/[\\x21-\\x7e]*$', maxLength: 1024, default: '/' }),
  // Fractions are allowed so tests and aggressive setups can probe faster than once a second.
  intervalSeconds: Type.Number({ minimum: 0.1, maximum: 300, default: 2 }),
  timeoutSeconds: Type.Number({ minimum: 0.05, maximum: 120, default: 1 }),
  healthyThreshold: Type.Integer({ minimum: 1, maximum: 10, default: 2 }),
  unhealthyThreshold: Type.Integer({ minimum: 1, maximum: 10, default: 3 })
}
export const HealthCheckInput = Type.Object(healthCheckFields, strict)
// ---- PATCH bodies: JSON merge patches (RFC 7396, SPEC §10) ----
// A patch schema checks the SHAPE of what was sent: no defaults (a default here would overwrite
// the stored value — the bug of issue 13), `null` allowed wherever a field may be removed. The
// merged result is then validated with the `...Mutable` schema, whose defaults refill removed
// fields and whose `required` refuses the removal of a required one.

/** `schema` that also accepts `null` (a merge patch's "remove this field"). */
function nullable<T extends TSchema> (schema: T): TSchema {
  const { default: _unused, ...rest } = schema as T & { default?: unknown }
  const raw = rest as Record<string, unknown>
  const type = raw.type
  const out: Record<string, unknown> = { ...raw, type: Array.isArray(type) ? [...type, 'null'] : [type, 'null'] }
  if (Array.isArray(raw.enum)) out.enum = [...(raw.enum as unknown[]), null]
  return Type.Unsafe(out)
}

const patchOf = (fields: Record<string, TSchema>): TSchema =>
  Type.Object(Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, Type.Optional(nullable(v))])), strict)

export const HealthCheckPatch = patchOf(healthCheckFields)

/** SPEC §13: PROXY protocol toward the backends (TCP mappings only). */
export const ProxyProtocolSchema = StringEnum(['off', 'v1', 'v2'] as const, { default: 'off' })

export const AllowedAccount = Type.String({ pattern: '^([0-9]{12}|\\*)$' })

const serviceFields = {
  name: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,16}$' })),
  acceptanceRequired: Type.Boolean({ default: false }),
  sameZonePreferred: Type.Boolean({ default: true }),
  portMappings: Type.Array(PortMappingSchema, { minItems: 1 }),
  backends: Type.Array(BackendInput, { default: [] }),
  healthCheck: Type.Object(healthCheckFields, { ...strict, default: {} }),
  proxyProtocol: ProxyProtocolSchema,
  allowedAccounts: Type.Array(AllowedAccount, { default: [] })
}
export const ServiceCreate = Type.Object(serviceFields, strict)

export const ServicePatch = Type.Object({
  acceptanceRequired: Type.Optional(nullable(serviceFields.acceptanceRequired)),
  sameZonePreferred: Type.Optional(nullable(serviceFields.sameZonePreferred)),
  healthCheck: Type.Optional(nullable(HealthCheckPatch)),
  proxyProtocol: Type.Optional(nullable(serviceFields.proxyProtocol)),
  // Immutable after creation: accepted by the schema so the rules can answer 409, not 400.
  portMappings: Type.Optional(Type.Unknown()),
  name: Type.Optional(Type.Unknown())
}, strict)

/** The fields of a service a PATCH may change, after the merge: defaults refill removed ones. */
export const ServiceMutable = Type.Object({
  acceptanceRequired: serviceFields.acceptanceRequired,
  sameZonePreferred: serviceFields.sameZonePreferred,
  healthCheck: serviceFields.healthCheck,
  proxyProtocol: serviceFields.proxyProtocol
}, strict)

export const BackendList = Type.Array(BackendInput)

const backendMutableFields = { zone: Zone, weight: Type.Integer({ minimum: 0, maximum: 100, default: 100 }) }
export const BackendPatch = patchOf(backendMutableFields)
/** `zone` is required: `{"zone": null}` is a 400. */
export const BackendMutable = Type.Object(backendMutableFields, strict)

export const AllowedAccountBody = Type.Object({ accountId: AllowedAccount }, strict)

const endpointFields = {
  serviceId: Type.Optional(ServiceId),
  serviceName: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  subnetId: Type.String({ minLength: 1, maxLength: 64 }),
  ip: Type.Optional(IpAddress),
  privateDns: Type.Boolean({ default: true }),
  allowedSources: Type.Array(Cidr, { maxItems: 64, default: ['0.0.0.0/0', '::/0'] })
}
export const EndpointCreate = Type.Object(endpointFields, strict)

export const EndpointPatch = patchOf({ allowedSources: endpointFields.allowedSources, privateDns: endpointFields.privateDns })
export const EndpointMutable = Type.Object({ allowedSources: endpointFields.allowedSources, privateDns: endpointFields.privateDns }, strict)

// ---- the config file (SPEC §2) ----
const HostPort = Type.String({ format: 'hostport' })
const Subnet = Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }), cidr: Cidr, zone: Zone }, strict)
const Account = Type.Object({
  id: AccountId,
  name: Type.String({ minLength: 1, maxLength: 64 }),
  token: Type.String({ minLength: 8, maxLength: 512 })
}, strict)

export const ConfigSchema = Type.Object({
  region: Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,31}$', default: 'local-1' }),
  listen: Type.Object({
    api: Type.String({ format: 'hostport', default: '127.0.0.1:8480' }),
    dns: Type.String({ format: 'hostport', default: '127.0.0.1:5353' })
  }, { ...strict, default: {} }),
  stateDir: Type.String({ minLength: 1, default: '.linkgate' }),
  dns: Type.Object({
    suffix: Type.String({ format: 'dns-suffix', default: 'privatelink.internal' }),
    ttl: Type.Integer({ minimum: 0, maximum: 86400, default: 30 }),
    upstreams: Type.Array(HostPort, { maxItems: 8, default: [] })
  }, { ...strict, default: {} }),
  zones: Type.Array(Zone, { minItems: 1, default: ['zone-a', 'zone-b'] }),
  subnets: Type.Array(Subnet, {
    default: [
      { id: 'subnet-a', cidr: '127.10.1.0/24', zone: 'zone-a' },
      { id: 'subnet-b', cidr: '127.10.2.0/24', zone: 'zone-b' }
    ]
  }),
  accounts: Type.Array(Account, {
    default: [
      { id: '100000000001', name: 'provider', token: 'provider-dev-token' },
      { id: '100000000002', name: 'consumer', token: 'consumer-dev-token' }
    ]
  }),
  quotas: Type.Object({
    servicesPerAccount: Type.Integer({ minimum: 0, maximum: 100000, default: 20 }),
    endpointsPerAccount: Type.Integer({ minimum: 0, maximum: 100000, default: 50 }),
    portMappingsPerService: Type.Integer({ minimum: 1, maximum: 1000, default: 50 }),
    // SPEC §10: every backend costs a health probe per interval; past it → 409 QuotaExceeded.
    backendsPerService: Type.Integer({ minimum: 1, maximum: 10000, default: 100 })
  }, { ...strict, default: {} }),
  limits: Type.Object({
    maxConnectionsPerEndpoint: Type.Integer({ minimum: 1, maximum: 1000000, default: 3000 }),
    /** Live TCP connections + UDP flows over all endpoints; default derived from RLIMIT_NOFILE at start (SPEC §10). */
    maxConnections: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000000 })),
    connectTimeoutMs: Type.Integer({ minimum: 1, maximum: 60000, default: 3000 }),
    tcpIdleTimeoutSeconds: Type.Number({ minimum: 0.1, maximum: 86400, default: 350 }),
    // Idle limit of a pair once one side sent its FIN (HAProxy's timeout client-fin/server-fin);
    // capped by tcpIdleTimeoutSeconds. README "Limits and failure behaviour".
    tcpHalfCloseTimeoutSeconds: Type.Number({ minimum: 0.1, maximum: 86400, default: 30 }),
    udpIdleTimeoutSeconds: Type.Number({ minimum: 0.1, maximum: 86400, default: 120 }),
    shutdownGraceSeconds: Type.Number({ minimum: 0, maximum: 3600, default: 10 }),
    // SPEC §10: open control-API connections; past it an idle one is closed to make room.
    apiMaxConnections: Type.Integer({ minimum: 1, maximum: 65536, default: 256 })
  }, { ...strict, default: {} }),
  services: Type.Array(Type.Object({ id: ServiceId, ownerAccountId: AccountId, ...serviceFields }, strict), { default: [] }),
  endpoints: Type.Array(Type.Object({ id: EndpointId, ownerAccountId: AccountId, ...endpointFields }, strict), { default: [] }),
  // SPEC §12: cluster mode on etcd; absent = a single node on its SQLite store (README "Cluster").
  cluster: Type.Optional(Type.Object({
    nodeId: Type.String({ pattern: '^[a-z0-9-]{1,32}$' }),
    etcd: Type.Object({
      endpoints: Type.Array(Type.String({ pattern: '^https?://[^/\\s]+/?$', maxLength: 256 }), { minItems: 1, maxItems: 16 }),
      prefix: Type.String({ pattern: '^/(?:[A-Za-z0-9._-]+/)*$', maxLength: 128, default: '/linkgate/' })
    }, strict),
    leaseTtlSeconds: Type.Integer({ minimum: 2, maximum: 30, default: 3 }),
    /** Where owned endpoint IPs are added; absent: the node claims IPs but leaves addresses alone. */
    interface: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,15}$' }))
  }, strict)),
  demo: Type.Boolean({ default: false }),
  // SPEC §11: data-plane worker threads (`linkgate start`); `auto` = os.availableParallelism().
  workers: Type.Union([Type.Literal('auto'), Type.Integer({ minimum: 1, maximum: 256 })], { default: 'auto' }),
  // Extensions beyond SPEC §2 (README "Configuration"): logging and the per-connection access log.
  log: Type.Object({
    level: StringEnum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, { default: 'info' }),
    /** SPEC §14: `auto` is `pretty` when stdout is a terminal, else `json` (one JSON object a line). */
    format: StringEnum(['auto', 'json', 'pretty'] as const, { default: 'auto' }),
    /** `off`, `stdout`, `stderr`, or a file path: one JSON line per finished TCP connection / UDP flow. */
    access: Type.String({ minLength: 1, default: 'off' })
  }, { ...strict, default: {} })
}, strict)

export type ServiceCreateInput = Static<typeof ServiceCreate>
export type ServicePatchInput = Static<typeof ServicePatch>
export type ServiceMutableInput = Static<typeof ServiceMutable>
export type BackendInputT = Static<typeof BackendInput>
export type BackendMutableInput = Static<typeof BackendMutable>
export type EndpointCreateInput = Static<typeof EndpointCreate>
export type EndpointMutableInput = Static<typeof EndpointMutable>
export type Config = Static<typeof ConfigSchema>
export type ConfigService = Config['services'][number]
export type ConfigEndpoint = Config['endpoints'][number]
export type { TSchema }
