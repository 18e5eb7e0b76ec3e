// Persistent state (SPEC §8): one JSON document, replaced atomically on every change
// (write a temp file, fsync it, rename over the old one, fsync the directory), so a `kill -9`
// at any moment leaves either the old or the new document, never half of one.
// Changes run one at a time through `transact`; each acknowledged change is on disk before
// its promise resolves, and only then do listeners hear the change events.
import { EventEmitter } from 'node:events'
import { mkdir, open, readFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { StateCorruptError } from '../errors.ts'
import { deepFreeze, type ChangeEvent, type Endpoint, type EndpointService, type State } from './model.ts'

export const STATE_FILE = 'state.json'
const FORMAT_VERSION = 1

/** A writable copy of the state's maps, handed to one transaction; the resources in it are frozen: replace, never mutate. */
export interface Draft {
  services: Record<string, EndpointService>
  endpoints: Record<string, Endpoint>
}

export interface StoreEvents {
  change: [event: ChangeEvent, state: State]
}

export class Store extends EventEmitter<StoreEvents> {
  readonly file: string
  readonly #dir: string
  #state: State
  #queue: Promise<unknown> = Promise.resolve()
  #writes = 0

  private constructor (dir: string, state: State) {
    super()
    this.#dir = dir
    this.file = join(dir, STATE_FILE)
    this.#state = state
  }

  /** Open (creating the directory if needed) and load the state; a corrupt file is refused, never rewritten. */
  static async open (dir: string): Promise<Store> {
    await mkdir(dir, { recursive: true })
    const file = join(dir, STATE_FILE)
    let text: string | undefined
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    const state = text === undefined ? { services: {}, endpoints: {} } : parseState(file, text)
    return new Store(dir, deepFreeze(state))
  }

  get state (): State {
    return this.#state
  }

  /**
   * Run `fn` on a private copy of the state. When it returns events, the copy is written to
   * disk and becomes the state, then the events are emitted. When it throws, nothing changes.
   */
  transact<T> (fn: (draft: Draft) => { result: T, events: ChangeEvent[] }): Promise<T> {
    const run = async (): Promise<T> => {
      // A shallow copy: resources are frozen, so a transaction replaces the ones it changes and
      // every other keeps its identity (listeners may compare by reference).
      const draft: Draft = { services: { ...this.#state.services }, endpoints: { ...this.#state.endpoints } }
      const { result, events } = fn(draft)
      if (events.length === 0) return result
      await this.#persist(draft)
      this.#state = deepFreeze(draft)
      for (const event of events) this.emit('change', event, this.#state)
      return result
    }
    const next = this.#queue.then(run, run)
    this.#queue = next.catch(() => {})
    return next
  }

  async #persist (state: Draft): Promise<void> {
    const body = JSON.stringify({ version: FORMAT_VERSION, services: state.services, endpoints: state.endpoints }, null, 1)
    const tmp = `${this.file}.tmp-${process.pid}-${++this.#writes}`
    const fh = await open(tmp, 'w', 0o600)
    try {
      await fh.writeFile(body)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, this.file)
    const dirHandle = await open(this.#dir, 'r')
    try {
      await dirHandle.sync()
    } finally {
      await dirHandle.close()
    }
  }
}

function parseState (file: string, text: string): State {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (err) {
    throw new StateCorruptError(file, `not valid JSON: ${(err as Error).message}`)
  }
  if (doc === null || typeof doc !== 'object') throw new StateCorruptError(file, 'not a JSON object')
  const { version, services, endpoints } = doc as Record<string, unknown>
  if (version !== FORMAT_VERSION) throw new StateCorruptError(file, `unknown format version ${JSON.stringify(version)}`)
  if (!isRecordOf(services, 'vpcesvc-')) throw new StateCorruptError(file, '"services" is not a map of services')
  if (!isRecordOf(endpoints, 'vpce-')) throw new StateCorruptError(file, '"endpoints" is not a map of endpoints')
  for (const ep of Object.values(endpoints)) {
    if (typeof ep.serviceId !== 'string' || typeof ep.ip !== 'string' || typeof ep.status !== 'string') {
      throw new StateCorruptError(file, `endpoint ${String(ep.id)} lacks serviceId, ip or status`)
    }
  }
  for (const svc of Object.values(services)) {
    if (!Array.isArray(svc.portMappings) || !Array.isArray(svc.backends) || typeof svc.healthCheck !== 'object') {
      throw new StateCorruptError(file, `service ${String(svc.id)} lacks portMappings, backends or healthCheck`)
    }
  }
  return { services, endpoints } as unknown as State
}

function isRecordOf (value: unknown, idPrefix: string): value is Record<string, Record<string, unknown>> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false
  for (const [key, item] of Object.entries(value)) {
    if (!key.startsWith(idPrefix) || item === null || typeof item !== 'object') return false
    if ((item as Record<string, unknown>).id !== key) return false
  }
  return true
}
