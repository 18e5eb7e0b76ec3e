// The control API (SPEC §4): HTTP/1.1 + JSON on fastify. Bodies are parsed here and validated
// by the control plane with the shared schemas; every error leaves as
// {"error": {"code", "message"}} with the status of the error catalogue.
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import type { Logger } from 'pino'
import type { Caller, ControlPlane } from '../control/control-plane.ts'
import { internalError, invalidParameter, isLinkgateError, notFound, payloadTooLarge, type LinkgateError } from '../errors.ts'
import type { Metrics } from '../metrics/metrics.ts'
import { DOCS_CSP, DOCS_HTML, DOCS_PATH } from './docs-page.ts'
import { documentRoutes, isPublicRoute, OPENAPI_PATH } from './openapi.ts'

export const BODY_LIMIT = 1024 * 1024

export interface ApiOptions {
  readonly control: ControlPlane
  readonly metrics: Metrics
  readonly logger: Logger
}

declare module 'fastify' {
  interface FastifyRequest {
    caller: Caller | null
  }
}

type Params = Record<string, string>

const send = (reply: FastifyReply, err: LinkgateError): FastifyReply =>
  reply.code(err.statusCode).send({ error: { code: err.code, message: err.message } })

export function buildApiServer ({ control, metrics, logger }: ApiOptions): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT,
    // A client that never finishes its request must not hold a socket forever.
    requestTimeout: 30_000,
    connectionTimeout: 30_000,
    forceCloseConnections: true,
    routerOptions: { ignoreTrailingSlash: true }
  })

  // Any content type is read as JSON: `curl -d '{...}'` sends form encoding by default, and a
  // useful answer beats a 415. An empty body is "no body".
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'string', bodyLimit: BODY_LIMIT }, (_req, body, done) => {
    const text = body as string
    if (text.trim() === '') { done(null, undefined); return }
    try {
      done(null, JSON.parse(text))
    } catch (err) {
      done(invalidParameter(`body: not valid JSON (${(err as Error).message})`), undefined)
    }
  })

  app.decorateRequest('caller', null)
  app.addHook('onRequest', async (request) => {
    if ((request.url.startsWith('/v1/') || request.url === '/v1') && !isPublicRoute(request.routeOptions.config)) {
      request.caller = control.authenticate(request.headers.authorization)
    }
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
    if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return send(reply, payloadTooLarge())
    if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
      return send(reply, invalidParameter(`request: ${error.message}`))
    }
    logger.error({ err: error, method: request.method, url: request.url }, 'control API request failed')
    return send(reply, internalError())
  })

  // Before the first route: every route below gets its OpenAPI documentation (src/api/openapi.ts).
  documentRoutes(app)

  const who = (request: FastifyRequest): Caller => request.caller as Caller
  const p = (request: FastifyRequest): Params => request.params as Params

  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/metrics', async (_request, reply) => {
    const text = await metrics.registry.metrics()
    return reply.type(metrics.registry.contentType).send(text)
  })

  // The API's own description (SPEC §14), readable without a token.
  let openapiText: string | undefined // built once, on first request: the routes are fixed by then
  app.get(OPENAPI_PATH, { config: { public: true } }, async (_request, reply) =>
    reply.type('application/json; charset=utf-8').send(openapiText ??= JSON.stringify(app.swagger())))
  app.get(DOCS_PATH, { config: { public: true } }, async (_request, reply) =>
    reply.type('text/html; charset=utf-8').header('content-security-policy', DOCS_CSP).send(DOCS_HTML))

  // Endpoint services (provider).
  app.post('/v1/endpoint-services', async (request, reply) =>
    reply.code(201).send(await control.createService(who(request), request.body)))
  app.get('/v1/endpoint-services', async (request) => ({ items: control.listServices(who(request)) }))
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
    ({ items: control.listAllowedAccounts(who(request), p(request).id as string) }))
  app.post('/v1/endpoint-services/:id/allowed-accounts', async (request, reply) =>
    reply.code(201).send({ items: await control.addAllowedAccount(who(request), p(request).id as string, request.body) }))
  app.delete('/v1/endpoint-services/:id/allowed-accounts/:accountId', async (request, reply) => {
    await control.removeAllowedAccount(who(request), p(request).id as string, p(request).accountId as string)
    return reply.code(204).send()
  })

  // Connections: the provider's view and decision.
  app.get('/v1/endpoint-services/:id/connections', async (request) =>
    ({ items: control.listConnections(who(request), p(request).id as string) }))
  app.post('/v1/endpoint-services/:id/connections/:endpointId/accept', async (request) =>
    control.decideConnection(who(request), p(request).id as string, p(request).endpointId as string, 'accepted'))
  app.post('/v1/endpoint-services/:id/connections/:endpointId/reject', async (request) =>
    control.decideConnection(who(request), p(request).id as string, p(request).endpointId as string, 'rejected'))

  // Consumer side.
  app.get('/v1/available-services', async (request) => {
    const name = (request.query as Record<string, unknown>).name
    return { items: control.availableServices(who(request), typeof name === 'string' ? name : undefined) }
  })
  app.post('/v1/endpoints', async (request, reply) =>
    reply.code(201).send(await control.createEndpoint(who(request), request.body)))
  app.get('/v1/endpoints', async (request) => ({ items: control.listEndpoints(who(request)) }))
  app.get('/v1/endpoints/:id', async (request) => control.getEndpoint(who(request), p(request).id as string))
  app.patch('/v1/endpoints/:id', async (request) => control.patchEndpoint(who(request), p(request).id as string, request.body))
  app.delete('/v1/endpoints/:id', async (request, reply) => {
    await control.deleteEndpoint(who(request), p(request).id as string)
    return reply.code(204).send()
  })

  return app
}
