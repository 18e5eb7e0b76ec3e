// One JSON line per finished TCP connection and per expired UDP flow. Off unless configured.
//
// Logs never stop the proxy (SPEC §10). Lines wait in memory and are written by asynchronous
// `fs.write` calls (libuv's thread pool), one batch at a time, so the event loop never waits on
// the disk or on a reader. What can go wrong, and what happens then:
// - a write error (ENOSPC on a full disk, EIO, EPIPE on a closed pipe, EBADF): the batch is
//   dropped and counted, the error logged at most once a minute, and the next batch waits
//   RETRY_AFTER_ERROR_MS, so a disk that stays full costs one failed write a second;
// - a reader or disk slower than the traffic (or a pipe nobody reads): at most 16 MiB of lines
//   wait; past that new lines are dropped and counted;
// - EAGAIN on a non-blocking pipe: the batch is kept and written again a little later.
// Dropped lines count in linkgate_access_log_dropped_total. pino's SonicBoom was used before: on
// ENOSPC it emitted an unhandled 'error' and then retried synchronously for ever, which froze
// the whole process (issue 13).
//
// The line format is what the pino logger wrote: {"level":30,"time":"<ISO 8601>",...fields,"msg":"access"}.
import { closeSync, constants, fstatSync, mkdirSync, openSync, statSync, write, writeSync } from 'node:fs'
import { dirname } from 'node:path'
import type { Logger } from 'pino'
import type { CloseReason } from './listener.ts'
import { LogLimiter } from './socket-errors.ts'

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
  /** Best effort, now: write what waits with synchronous writes where that cannot block (files, devices). */
  flush (): void
  /** Let waiting lines be written (up to `timeoutMs`), then flush and close. Never rejects. */
  close (timeoutMs?: number): Promise<void>
}

export const disabledAccessLog: AccessLog = { enabled: false, write () {}, flush () {}, close () { return Promise.resolve() } }

/** Lines waiting in memory (written or about to be); past it new lines are dropped (SPEC §10). */
export const MAX_BUFFERED_BYTES = 16 * 1024 * 1024
/** Largest single write. */
const MAX_BATCH_BYTES = 1024 * 1024
/** Pause after a failed write before the next batch. */
const RETRY_AFTER_ERROR_MS = 1000
/** Pause after EAGAIN (a non-blocking pipe whose reader is behind). */
const RETRY_AFTER_EAGAIN_MS = 20
/** A write error is logged at most this often. */
export const ERROR_LOG_INTERVAL_MS = 60_000

export interface AccessLogOptions {
  /** Where write errors are reported (at most once a minute). */
  readonly logger?: Logger
  /** Called with the number of lines dropped. */
  readonly onDrop?: (lines: number) => void
  /** Default MAX_BUFFERED_BYTES; smaller in tests. */
  readonly maxBufferedBytes?: number
  /** The data-plane worker that writes these lines (SPEC §11): a `worker` field on each line. */
  readonly worker?: number
}

/** `off`, `stdout`, `stderr`, or a file path (appended to; its directory is created). */
export function createAccessLog (destination: string, options: AccessLogOptions = {}): AccessLog {
  if (destination === 'off') return disabledAccessLog
  let fd: number
  let owned = false
  if (destination === 'stdout') {
    fd = 1
  } else if (destination === 'stderr') {
    fd = 2
  } else {
    try {
      mkdirSync(dirname(destination), { recursive: true })
      fd = openForAppend(destination)
      owned = true
    } catch (err) {
      throw new Error(`log.access: cannot open ${destination}: ${(err as Error).message}`, { cause: err })
    }
  }
  return new FdAccessLog(fd, owned, options)
}

/**
 * open(2) of a FIFO for writing blocks until some process opens it for reading: a plain
 * `openSync(path, 'a')` on a FIFO nobody reads hung `start` for good, before any listener. A FIFO
 * is opened non-blocking instead: with no reader that fails at once (ENXIO), and a full pipe
 * later answers EAGAIN, which the writer already retries.
 */
function openForAppend (path: string): number {
  let fifo = false
  try {
    fifo = statSync(path).isFIFO()
  } catch {}
  if (!fifo) return openSync(path, 'a')
  try {
    return openSync(path, constants.O_WRONLY | constants.O_APPEND | constants.O_NONBLOCK)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENXIO') throw new Error('a FIFO that no process reads (start its reader first)', { cause: err })
    throw err
  }
}

