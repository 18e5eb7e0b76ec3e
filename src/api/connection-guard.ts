// At most `max` open control-API connections (SPEC §10, limits.apiMaxConnections). Node's own
// `server.maxConnections` closes every NEW connection at the limit, so 256 idle sockets would
// lock a real client out until they time out. Here, as nginx does with keep-alive connections
// when it runs out of worker_connections, the least recently used connection that has no
// request in flight (idle keep-alive, or one still sending its headers: a slowloris) is closed
// to make room. Failing that, the least recently used one whose request body is still arriving
// (a slow upload holds its connection "busy" for up to the 30 s request deadline; 256 of them
// would otherwise lock everyone out). Only when every connection has a whole request in hand
// is the new one closed.
import type { Server, IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Metrics } from '../metrics/metrics.ts'

interface Tracked {
  busy: number
  /** The request in flight, if any: evictable while its body is incomplete. */
  current: IncomingMessage | undefined
  /** Last time a request began or ended on it (ms). */
  used: number
}

export function guardConnections (server: Server, max: number, metrics: Metrics): void {
  // Insertion order of a Map is the eviction order: a socket is moved to the end when used.
  const open = new Map<Socket, Tracked>()

  const touch = (socket: Socket, state: Tracked): void => {
    state.used = Date.now()
    open.delete(socket)
    open.set(socket, state)
  }

  server.on('connection', (socket: Socket) => {
    if (open.size >= max) {
      let victim: Socket | undefined
      let slow: Socket | undefined
      for (const [s, state] of open) {
        if (state.busy === 0) { victim = s; break }
        if (slow === undefined && state.current !== undefined && !state.current.complete) slow = s
      }
      const reason = victim !== undefined ? 'idle' : 'slow_body'
      victim ??= slow
      if (victim === undefined) {
        metrics.apiConnectionsClosedTotal.inc({ reason: 'limit' })
        socket.destroy()
        return
      }
      metrics.apiConnectionsClosedTotal.inc({ reason })
      open.delete(victim)
      victim.destroy()
    }
    const state: Tracked = { busy: 0, current: undefined, used: Date.now() }
    open.set(socket, state)
    metrics.apiConnections.set(open.size)
    socket.once('close', () => {
      open.delete(socket)
      metrics.apiConnections.set(open.size)
    })
  })

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket
    const state = open.get(socket)
    if (state === undefined) return
    state.busy++
    state.current = req
    touch(socket, state)
    res.once('close', () => {
      state.busy--
      if (state.current === req) state.current = undefined
      if (open.has(socket)) touch(socket, state)
    })
  })
}
