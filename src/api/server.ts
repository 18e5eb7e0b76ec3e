// The control API (SPEC §4): HTTP/1.1 + JSON on fastify. Bodies are parsed here and validated
// by the control plane with the shared schemas; every error leaves as
// {"error": {"code", "message"}} with the status of the error catalogue.
import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import type { Logger } from 'pino'
import type { ClusterNodeItem } from '../cluster/cluster-node.ts'
import type { Caller, ControlPlane } from '../control/control-plane.ts'
import {
  internalError, invalidParameter, isLinkgateError, notFound, payloadTooLarge, requestTimeout, unauthorized, unsupportedMediaType,
  type LinkgateError
} from '../errors.ts'
import type { Metrics } from '../metrics/metrics.ts'
import { guardConnections } from './connection-guard.ts'
import { isUnderV1 } from './request-path.ts'
import { DOCS_HEADERS, DOCS_HTML, DOCS_PATH } from './docs-page.ts'
import { documentRoutes, isPublicRoute, OPENAPI_PATH } from './openapi.ts'

export const BODY_LIMIT = 1024 * 1024
/** Past the body limit, this much more is read and thrown away so that the client sees the 413 (SPEC §10). */
export const DISCARD_LIMIT = 16 * 1024 * 1024
/** SPEC §10: headers within 10 s, the whole request within 30 s (else 408), idle keep-alive 5 s. */
export const HEADERS_TIMEOUT_MS = 10_000
export const REQUEST_TIMEOUT_MS = 30_000
export const KEEP_ALIVE_TIMEOUT_MS = 5_000
export const DEFAULT_API_MAX_CONNECTIONS = 256

export interface ApiOptions {
  readonly control: ControlPlane
  readonly metrics: Metrics
  readonly logger: Logger
  /** limits.apiMaxConnections (default 256). */
  readonly maxConnections?: number
  /** The live nodes for `GET /v1/cluster` (SPEC §12); default: none listed. */
  readonly cluster?: () => ClusterNodeItem[]
  /** Why the state store cannot take changes (src/api/readiness.ts): /healthz answers 503 with it. */
  readonly readiness?: () => Promise<string | undefined>
}

/** JSON merge patch (RFC 7396 §4): accepted on PATCH routes besides application/json. */
export const MERGE_PATCH_TYPE = 'application/merge-patch+json'

/** Why a body of this content type is refused (415), or undefined when it is JSON in UTF-8. */
function mediaTypeRefusal (method: string, header: string | undefined): LinkgateError | undefined {
  const expected = method === 'PATCH' ? `application/json or ${MERGE_PATCH_TYPE}` : 'application/json'
  if (header === undefined || header.trim() === '') return unsupportedMediaType(`content-type: missing; send ${expected}`)
  const [type = '', ...params] = header.split(';')
  const mediaType = type.trim().toLowerCase()
  if (mediaType !== 'application/json' && !(method === 'PATCH' && mediaType === MERGE_PATCH_TYPE)) {
    return unsupportedMediaType(`content-type: ${JSON.stringify(mediaType.slice(0, 100))} is not supported; send ${expected}`)
  }
  for (const param of params) {
    const eq = param.indexOf('=')
    if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== 'charset') continue
    const charset = param.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1').toLowerCase()
    // RFC 8259 §8.1: JSON exchanged between systems is UTF-8.
    if (charset !== 'utf-8' && charset !== 'utf8') {
      return unsupportedMediaType(`content-type: charset ${JSON.stringify(charset.slice(0, 40))} is not supported; JSON is UTF-8`)
    }
  }
  return undefined
}

/** A number JSON.parse could only read as ±Infinity (1e400): kept with its text, to be named. */
class OutOfRange {
  readonly text: string
  constructor (text: string) { this.text = text }
}

/**
 * JSON.parse, but a number beyond a double's range is a 400 naming its field and its text
 * (`backends[0].weight: 1e400 is out of range`), instead of an Infinity that validation would
 * print as `null`.
 */
