// The control plane's rules (SPEC §3, §4): ownership, naming, quotas, acceptance, IP allocation.
// Bodies are validated at the edge with the shared schemas; every change goes through one
// store transaction, so a refused request changes nothing and an accepted one is on disk
// before it is acknowledged.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import {
  ConfigError, conflict, forbidden, invalidParameter, isLinkgateError, notFound, quotaExceeded, unauthorized
} from '../errors.ts'
import { endpointDnsNames } from './dns-names.ts'
import { allocateIp, ipToBigInt, normalizeIp } from './ip-allocation.ts'
import {
  endpointTransitions, isBindFailure, type Backend, type ChangeEvent, type Endpoint, type EndpointService,
  type EndpointStatus, type HealthCheck, type HealthSource, type PortMapping
} from './model.ts'
import { mergePatch } from './merge-patch.ts'
import { mergeSources, offsetOf, pageOf, parsePageRequest, type Page } from './pagination.ts'
import {
  AllowedAccountBody, BackendInput, BackendList, BackendMutable, BackendPatch, EndpointCreate, EndpointMutable, EndpointPatch,
  ServiceCreate, ServiceMutable, ServicePatch,
  type BackendInputT, type BackendMutableInput, type Config, type ConfigEndpoint, type ConfigService,
  type EndpointCreateInput, type EndpointMutableInput, type ServiceCreateInput, type ServiceMutableInput, type ServicePatchInput
} from './schemas.ts'
import { MemoryView, type Draft, type Store } from './store.ts'
import { validate } from './validation.ts'

export interface Caller {
  readonly id: string
  readonly name: string
}

export type BackendView = Backend & { health: ReturnType<HealthSource['backendHealth']> }
export type ServiceView = Omit<EndpointService, 'backends'> & { backends: BackendView[] }

export interface ConnectionView {
  id: string
  ownerAccountId: string
  status: EndpointStatus
  ip: string
  zone: string
  subnetId: string
  createdAt: string
}

/** What a consumer sees of a service it may connect to: no backends, no allow-list. */
export interface AvailableServiceView {
  id: string
  name?: string
  serviceName: string
  ownerAccountId: string
  acceptanceRequired: boolean
  portMappings: readonly PortMapping[]
  zones: string[]
}

const at = (prefix: string, field: string): string => (prefix === '' ? field : `${prefix}.${field}`)

