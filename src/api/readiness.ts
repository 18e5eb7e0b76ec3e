// What `/healthz` reports about the state store (README "Control API"). The data plane keeps
// forwarding while the store cannot write, but every change is refused: a load balancer or an
// orchestrator in front of the control API (HAProxy `option httpchk`, Envoy active health
// checks, a Kubernetes readiness probe) should take this node's API out of rotation and an
// operator should hear of it. Three signals, any of which makes /healthz a 503:
// - the store's writer died (until a restart);
// - the last change could not be written, and none was written since (held at least
//   FAILED_WRITE_HOLD_MS, then the probe decides, so a node that nobody writes to can recover);
// - a probe that writes and removes a small file in stateDir fails (ENOSPC, EROFS, a vanished
//   directory) or hangs: a full disk is seen before the next change fails.
import { open, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import type { Draft, Store } from '../control/store.ts'

/** A probe is reused this long: HAProxy checks every 2 s by default; the disk is touched at most every 5 s. */
export const PROBE_INTERVAL_MS = 5000
const PROBE_TIMEOUT_MS = 2000
const FAILED_WRITE_HOLD_MS = 30_000
const PROBE_FILE = '.linkgate-healthz-probe'
const PROBE_BYTES = Buffer.alloc(4096, 0x2e)

export interface StoreReadinessOptions {
  /** stateDir, probed by writing a small file; none in cluster mode (etcd holds the state). */
  readonly dir?: string
  readonly now?: () => number
}

export class StoreReadiness {
  readonly #dir: string | undefined
  readonly #now: () => number
  #writerFailure: string | undefined
  #writeFailure: { at: number, message: string } | undefined
  #probe: { at: number, result: Promise<string | undefined> } | undefined

  constructor (options: StoreReadinessOptions = {}) {
    this.#dir = options.dir
    this.#now = options.now ?? Date.now
  }

  /** The store's writer is gone: changes are refused until a restart. */
  writerFailed (err: Error): void {
    this.#writerFailure = err.message
  }

  /**
   * The store as the control plane should see it: the same store, whose transactions also tell
   * this object whether their write reached the disk. A transaction whose own function threw
   * (a refused request) says nothing about the store.
   */
  watch (store: Store): Store {
    const self = this
    return {
      get state () { return store.state },
      count: (index, key) => store.count(index, key),
      page: (index, key, after, limit) => store.page(index, key, after, limit),
      subscribe: (listener) => store.subscribe(listener),
      close: () => store.close(),
      async transact<T> (fn: (draft: Draft) => T): Promise<T> {
        let refused = false
        try {
          const result = await store.transact((draft) => {
            try {
              return fn(draft)
            } catch (err) {
              refused = true
              throw err
            }
          })
          self.#writeFailure = undefined
          return result
        } catch (err) {
          if (!refused) {
            self.#writeFailure = { at: self.#now(), message: err instanceof Error ? err.message : String(err) }
            self.#probe = undefined // look at the disk again on the next check
          }
          throw err
        }
      }
    }
  }

  /** Why the store cannot take changes now, or undefined when it can. */
  async problem (): Promise<string | undefined> {
    if (this.#writerFailure !== undefined) return `state store: the writer failed (${this.#writerFailure}); changes are refused until linkgate restarts`
    const now = this.#now()
    const failed = this.#writeFailure
    if (failed !== undefined && now - failed.at < FAILED_WRITE_HOLD_MS) return `state store: the last change could not be written (${failed.message})`
    const probed = await this.#probeDir(now)
    if (probed !== undefined) return probed
    if (failed !== undefined) this.#writeFailure = undefined // the hold passed and the directory takes writes
    return undefined
  }

  #probeDir (now: number): Promise<string | undefined> {
    const dir = this.#dir
    if (dir === undefined) return Promise.resolve(undefined)
    if (this.#probe !== undefined && now - this.#probe.at < PROBE_INTERVAL_MS) return this.#probe.result
    const result = probeWrite(dir)
    this.#probe = { at: now, result }
    return result
  }
}

/** Write 4 KiB to a file in `dir` and remove it; the failure as text, or undefined. */
async function probeWrite (dir: string): Promise<string | undefined> {
  const file = join(dir, PROBE_FILE)
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`stateDir ${dir}: a 4 KiB test write did not finish within ${PROBE_TIMEOUT_MS} ms`), PROBE_TIMEOUT_MS)
    timer.unref()
  })
  const attempt = (async (): Promise<string | undefined> => {
    try {
      const handle = await open(file, 'w', 0o600)
      try {
        await handle.write(PROBE_BYTES)
      } finally {
        await handle.close()
      }
      await unlink(file)
      return undefined
    } catch (err) {
      await unlink(file).catch(() => {})
      const e = err as NodeJS.ErrnoException
      return `stateDir ${dir}: cannot write (${e.code ?? e.message})`
    }
  })()
  try {
    return await Promise.race([attempt, timeout])
  } finally {
    clearTimeout(timer)
  }
}