export function parseJsonBody (text: string, root = 'body'): unknown {
  let found = false
  const value: unknown = JSON.parse(text, (_key, v: unknown, context?: { source?: string }) => {
    if (typeof v === 'number' && !Number.isFinite(v)) {
      found = true
      return new OutOfRange(context?.source ?? String(v))
    }
    return v
  })
  if (!found) return value
  const where = findOutOfRange(value, '', root)
  throw invalidParameter(`${where === undefined || where.path === '' ? root : where.path}: ${where?.text.slice(0, 40) ?? 'a number'} is out of range (not a finite number)`)
}

function findOutOfRange (value: unknown, path: string, root: string): { path: string, text: string } | undefined {
  if (value instanceof OutOfRange) return { path, text: value.text }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const hit = findOutOfRange(value[i], `${path === '' ? root : path}[${i}]`, root)
      if (hit !== undefined) return hit
    }
  } else if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      const hit = findOutOfRange(v, path === '' ? k : `${path}.${k}`, root)
      if (hit !== undefined) return hit
    }
  }
  return undefined
}

/** A route needs a token when its TEMPLATE is under /v1 — never judged by the URL text (SPEC §10). */
const needsAuth = (route: string): boolean => route === '/v1' || route.startsWith('/v1/')

/**
 * Read and discard what is left of a request body, up to `max` bytes or `ms`, so that a client
 * still sending (Node's fetch, curl, requests) reads the answer instead of a reset.
 */
function discardBody (req: IncomingMessage, max: number, ms: number): Promise<void> {
  return new Promise((resolve) => {
    if (req.complete || req.destroyed) { resolve(); return }
    let seen = 0
    const finish = (): void => {
      clearTimeout(timer)
      req.removeListener('data', onData)
      req.removeListener('end', finish)
      req.removeListener('close', finish)
      req.removeListener('error', finish)
      resolve()
    }
    const onData = (chunk: Buffer): void => {
      seen += chunk.length
      if (seen > max) finish()
    }
    const timer = setTimeout(finish, ms)
    req.on('data', onData)
    req.on('end', finish)
    req.on('close', finish)
    req.on('error', finish)
    req.resume()
  })
}

declare module 'fastify' {
  interface FastifyRequest {
    caller: Caller | null
  }
}

type Params = Record<string, string>

const send = (reply: FastifyReply, err: LinkgateError): FastifyReply =>
  reply.code(err.statusCode).send({ error: { code: err.code, message: err.message } })

/**
 * What Node's HTTP parser refuses before any route runs (a malformed request, headers past
 * 16 KiB, the header/request deadlines) still leaves with the error envelope, then the
 * connection closes — as fastify's default handler does, but in linkgate's format.
 */
function clientErrorHandler (err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const error = err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
    ? requestTimeout()
    : invalidParameter(err.code === 'HPE_HEADER_OVERFLOW' ? 'headers: larger than 16 KiB' : `request: malformed HTTP (${err.code ?? 'parse error'})`)
  const body = JSON.stringify({ error: { code: error.code, message: error.message } })
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${error.statusCode} ${error.statusCode === 408 ? 'Request Timeout' : 'Bad Request'}\r\n` +
      `content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
  }
  socket.destroy()
}

