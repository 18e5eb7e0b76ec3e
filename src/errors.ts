// The one error catalogue (STYLE habit 1). Code checks `err.code`, never message text.
// `statusCode` is what the control API answers with; fastify reads it directly.

export type ErrorCode =
  | 'InvalidParameter'
  | 'Unauthorized'
  | 'Forbidden'
  | 'NotFound'
  | 'Conflict'
  | 'QuotaExceeded'
  | 'PayloadTooLarge'
  | 'UnsupportedMediaType'
  | 'RequestTimeout'
  | 'InternalError'
  | 'InvalidConfig'
  | 'StateCorrupt'
  | 'StateInUse'

export class LinkgateError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number

  constructor (code: ErrorCode, statusCode: number, message: string) {
    super(message)
    this.name = 'LinkgateError'
    this.code = code
    this.statusCode = statusCode
  }
}

export const invalidParameter = (message: string): LinkgateError =>
  new LinkgateError('InvalidParameter', 400, message)
export const unauthorized = (message = 'missing or invalid bearer token in Authorization header'): LinkgateError =>
  new LinkgateError('Unauthorized', 401, message)
export const forbidden = (message: string): LinkgateError => new LinkgateError('Forbidden', 403, message)
export const notFound = (message: string): LinkgateError => new LinkgateError('NotFound', 404, message)
export const conflict = (message: string): LinkgateError => new LinkgateError('Conflict', 409, message)
export const quotaExceeded = (message: string): LinkgateError => new LinkgateError('QuotaExceeded', 409, message)
export const payloadTooLarge = (message = 'body: larger than 1 MiB'): LinkgateError =>
  new LinkgateError('PayloadTooLarge', 413, message)
export const unsupportedMediaType = (message: string): LinkgateError =>
  new LinkgateError('UnsupportedMediaType', 415, message)
export const requestTimeout = (message = 'request: headers not complete within 10 s or the whole request within 30 s'): LinkgateError =>
  new LinkgateError('RequestTimeout', 408, message)
export const internalError = (message = 'internal error'): LinkgateError =>
  new LinkgateError('InternalError', 500, message)

/** A config file that cannot be used; `errors` holds one line per problem, each led by its path. */
export class ConfigError extends LinkgateError {
  readonly errors: readonly string[]
  constructor (file: string, errors: readonly string[]) {
    super('InvalidConfig', 400, `${file}: ${errors.length} error(s)\n  ${errors.join('\n  ')}`)
    this.name = 'ConfigError'
    this.errors = errors
  }
}

export class StateCorruptError extends LinkgateError {
  constructor (file: string, reason: string) {
    super('StateCorrupt', 500,
      `state file ${file} is corrupt (${reason}); it was left untouched. ` +
      'Move it aside to start with an empty state, or restore a backup.')
    this.name = 'StateCorruptError'
  }
}

export const isLinkgateError = (err: unknown): err is LinkgateError => err instanceof LinkgateError

/** Another linkgate runs on this state directory (SPEC §10: one instance per state). */
export class StateInUseError extends LinkgateError {
  constructor (dir: string) {
    super('StateInUse', 409,
      `state directory ${dir} is in use by another linkgate process; stop it, or start this one with another --state-dir`)
    this.name = 'StateInUseError'
  }
}