class FdAccessLog implements AccessLog {
  readonly enabled = true
  readonly #fd: number
  readonly #owned: boolean
  /** Synchronous writes cannot block on it (a regular file or a device, not a pipe or socket). */
  readonly #syncSafe: boolean
  readonly #logger: Logger | undefined
  readonly #onDrop: (lines: number) => void
  readonly #maxBuffered: number
  readonly #worker: number | undefined
  readonly #errorLog = new LogLimiter(ERROR_LOG_INTERVAL_MS)
  /** Lines not yet handed to a write. */
  #queue: string[] = []
  /** Bytes (UTF-16 units, close enough for JSON) waiting, the batch in flight included. */
  #buffered = 0
  /** A batch is being written, or a retry is scheduled. */
  #busy = false
  #scheduled = false
  #closed = false
  #idleWaiters: Array<() => void> = []

  constructor (fd: number, owned: boolean, options: AccessLogOptions) {
    this.#fd = fd
    this.#owned = owned
    let syncSafe = false
    try {
      const st = fstatSync(fd)
      syncSafe = st.isFile() || st.isCharacterDevice()
    } catch {}
    this.#syncSafe = syncSafe
    this.#logger = options.logger
    this.#onDrop = options.onDrop ?? (() => {})
    this.#maxBuffered = options.maxBufferedBytes ?? MAX_BUFFERED_BYTES
    this.#worker = options.worker
  }

  write (entry: AccessLogEntry): void {
    if (this.#closed) {
      this.#onDrop(1)
      return
    }
    const line = JSON.stringify({ level: 30, time: new Date().toISOString(), worker: this.#worker, ...entry, msg: 'access' }) + '\n'
    if (this.#buffered + line.length > this.#maxBuffered) {
      this.#onDrop(1)
      this.#reportOnce(null, 'access log: more than the buffer limit waiting; dropping lines')
      return
    }
    this.#queue.push(line)
    this.#buffered += line.length
    if (!this.#busy && !this.#scheduled) {
      // Lines of the same event-loop turn go out in one write.
      this.#scheduled = true
      setImmediate(this.#kick)
    }
  }

  flush (): void {
    if (!this.#syncSafe || this.#queue.length === 0) return
    const lines = this.#queue
    this.#queue = []
    const text = lines.join('')
    this.#buffered -= text.length
    try {
      const buf = Buffer.from(text)
      let off = 0
      while (off < buf.length) off += writeSync(this.#fd, buf, off, buf.length - off)
    } catch (err) {
      this.#onDrop(lines.length)
      this.#reportOnce(err as Error, 'access log: write failed; dropping lines')
    }
  }

  async close (timeoutMs = 2000): Promise<void> {
    if (this.#closed) return
    if (this.#busy || this.#scheduled || this.#queue.length > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs)
        timer.unref()
        this.#idleWaiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
    this.flush()
    this.#closed = true
    if (this.#queue.length > 0) this.#onDrop(this.#queue.length)
    this.#queue = []
    // An fd with a write still in flight is left open (closing it under the thread pool could
    // hand the number to another file); the process is ending anyway.
    if (this.#owned && !this.#busy) {
      try { closeSync(this.#fd) } catch {}
    }
  }

  readonly #kick = (): void => {
    this.#scheduled = false
    if (!this.#busy) this.#next()
  }

  /** Write the next batch, or go idle. */
  #next (): void {
    if (this.#queue.length === 0) {
      this.#busy = false
      const waiters = this.#idleWaiters
      this.#idleWaiters = []
      for (const resolve of waiters) resolve()
      return
    }
    this.#busy = true
    let size = 0
    let count = 0
    const queue = this.#queue
    while (count < queue.length && (count === 0 || size + (queue[count] as string).length <= MAX_BATCH_BYTES)) {
      size += (queue[count] as string).length
      count++
    }
    const text = count === queue.length ? queue.join('') : queue.slice(0, count).join('')
    this.#queue = count === queue.length ? [] : queue.slice(count)
    this.#writeBatch(Buffer.from(text), 0, text.length, count)
  }

  #writeBatch (buf: Buffer, offset: number, units: number, lines: number): void {
    write(this.#fd, buf, offset, buf.length - offset, null, (err, written) => {
      if (err !== null) {
        if (err.code === 'EAGAIN') {
          setTimeout(() => { this.#writeBatch(buf, offset, units, lines) }, RETRY_AFTER_EAGAIN_MS).unref()
          return
        }
        this.#buffered -= units
        this.#onDrop(lines)
        this.#reportOnce(err, 'access log: write failed; dropping lines')
        setTimeout(() => { this.#next() }, RETRY_AFTER_ERROR_MS).unref()
        return
      }
      if (offset + written < buf.length) {
        this.#writeBatch(buf, offset + written, units, lines)
        return
      }
      this.#buffered -= units
      this.#next()
    })
  }

  #reportOnce (err: Error | null, msg: string): void {
    const logger = this.#logger
    if (logger === undefined) return
    this.#errorLog.run((suppressed) => {
      logger.error({ err: err ?? undefined, suppressed, bufferedBytes: this.#buffered }, msg)
    })
  }
}
