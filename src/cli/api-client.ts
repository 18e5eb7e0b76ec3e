// The CLI's view of the control API (SPEC §4): one request at a time over fetch, errors turned
// into ApiError with the API's own code and message, lists read to the end by following
// `nextToken` (SPEC §10) — so the CLI works against servers with and without pagination.

/** A refusal by the API: `{"error": {"code", "message"}}` and its status. */
export class ApiError extends Error {
  readonly code: string
  readonly status: number
  constructor (code: string, message: string, status: number) {
    super(message)
    this.name = 'ApiError'
    this.code = code
    this.status = status
  }
}

/** The API could not be reached or answered something that is not the API. */
export class TransportError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'TransportError'
  }
}

export interface ApiClientOptions {
  readonly api: string
  readonly token: string
  /** Per request; a silent server must not hang the CLI. */
  readonly timeoutMs?: number
}

/** No answer of the API comes near this (a page of 1,000 services is a few MiB). */
const MAX_ANSWER_BYTES = 64 << 20

async function readCapped (res: Response, what: string, timeoutMs: number): Promise<string> {
  if (res.body === null) return ''
  const chunks: Uint8Array[] = []
  let size = 0
  try {
    for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
      size += chunk.byteLength
      if (size > MAX_ANSWER_BYTES) {
        await res.body.cancel().catch(() => {})
        throw new TransportError(`${what}: answer larger than ${MAX_ANSWER_BYTES} bytes`)
      }
      chunks.push(chunk)
    }
  } catch (err) {
    if (err instanceof TransportError) throw err
    // The request's deadline covers the body: a server that trickles it ends here, with words
    // instead of "This operation was aborted" or undici's "terminated".
    const name = (err as Error).name
    if (name === 'TimeoutError' || name === 'AbortError') {
      throw new TransportError(`${what}: the answer did not complete within ${timeoutMs / 1000} s (${size} bytes came); try --request-timeout`)
    }
    const cause = (err as { cause?: { code?: string, message?: string } }).cause
    throw new TransportError(`${what}: the answer was cut off after ${size} bytes (${cause?.code ?? cause?.message ?? (err as Error).message})`)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** A list never needs more pages than this; a server that keeps answering is broken. */
const MAX_PAGES = 100_000

export class ApiClient {
  readonly #base: string
  readonly #token: string
  readonly #timeoutMs: number

  constructor ({ api, token, timeoutMs = 30_000 }: ApiClientOptions) {
    this.#base = api.replace(/\/+$/, '')
    this.#token = token
    this.#timeoutMs = timeoutMs
  }

  async request (method: string, path: string, body?: unknown): Promise<unknown> {
    const url = this.#base + path
    let res: Response
    try {
      res = await fetch(url, {
        method,
        headers: {
          authorization: `Bearer ${this.#token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' })
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs)
      })
    } catch (err) {
      const cause = (err as { cause?: { code?: string, message?: string } }).cause
      const why = cause?.code ?? cause?.message ?? (err as Error).message
      throw new TransportError(`cannot reach the control API at ${this.#base} (${why}); set --api or LINKGATE_API`)
    }
    const text = await readCapped(res, `${method} ${url}`, this.#timeoutMs)
    let parsed: unknown
    if (text !== '') {
      try {
        parsed = JSON.parse(text)
      } catch {
        throw new TransportError(`${method} ${url}: HTTP ${res.status} with a body that is not JSON; is ${this.#base} a linkgate control API?`)
      }
    }
    if (res.ok) return parsed
    const error = (parsed as { error?: { code?: unknown, message?: unknown } } | undefined)?.error
    if (typeof error?.code === 'string' && typeof error.message === 'string') {
      throw new ApiError(error.code, error.message, res.status)
    }
    throw new TransportError(`${method} ${url}: HTTP ${res.status} without a linkgate error body`)
  }

  /** Every item of a list route, page after page while the answer carries `nextToken`; each must be a `kind`. */
  async list (path: string, kind: 'object' | 'string' = 'object'): Promise<unknown[]> {
    const items: unknown[] = []
    const seen = new Set<string>()
    let token: string | undefined
    for (let page = 0; page < MAX_PAGES; page++) {
      const sep = path.includes('?') ? '&' : '?'
      const answer = await this.request('GET', token === undefined ? path : `${path}${sep}nextToken=${encodeURIComponent(token)}`)
      const body = answer as { items?: unknown, nextToken?: unknown }
      if (!Array.isArray(body?.items)) throw new TransportError(`GET ${path}: the answer has no items list`)
      for (const item of body.items as unknown[]) {
        const ok = kind === 'string' ? typeof item === 'string' : item !== null && typeof item === 'object' && !Array.isArray(item)
        if (!ok) {
          const shown = item === null ? 'null' : Array.isArray(item) ? 'a list' : typeof item
          throw new TransportError(`GET ${path}: items[${items.length}] is ${shown}, not a ${kind === 'string' ? 'string' : 'resource'}`)
        }
        items.push(item)
      }
      if (typeof body.nextToken !== 'string' || body.nextToken === '') return items
      // A server that hands back a token it gave before would loop forever.
      if (seen.has(body.nextToken)) throw new TransportError(`GET ${path}: the server repeated nextToken ${JSON.stringify(body.nextToken)}`)
      seen.add(body.nextToken)
      token = body.nextToken
    }
    throw new TransportError(`GET ${path}: more than ${MAX_PAGES} pages`)
  }
}