/** `taken` is a draft's records: `in` is one keyed lookup. */
function newId (prefix: string, bytes: number, taken: Readonly<Record<string, unknown>>): string {
  for (;;) {
    const id = prefix + randomBytes(bytes).toString('hex')
    if (!(id in taken)) return id
  }
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest()

export class ControlPlane {
  readonly #config: Config
  readonly #store: Store
  readonly #health: HealthSource
  readonly #tokens: ReadonlyArray<{ digest: Buffer, caller: Caller }>
  readonly #subnets: ReadonlyMap<string, Config['subnets'][number]>
  readonly #zones: ReadonlySet<string>
  /**
   * Per subnet, where the search for the lowest free address starts: every address below it
   * is taken. Lowered when an endpoint gives its address back, so allocation does not rescan
   * the used addresses of a full subnet on every create.
   */
  readonly #ipHints = new Map<string, bigint>()

  constructor (config: Config, store: Store, health: HealthSource) {
    this.#config = config
    this.#store = store
    this.#health = health
    this.#tokens = config.accounts.map((a) => ({ digest: sha256(a.token), caller: { id: a.id, name: a.name } }))
    this.#subnets = new Map(config.subnets.map((s) => [s.id, s]))
    this.#zones = new Set(config.zones)
    store.subscribe(this.#onChanges)
  }

  readonly #onChanges = (events: readonly ChangeEvent[]): void => {
    for (const e of events) {
      if (e.kind !== 'endpoint' || e.before === undefined || e.after?.ip === e.before.ip) continue
      const hint = this.#ipHints.get(e.before.subnetId)
      if (hint === undefined) continue
      const freed = ipToBigInt(e.before.ip)
      if (freed !== undefined && freed < hint) this.#ipHints.set(e.before.subnetId, freed)
    }
  }

  // ---- authentication ----

  /**
   * `Authorization: Bearer <token>` → the account. Tokens are compared as SHA-256 digests with
   * timingSafeEqual against every account, so neither the length nor the position of a match leaks.
   */
  authenticate (header: string | undefined): Caller {
    // The scheme word is case-insensitive (RFC 9110 §11.1); one or more spaces before the token.
    const m = header === undefined ? null : /^bearer +([\x21-\x7e]+) *$/i.exec(header)
    if (m === null) throw unauthorized()
    const digest = sha256(m[1] as string)
    let found: Caller | undefined
    for (const { digest: known, caller } of this.#tokens) {
      if (timingSafeEqual(digest, known)) found = caller
    }
    if (found === undefined) throw unauthorized('Authorization: unknown bearer token')
    return found
  }

  // ---- endpoint services (provider) ----

  serviceView (svc: EndpointService): ServiceView {
    return { ...svc, proxyProtocol: svc.proxyProtocol ?? 'off', backends: svc.backends.map((b) => ({ ...b, health: this.#health.backendHealth(svc.id, b.id) })) }
  }

  listServices (caller: Caller, query?: unknown): Page<ServiceView> {
    const { limit, after } = parsePageRequest(query)
    const services = this.#store.state.services
    return pageOf(this.#store.page('serviceOwner', caller.id, after, limit + 1), limit, (id) => {
      const s = services[id]
      return s === undefined ? undefined : this.serviceView(s)
    })
  }

  getService (caller: Caller, id: string): ServiceView {
    return this.serviceView(this.#ownService(this.#store.state, caller, id))
  }

  async createService (caller: Caller, body: unknown): Promise<ServiceView> {
    const input = validate<ServiceCreateInput>(ServiceCreate, body)
    const svc = await this.#store.transact((draft) => {
      const id = newId('vpcesvc-', 6, draft.services)
      const created = this.#buildService(id, caller.id, input, '', new Date().toISOString())
      const owned = draft.count('serviceOwner', caller.id)
      const quota = this.#config.quotas.servicesPerAccount
      if (owned >= quota) {
        throw quotaExceeded(`servicesPerAccount: account ${caller.id} already has ${owned} endpoint services (quota ${quota})`)
      }
      draft.services[id] = created
      return created
    })
    return this.serviceView(svc)
  }

  /** A JSON merge patch (RFC 7396, SPEC §10), validated on the merged result. */
  async patchService (caller: Caller, id: string, body: unknown): Promise<ServiceView> {
    const input = validate<ServicePatchInput>(ServicePatch, body)
    const svc = await this.#store.transact((draft) => {
      const current = this.#ownService(draft, caller, id)
      if ('portMappings' in input) throw conflict('portMappings: immutable after creation; create a new endpoint service')
      if ('name' in input) throw conflict('name: immutable after creation (it is part of serviceName)')
      const { acceptanceRequired, sameZonePreferred, healthCheck, proxyProtocol = 'off' } = current
      const merged = validate<ServiceMutableInput>(ServiceMutable, mergePatch({ acceptanceRequired, sameZonePreferred, healthCheck, proxyProtocol }, input))
      const next: EndpointService = {
        ...current,
        acceptanceRequired: merged.acceptanceRequired,
        sameZonePreferred: merged.sameZonePreferred,
        healthCheck: this.#checkHealth(merged.healthCheck as HealthCheck, current.portMappings, 'healthCheck'),
        proxyProtocol: merged.proxyProtocol
      }
      if (JSON.stringify(next) === JSON.stringify(current)) return current
      draft.services[id] = next
      return next
    })
    return this.serviceView(svc)
  }

  async deleteService (caller: Caller, id: string): Promise<void> {
    // A cluster's transaction holds a bounded number of keys (etcd's --max-txn-ops): endpoints
    // left behind past that many are failed in further steps. Meanwhile they are pending or
    // rejected, which nothing serves; a node that dies between steps leaves them so (README).
    const step = Math.max(2, this.#store.maxWritesPerTransaction ?? Infinity)
    let more = await this.#store.transact((draft) => {
      this.#ownService(draft, caller, id)
      const endpoints = draft.ids('endpointService', id).map((eid) => draft.endpoints[eid] as Endpoint)
      const live = endpoints.filter((e) => e.status === 'accepted' || e.status === 'creating')
      if (live.length > 0) {
        throw conflict(`id: endpoint service ${id} has ${live.length} accepted endpoint(s) (${live.slice(0, 20).map((e) => e.id).join(', ')}${live.length > 20 ? ', ...' : ''}); reject or delete them first`)
      }
      delete draft.services[id]
      return this.#failLeftBehind(draft, id, endpoints, step - 1)
    })
    while (more) {
      more = await this.#store.transact((draft) => draft.services[id] === undefined &&
        this.#failLeftBehind(draft, id, draft.ids('endpointService', id).map((eid) => draft.endpoints[eid] as Endpoint), step))
    }
  }

  /**
   * Endpoints left behind by a deleted service (pending, rejected) can never connect again: fail
   * up to `limit` of them with the reason, through the transition table like every other status
   * change. True when more are left.
   */
  #failLeftBehind (draft: Draft, id: string, endpoints: readonly Endpoint[], limit: number): boolean {
    const left = endpoints.filter((ep) => ep.status !== 'failed')
    for (const ep of left.slice(0, limit)) {
      this.#transition(ep, 'failed')
      draft.endpoints[ep.id] = this.#withStatus({ ...ep, statusReason: `endpoint service ${id} was deleted` }, 'failed')
    }
    return left.length > limit
  }

  // ---- backends ----

  async replaceBackends (caller: Caller, id: string, body: unknown): Promise<BackendView[]> {
    const input = validate<BackendInputT[]>(BackendList, body, 'backends')
    const svc = await this.#updateService(caller, id, (current) => ({
      ...current, backends: this.#buildBackends(input, 'backends', current.backends)
    }))
    return this.serviceView(svc).backends
  }

  async addBackend (caller: Caller, id: string, body: unknown): Promise<BackendView> {
    const input = validate<BackendInputT>(BackendInput, body)
    let added: Backend | undefined
    const svc = await this.#updateService(caller, id, (current) => {
      const [backend] = this.#buildBackends([input], '', [], current.backends)
      added = backend
      return { ...current, backends: [...current.backends, backend as Backend] }
    })
    return this.serviceView(svc).backends.find((b) => b.id === added?.id) as BackendView
  }

  /** A JSON merge patch of `zone` and `weight`; `zone: null` is a 400 (it is required). */
  async patchBackend (caller: Caller, id: string, backendId: string, body: unknown): Promise<BackendView> {
    const input = validate<Record<string, unknown>>(BackendPatch, body)
    const svc = await this.#updateService(caller, id, (current) => {
      const index = this.#backendIndex(current, backendId)
      const backend = current.backends[index] as Backend
      const merged = validate<BackendMutableInput>(BackendMutable, mergePatch({ zone: backend.zone, weight: backend.weight }, input))
      this.#checkZone(merged.zone, 'zone')
      if (merged.zone === backend.zone && merged.weight === backend.weight) return current
      const backends = [...current.backends]
      backends[index] = { ...backend, zone: merged.zone, weight: merged.weight }
      return { ...current, backends }
    })
    return this.serviceView(svc).backends.find((b) => b.id === backendId) as BackendView
  }

  async deleteBackend (caller: Caller, id: string, backendId: string): Promise<void> {
    await this.#updateService(caller, id, (current) => {
      this.#backendIndex(current, backendId)
      return { ...current, backends: current.backends.filter((b) => b.id !== backendId) }
    })
  }

  // ---- allowed accounts ----

  listAllowedAccounts (caller: Caller, id: string, query?: unknown): Page<string> {
    const { limit, after } = parsePageRequest(query)
    const accounts = this.#ownService(this.#store.state, caller, id).allowedAccounts
    const from = offsetOf(after)
    const keys = accounts.slice(from, from + limit + 1).map((_a, i) => String(from + i + 1))
    return pageOf(keys, limit, (key) => accounts[Number(key) - 1])
  }

  async addAllowedAccount (caller: Caller, id: string, body: unknown): Promise<string[]> {
    const { accountId } = validate<{ accountId: string }>(AllowedAccountBody, body)
    const svc = await this.#updateService(caller, id, (current) =>
      current.allowedAccounts.includes(accountId)
        ? current
        : { ...current, allowedAccounts: [...current.allowedAccounts, accountId] })
    return [...svc.allowedAccounts]
  }

  async removeAllowedAccount (caller: Caller, id: string, accountId: string): Promise<void> {
    await this.#updateService(caller, id, (current) => {
      if (!current.allowedAccounts.includes(accountId)) {
        throw notFound(`accountId: ${accountId} is not in the allowed accounts of ${id}`)
      }
      // Existing endpoints stay connected, as on AWS: the allow-list gates new endpoints only.
      return { ...current, allowedAccounts: current.allowedAccounts.filter((a) => a !== accountId) }
    })
  }

  // ---- connections (the provider's view of endpoints to its service) ----

  listConnections (caller: Caller, id: string, query?: unknown): Page<ConnectionView> {
    const { limit, after } = parsePageRequest(query)
    this.#ownService(this.#store.state, caller, id)
    const endpoints = this.#store.state.endpoints
    return pageOf(this.#store.page('endpointService', id, after, limit + 1), limit, (eid) => {
      const e = endpoints[eid]
      return e === undefined
        ? undefined
        : { id: e.id, ownerAccountId: e.ownerAccountId, status: e.status, ip: e.ip, zone: e.zone, subnetId: e.subnetId, createdAt: e.createdAt }
    })
  }

  async decideConnection (caller: Caller, id: string, endpointId: string, decision: 'accepted' | 'rejected'): Promise<ConnectionView> {
    const ep = await this.#store.transact((draft) => {
      this.#ownService(draft, caller, id)
      const current = draft.endpoints[endpointId]
      if (current === undefined || current.serviceId !== id) {
        throw notFound(`endpointId: no endpoint ${endpointId} connects to ${id}`)
      }
      if (current.status === decision) return current
      // failed → accepted belongs to the data plane (a bind that heals), not to the provider.
      if (current.status === 'failed') throw conflict(`status: endpoint ${endpointId} is failed and cannot become ${decision}`)
      this.#transition(current, decision)
      const next = this.#withStatus(current, decision)
      draft.endpoints[endpointId] = next
      return next
    })
    return { id: ep.id, ownerAccountId: ep.ownerAccountId, status: ep.status, ip: ep.ip, zone: ep.zone, subnetId: ep.subnetId, createdAt: ep.createdAt }
  }

  // ---- consumer side ----

  availableServices (caller: Caller, name?: string, query?: unknown): Page<AvailableServiceView> {
    const { limit, after } = parsePageRequest(query)
    const store = this.#store
    const services = store.state.services
    let keys: string[]
    if (name === undefined || name === '') {
      // Own, allowed by id, allowed to everyone: three ordered indexes, merged.
      keys = mergeSources([
        (from, n) => store.page('serviceOwner', caller.id, from, n),
        (from, n) => store.page('serviceAllowed', caller.id, from, n),
        (from, n) => store.page('serviceAllowed', '*', from, n)
      ], after, limit + 1)
    } else {
      // Services of one name are few; those the caller may not see are skipped.
      keys = []
      for (let from = after; keys.length <= limit;) {
        const chunk = store.page('serviceName', name, from, limit + 1)
        for (const id of chunk) if (this.#mayConnect(services[id] as EndpointService, caller.id)) keys.push(id)
        if (chunk.length <= limit) break
        from = chunk[chunk.length - 1]
      }
      keys = keys.slice(0, limit + 1)
    }
    return pageOf(keys, limit, (id) => {
      const s = services[id]
      return s === undefined ? undefined : this.#availableView(s, caller)
    })
  }

  #availableView (s: EndpointService, caller: Caller): AvailableServiceView {
    return ({
        id: s.id,
        ...(s.name === undefined ? {} : { name: s.name }),
        serviceName: s.serviceName,
        ownerAccountId: s.ownerAccountId,
        acceptanceRequired: s.acceptanceRequired && s.ownerAccountId !== caller.id,
        portMappings: s.portMappings,
        zones: [...new Set(s.backends.map((b) => b.zone))].sort()
      })
  }

  listEndpoints (caller: Caller, query?: unknown): Page<Endpoint> {
    const { limit, after } = parsePageRequest(query)
    const endpoints = this.#store.state.endpoints
    return pageOf(this.#store.page('endpointOwner', caller.id, after, limit + 1), limit, (id) => endpoints[id])
  }

  getEndpoint (caller: Caller, id: string): Endpoint {
    return this.#ownEndpoint(this.#store.state, caller, id)
  }

  createEndpoint (caller: Caller, body: unknown): Promise<Endpoint> {
    const input = validate<EndpointCreateInput>(EndpointCreate, body)
    return this.#store.transact((draft) => {
      const id = newId('vpce-', 6, draft.endpoints)
      const ep = this.#buildEndpoint(draft, id, caller.id, input, '', new Date().toISOString())
      const quota = this.#config.quotas.endpointsPerAccount
      const owned = draft.count('endpointOwner', caller.id)
      if (owned >= quota) {
        throw quotaExceeded(`endpointsPerAccount: account ${caller.id} already has ${owned} endpoints (quota ${quota})`)
      }
      draft.endpoints[id] = ep
      return ep
    })
  }

  /** A JSON merge patch of `allowedSources` and `privateDns`; `null` restores the default. */
  patchEndpoint (caller: Caller, id: string, body: unknown): Promise<Endpoint> {
    const input = validate<Record<string, unknown>>(EndpointPatch, body)
    return this.#store.transact((draft) => {
      const current = this.#ownEndpoint(draft, caller, id)
      const merged = validate<EndpointMutableInput>(EndpointMutable,
        mergePatch({ allowedSources: current.allowedSources, privateDns: current.privateDns }, input))
      const next = this.#withStatus({ ...current, allowedSources: merged.allowedSources, privateDns: merged.privateDns }, current.status)
      if (JSON.stringify(next) === JSON.stringify(current)) return current
      draft.endpoints[id] = next
      return next
    })
  }

  async deleteEndpoint (caller: Caller, id: string): Promise<void> {
    await this.#store.transact((draft) => {
      this.#ownEndpoint(draft, caller, id)
      delete draft.endpoints[id]
    })
  }

  // ---- from the data plane (via app wiring) ----

  /** A listener could not be bound: the endpoint is `failed` with the reason (SPEC §3). */
  async markEndpointFailed (id: string, reason: string): Promise<void> {
    await this.#store.transact((draft) => {
      const current = draft.endpoints[id]
      if (current === undefined || current.status !== 'accepted') return
      draft.endpoints[id] = this.#withStatus({ ...current, statusReason: reason }, 'failed')
    })
  }

  /** The data plane bound every listener of an endpoint that had failed to bind: accepted again (SPEC §10). */
  async markEndpointRecovered (id: string): Promise<void> {
    await this.#store.transact((draft) => {
      const current = draft.endpoints[id]
      if (current === undefined || !isBindFailure(current)) return
      this.#transition(current, 'accepted')
      draft.endpoints[id] = this.#withStatus(current, 'accepted')
    })
  }

  // ---- declarative resources from the config file (SPEC §8) ----

  /**
   * Apply `services:` and `endpoints:` of the config, idempotently: a declared resource that is
   * missing is created with the API's rules; one that exists is brought to the declared fields
   * (status and createdAt are kept). Nothing is written when everything already matches, and
   * nothing at all when any declared resource breaks a rule: a ConfigError lists every one.
   */
  async applyDeclared (services: readonly ConfigService[], endpoints: readonly ConfigEndpoint[]): Promise<void> {
    await this.#store.transact((draft) => {
      const errors = this.#declare(draft, services, endpoints)
      if (errors.length > 0) throw new ConfigError('declared resources', errors)
    })
  }

  /**
   * The rules of applyDeclared against an empty state, writing nothing: `check-config` and the
   * config loader run it, so that both report what `start` would refuse (SPEC §10).
   */
  static checkDeclared (config: Config, brokenServiceIds: Iterable<string> = []): string[] {
    // Nothing is stored: the rules run on a draft of an empty in-memory view.
    const nowhere = { subscribe: () => () => {} } as unknown as Store
    const dryRun = new ControlPlane(config, nowhere, { backendHealth: () => 'unknown' })
    return dryRun.#declare(new MemoryView().draft(), config.services, config.endpoints, brokenServiceIds)
  }

  /** Every declared resource in turn; one that breaks a rule is named in `errors` and left out. */
  #declare (draft: Draft, services: readonly ConfigService[], endpoints: readonly ConfigEndpoint[], alreadyRefused: Iterable<string> = []): string[] {
    const errors: string[] = []
    const refused = new Set<string>(alreadyRefused)
    const seen = new Set<string>()
    const collect = (fn: () => void, id: string): void => {
      // A duplicate id is the config loader's to name (`duplicate service id`); apply the first.
      if (seen.has(id)) return
      seen.add(id)
      try {
        fn()
      } catch (err) {
        if (!isLinkgateError(err)) throw err
        errors.push(err.message)
        refused.add(id)
      }
    }
    services.forEach((decl, i) => collect(() => {
      const prefix = `services[${i}]`
      const { id, ownerAccountId, ...input } = structuredClone(decl) as ConfigService
      const current = draft.services[id]
      if (current !== undefined && current.ownerAccountId !== ownerAccountId) {
        throw conflict(`${prefix}.ownerAccountId: ${id} exists with owner ${current.ownerAccountId}`)
      }
      const built = this.#buildService(id, ownerAccountId, input, prefix, current?.createdAt ?? new Date().toISOString(), current?.backends)
      if (current !== undefined && JSON.stringify(current.portMappings) !== JSON.stringify(built.portMappings)) {
        throw conflict(`${prefix}.portMappings: immutable after creation; ${id} was created with other port mappings`)
      }
      if (current === undefined || JSON.stringify(current) !== JSON.stringify(built)) draft.services[id] = built
    }, decl.id))
    endpoints.forEach((decl, i) => collect(() => {
      const prefix = `endpoints[${i}]`
      const { id, ownerAccountId, ...input } = structuredClone(decl) as ConfigEndpoint
      // Its service was refused above and named there: one error, not a second "not found".
      if (input.serviceId !== undefined && refused.has(input.serviceId)) return
      const current = draft.endpoints[id]
      if (current === undefined) {
        draft.endpoints[id] = this.#buildEndpoint(draft, id, ownerAccountId, input, prefix, new Date().toISOString())
        return
      }
      const next = this.#withStatus({ ...current, allowedSources: input.allowedSources, privateDns: input.privateDns }, current.status)
      if (JSON.stringify(next) !== JSON.stringify(current)) draft.endpoints[id] = next
    }, decl.id))
    return errors
  }

  // ---- rules ----

  #buildService (id: string, owner: string, input: ServiceCreateInput, prefix: string, createdAt: string, keep: readonly Backend[] = []): EndpointService {
    const max = this.#config.quotas.portMappingsPerService
    if (input.portMappings.length > max) {
      throw invalidParameter(`${at(prefix, 'portMappings')}: at most ${max} port mappings (quota portMappingsPerService), got ${input.portMappings.length}`)
    }
    const seen = new Map<string, number>()
    input.portMappings.forEach((m, i) => {
      const key = `${m.protocol}/${m.terminalPort}`
      const first = seen.get(key)
      if (first !== undefined) {
        throw invalidParameter(`${at(prefix, `portMappings[${i}].terminalPort`)}: ${m.protocol} ${m.terminalPort} is already mapped by portMappings[${first}]`)
      }
      seen.set(key, i)
    })
    const portMappings = input.portMappings.map((m) => ({ protocol: m.protocol, servicePort: m.servicePort, terminalPort: m.terminalPort }))
    const healthCheck = this.#checkHealth(input.healthCheck as HealthCheck, portMappings, at(prefix, 'healthCheck'))
    const allowedAccounts = [...new Set(input.allowedAccounts.filter((a) => a !== owner))]
    return {
      id,
      ...(input.name === undefined ? {} : { name: input.name }),
      serviceName: input.name === undefined ? `${this.#config.region}.${id}` : `${this.#config.region}.${input.name}.${id}`,
      ownerAccountId: owner,
      status: 'available',
      acceptanceRequired: input.acceptanceRequired,
      sameZonePreferred: input.sameZonePreferred,
      portMappings,
      backends: this.#buildBackends(input.backends, at(prefix, 'backends'), keep),
      healthCheck,
      proxyProtocol: input.proxyProtocol,
      allowedAccounts,
      createdAt
    }
  }

  #checkHealth (hc: HealthCheck, mappings: readonly PortMapping[], prefix: string): HealthCheck {
    if (hc.timeoutSeconds >= hc.intervalSeconds) {
      throw invalidParameter(`${prefix}.timeoutSeconds: must be less than intervalSeconds (${hc.timeoutSeconds} >= ${hc.intervalSeconds})`)
    }
    if (hc.enabled && hc.port === undefined && !mappings.some((m) => m.protocol === 'TCP') && hc.protocol === 'HTTP') {
      throw invalidParameter(`${prefix}.port: required for an HTTP check on a service without TCP port mappings`)
    }
    return { ...hc }
  }

  #checkZone (zone: string, field: string): void {
    if (!this.#zones.has(zone)) {
      throw invalidParameter(`${field}: unknown zone ${JSON.stringify(zone)} (configured: ${[...this.#zones].join(', ')})`)
    }
  }

  /**
   * Backends from input; `keep` supplies ids for inputs without one that match an existing
   * address (so a PUT of the same set keeps ids, health and live connections); `others` are
   * backends that stay beside the new ones (POST), checked for duplicates too.
   */
  #buildBackends (input: readonly BackendInputT[], prefix: string, keep: readonly Backend[], others: readonly Backend[] = []): Backend[] {
    // SPEC §10: each backend is probed every interval, so the set is bounded.
    const max = this.#config.quotas.backendsPerService
    if (input.length + others.length > max) {
      throw quotaExceeded(`${prefix === '' ? 'backends' : prefix}: at most ${max} backends per service (quota backendsPerService), got ${input.length + others.length}`)
    }
    const out: Backend[] = []
    const ids = new Set(others.map((b) => b.id))
    const addresses = new Map(others.map((b) => [b.address, b.id]))
    const byAddress = new Map(keep.map((b) => [b.address, b.id]))
    input.forEach((b, i) => {
      const path = prefix === '' ? '' : `${prefix}[${i}].`
      this.#checkZone(b.zone, `${path}zone`)
      const address = normalizeIp(b.address)
      const id = b.id ?? (byAddress.get(address) !== undefined && !ids.has(byAddress.get(address) as string)
        ? byAddress.get(address) as string
        : newBackendId(ids))
      if (ids.has(id)) throw invalidParameter(`${path}id: duplicate backend id ${id}`)
      const dup = addresses.get(address)
      if (dup !== undefined) throw invalidParameter(`${path}address: ${address} is already backend ${dup}`)
      ids.add(id)
      addresses.set(address, id)
      out.push({ id, address, zone: b.zone, weight: b.weight })
    })
    return out
  }

  #buildEndpoint (draft: Draft, id: string, owner: string, input: EndpointCreateInput, prefix: string, createdAt: string): Endpoint {
    const svc = this.#resolveService(draft, input, prefix)
    if (!this.#mayConnect(svc, owner)) {
      throw forbidden(`${at(prefix, input.serviceId !== undefined ? 'serviceId' : 'serviceName')}: account ${owner} is not allowed to connect to ${svc.serviceName}`)
    }
    const subnet = this.#subnets.get(input.subnetId)
    if (subnet === undefined) {
      throw invalidParameter(`${at(prefix, 'subnetId')}: unknown subnet ${JSON.stringify(input.subnetId)} (configured: ${[...this.#subnets.keys()].join(', ')})`)
    }
    const inUse = (candidate: string): boolean => draft.count('endpointIp', candidate) > 0
    const ip = allocateIp(subnet, input.ip, inUse, at(prefix, 'ip'), input.ip === undefined ? this.#ipHints.get(subnet.id) : undefined)
    // Every address below the lowest free one is taken: the next search starts there.
    if (input.ip === undefined) this.#ipHints.set(subnet.id, ipToBigInt(ip) as bigint)
    const status: EndpointStatus = svc.ownerAccountId === owner || !svc.acceptanceRequired ? 'accepted' : 'pendingAcceptance'
    return this.#withStatus({
      id,
      serviceId: svc.id,
      serviceName: svc.serviceName,
      ownerAccountId: owner,
      subnetId: subnet.id,
      zone: subnet.zone,
      ip,
      privateDns: input.privateDns,
      allowedSources: input.allowedSources.map((c) => c),
      status,
      dnsNames: [],
      createdAt
    }, status)
  }

  #resolveService (draft: Draft, input: EndpointCreateInput, prefix: string): EndpointService {
    if (input.serviceId === undefined && input.serviceName === undefined) {
      throw invalidParameter(`${at(prefix, 'serviceId')}: one of serviceId or serviceName is required`)
    }
    let svc: EndpointService | undefined
    if (input.serviceId !== undefined) {
      svc = draft.services[input.serviceId]
      if (svc === undefined) throw notFound(`${at(prefix, 'serviceId')}: endpoint service ${input.serviceId} not found`)
    }
    if (input.serviceName !== undefined) {
      const byName = draft.ids('serviceName', input.serviceName).map((sid) => draft.services[sid]).find((s) => s?.serviceName === input.serviceName)
      if (byName === undefined) throw notFound(`${at(prefix, 'serviceName')}: endpoint service ${input.serviceName} not found`)
      if (svc !== undefined && svc.id !== byName.id) {
        throw invalidParameter(`${at(prefix, 'serviceName')}: ${input.serviceName} is not the service ${input.serviceId}`)
      }
      svc = byName
    }
    return svc as EndpointService
  }

  #mayConnect (svc: EndpointService, accountId: string): boolean {
    return svc.ownerAccountId === accountId || svc.allowedAccounts.includes(accountId) || svc.allowedAccounts.includes('*')
  }

  /**
   * The endpoint with `status` and the fields derived from it, in one place: `statusReason`
   * only while failed, DNS names only while accepted with privateDns.
   */
  #withStatus (ep: Endpoint, status: EndpointStatus): Endpoint {
    const { statusReason, ...rest } = ep
    return {
      ...rest,
      ...(status === 'failed' && statusReason !== undefined ? { statusReason } : {}),
      status,
      dnsNames: status === 'accepted' && ep.privateDns ? endpointDnsNames(ep, this.#config) : []
    }
  }

  #transition (ep: Endpoint, to: EndpointStatus): void {
    if (!endpointTransitions[ep.status].includes(to)) {
      throw conflict(`status: endpoint ${ep.id} is ${ep.status} and cannot become ${to}`)
    }
  }

  #ownService (state: { services: Readonly<Record<string, EndpointService>> }, caller: Caller, id: string): EndpointService {
    const svc = state.services[id]
    // Another account's service is 404, never 403: no leak of existence (SPEC §4).
    if (svc === undefined || svc.ownerAccountId !== caller.id) throw notFound(`id: endpoint service ${id} not found`)
    return svc
  }

  #ownEndpoint (state: { endpoints: Readonly<Record<string, Endpoint>> }, caller: Caller, id: string): Endpoint {
    const ep = state.endpoints[id]
    if (ep === undefined || ep.ownerAccountId !== caller.id) throw notFound(`id: endpoint ${id} not found`)
    return ep
  }

  #backendIndex (svc: EndpointService, backendId: string): number {
    const index = svc.backends.findIndex((b) => b.id === backendId)
    if (index < 0) throw notFound(`backendId: backend ${backendId} not found in ${svc.id}`)
    return index
  }

  #updateService (caller: Caller, id: string, change: (current: EndpointService) => EndpointService): Promise<EndpointService> {
    return this.#store.transact((draft) => {
      const current = this.#ownService(draft, caller, id)
      const next = change(current)
      if (next !== current) draft.services[id] = next
      return next
    })
  }
}

function newBackendId (taken: ReadonlySet<string>): string {
  for (;;) {
    const id = 'be-' + randomBytes(4).toString('hex')
    if (!taken.has(id)) return id
  }
}