export function buildApiServer ({
  control, metrics, logger, maxConnections = DEFAULT_API_MAX_CONNECTIONS, cluster = () => [], readiness = async () => undefined
}: ApiOptions): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT,
    // A client that never finishes its request must not hold a socket forever. Node checks the
    // header and request deadlines every connectionsCheckingInterval (default 30 s): every second
    // here, so a slowloris meets its 408 within ~1 s of the deadline.
    http: { headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: 1000 },
    requestTimeout: REQUEST_TIMEOUT_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    connectionTimeout: REQUEST_TIMEOUT_MS,
    forceCloseConnections: true,
    clientErrorHandler,
    // The router's own refusals (a malformed %-escape, a parameter past maxParamLength): 401
    // first when the path reads as /v1 and no valid token came, then 400, both in the envelope.
    frameworkErrors: (error, request, reply) => {
      if (isUnderV1(request.raw.url ?? '')) {
        try {
          control.authenticate(request.headers.authorization)
        } catch (err) {
          if (isLinkgateError(err)) { send(reply, err); return }
          throw err
        }
      }
      send(reply, invalidParameter(`path: ${error.message}`))
    },
    routerOptions: { ignoreTrailingSlash: true }
  })
  guardConnections(app.server, maxConnections, metrics)

  // Bodies are JSON (RFC 8259 §11: application/json, UTF-8) or, for PATCH, JSON merge patches
  // (RFC 7396 §4: application/merge-patch+json). Another type — curl's `-d` alone sends form
  // encoding — is a 415 naming the type, before a byte is parsed. An empty body is "no body",
  // whatever its type (`curl -X POST .../accept` sends none).
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'string', bodyLimit: BODY_LIMIT }, (req, body, done) => {
    const text = body as string
    if (text.trim() === '') { done(null, undefined); return }
    const refusal = mediaTypeRefusal(req.method, req.headers['content-type'])
    if (refusal !== undefined) { done(refusal, undefined); return }
    try {
      // The one array body (PUT .../backends) is named as the control plane names it.
      done(null, parseJsonBody(text, req.method === 'PUT' && req.routeOptions.url?.endsWith('/backends') === true ? 'backends' : 'body'))
    } catch (err) {
      done(isLinkgateError(err) ? err : invalidParameter(`body: not valid JSON (${(err as Error).message})`), undefined)
    }
  })

  app.decorateRequest('caller', null)
  // Authentication by the MATCHED route (SPEC §10): the router decodes `%76`, so the URL text
  // cannot decide. An unmatched path that reads as /v1 once normalised answers 401 before its
  // 404, so that a caller without a token cannot map the API.
  app.addHook('onRequest', async (request) => {
    const route = request.routeOptions.url
    // Public routes say so in their route config (the OpenAPI document and its page, SPEC §14).
    if (route !== undefined && isPublicRoute(request.routeOptions.config)) return
    const protectedRoute = route === undefined ? isUnderV1(request.url) : needsAuth(route)
    if (protectedRoute) request.caller = control.authenticate(request.headers.authorization)
  })
  app.addHook('onResponse', async (request, reply) => {
    metrics.apiRequestsTotal.inc({
      method: request.method,
      route: request.routeOptions.url ?? 'unmatched',
      status: String(reply.statusCode)
    })
  })

  app.setNotFoundHandler((request, reply) => {
    send(reply, notFound(`route: no route for ${request.method} ${request.url.split('?')[0] ?? ''}`))
  })
  app.setErrorHandler((error: Error & { code?: string, statusCode?: number }, request, reply) => {
    if (isLinkgateError(error)) return send(reply, error)
    if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      // Answering while the client still sends makes the kernel reset the connection, and the
      // client reports EPIPE/ECONNRESET instead of the 413: take in the rest first (bounded).
      return discardBody(request.raw, DISCARD_LIMIT, REQUEST_TIMEOUT_MS).then(() =>
        send(reply.header('connection', 'close'), payloadTooLarge()))
    }
    if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
      return send(reply, invalidParameter(`request: ${error.message}`))
    }
    logger.error({ err: error, method: request.method, url: request.url }, 'control API request failed')
    return send(reply, internalError())
  })

  // Before the first route: every route below gets its OpenAPI documentation (src/api/openapi.ts).
  documentRoutes(app)

  // Defence in depth: a /v1 handler never runs without a caller, whatever the hook decided.
  const who = (request: FastifyRequest): Caller => {
    if (request.caller === null) throw unauthorized()
    return request.caller
  }
  const p = (request: FastifyRequest): Params => request.params as Params

  // 200 {"status":"ok"}; 503 {"status":"degraded","reason"} while the store cannot take changes
  // (the data plane still forwards): a readiness check for whatever routes to this API.
  app.get('/healthz', async (_request, reply) => {
    const problem = await readiness()
    if (problem === undefined) return { status: 'ok' }
    return reply.code(503).header('cache-control', 'no-store').send({ status: 'degraded', reason: problem })
  })
  app.get('/metrics', async (_request, reply) => {
    const text = await metrics.exposition()
    return reply.type(metrics.registry.contentType).send(text)
  })

  // The API's own description (SPEC §14), readable without a token.
  let openapiText: string | undefined // built once, on first request: the routes are fixed by then
  app.get(OPENAPI_PATH, { config: { public: true } }, async (_request, reply) =>
    reply.type('application/json; charset=utf-8').header('x-content-type-options', 'nosniff')
      .send(openapiText ??= JSON.stringify(app.swagger())))
  app.get(DOCS_PATH, { config: { public: true } }, async (_request, reply) =>
    reply.type('text/html; charset=utf-8').headers(DOCS_HEADERS).send(DOCS_HTML))

  // SPEC §12: any account may list the cluster's live nodes and the IPs each owns.
  app.get('/v1/cluster', async (request) => {
    who(request)
    return { items: cluster() }
  })

  // Endpoint services (provider).
  app.post('/v1/endpoint-services', async (request, reply) =>
    reply.code(201).send(await control.createService(who(request), request.body)))
  // List routes page (SPEC §10): `?limit=&nextToken=`, answered `{items, nextToken?}`.
  app.get('/v1/endpoint-services', async (request) => control.listServices(who(request), request.query))
  app.get('/v1/endpoint-services/:id', async (request) => control.getService(who(request), p(request).id as string))
  app.patch('/v1/endpoint-services/:id', async (request) =>
    control.patchService(who(request), p(request).id as string, request.body))
  app.delete('/v1/endpoint-services/:id', async (request, reply) => {
    await control.deleteService(who(request), p(request).id as string)
    return reply.code(204).send()
  })

  // Backends.
  app.put('/v1/endpoint-services/:id/backends', async (request) =>
    ({ items: await control.replaceBackends(who(request), p(request).id as string, request.body) }))
  app.post('/v1/endpoint-services/:id/backends', async (request, reply) =>
    reply.code(201).send(await control.addBackend(who(request), p(request).id as string, request.body)))
  app.patch('/v1/endpoint-services/:id/backends/:backendId', async (request) =>
    control.patchBackend(who(request), p(request).id as string, p(request).backendId as string, request.body))
  app.delete('/v1/endpoint-services/:id/backends/:backendId', async (request, reply) => {
    await control.deleteBackend(who(request), p(request).id as string, p(request).backendId as string)
    return reply.code(204).send()
  })

  // Allowed accounts.
  app.get('/v1/endpoint-services/:id/allowed-accounts', async (request) =>
    control.listAllowedAccounts(who(request), p(request).id as string, request.query))
  app.post('/v1/endpoint-services/:id/allowed-accounts', async (request, reply) =>
    reply.code(201).send({ items: await control.addAllowedAccount(who(request), p(request).id as string, request.body) }))
  app.delete('/v1/endpoint-services/:id/allowed-accounts/:accountId', async (request, reply) => {
    await control.removeAllowedAccount(who(request), p(request).id as string, p(request).accountId as string)
    return reply.code(204).send()
  })

  // Connections: the provider's view and decision.
  app.get('/v1/endpoint-services/:id/connections', async (request) =>
    control.listConnections(who(request), p(request).id as string, request.query))
  app.post('/v1/endpoint-services/:id/connections/:endpointId/accept', async (request) =>
    control.decideConnection(who(request), p(request).id as string, p(request).endpointId as string, 'accepted'))
  app.post('/v1/endpoint-services/:id/connections/:endpointId/reject', async (request) =>
    control.decideConnection(who(request), p(request).id as string, p(request).endpointId as string, 'rejected'))

  // Consumer side.
  app.get('/v1/available-services', async (request) => {
    const name = (request.query as Record<string, unknown>).name
    return control.availableServices(who(request), typeof name === 'string' ? name : undefined, request.query)
  })
  app.post('/v1/endpoints', async (request, reply) =>
    reply.code(201).send(await control.createEndpoint(who(request), request.body)))
  app.get('/v1/endpoints', async (request) => control.listEndpoints(who(request), request.query))
  app.get('/v1/endpoints/:id', async (request) => control.getEndpoint(who(request), p(request).id as string))
  app.patch('/v1/endpoints/:id', async (request) => control.patchEndpoint(who(request), p(request).id as string, request.body))
  app.delete('/v1/endpoints/:id', async (request, reply) => {
    await control.deleteEndpoint(who(request), p(request).id as string)
    return reply.code(204).send()
  })

  return app
}
