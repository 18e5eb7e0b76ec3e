// The control API of api-harness.ts in a process of its own: prints its URL, ends when its stdin
// closes. For tests whose client must not share the server's event loop (the 413 race only
// shows when the client writes while the server, elsewhere, has already answered).
import { startApi } from './api-harness.ts'

const teardowns: Array<() => unknown> = []
const api = await startApi({ teardown: (fn) => { teardowns.push(fn) } })
process.stdout.write(api.url + '\n')
process.stdin.resume()
process.stdin.on('end', () => {
  void Promise.allSettled(teardowns.map((fn) => fn())).then(() => process.exit(0))
})
