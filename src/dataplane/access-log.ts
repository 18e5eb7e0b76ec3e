// One JSON line per finished TCP connection and per expired UDP flow (pino: asynchronous,
// buffered writes, so logging never blocks the data path). Off unless configured.
import pino, { type Logger } from 'pino'
import type { CloseReason } from './listener.ts'

export interface AccessLogEntry {
  endpointId: string
  serviceId: string
  protocol: 'TCP' | 'UDP'
  terminalPort: number
  client: string
  backendId: string | null
  backendAddress: string | null
  zone: string | null
  bytesToBackend: number
  bytesToClient: number
  durationMs: number
  closeReason: CloseReason
}

export interface AccessLog {
  readonly enabled: boolean
  write (entry: AccessLogEntry): void
  flush (): void
}

export const disabledAccessLog: AccessLog = { enabled: false, write () {}, flush () {} }

/** `off`, `stdout`, `stderr`, or a file path (appended to). */
export function createAccessLog (destination: string): AccessLog {
  if (destination === 'off') return disabledAccessLog
  const fd = destination === 'stdout' ? 1 : destination === 'stderr' ? 2 : undefined
  const stream = pino.destination({ dest: fd ?? destination, sync: false, minLength: 4096, mkdir: true })
  const logger: Logger = pino({ base: null, messageKey: 'msg', timestamp: pino.stdTimeFunctions.isoTime }, stream)
  return {
    enabled: true,
    write (entry) { logger.info(entry, 'access') },
    flush () { stream.flushSync() }
  }
}
