// Case 6's backend, in its own process so its sockets count against neither the harness's nor
// the proxy's open-file limit: echoes the first bytes of every connection (so the client knows
// the whole proxied path is up), then holds the socket open and idle until the client closes it.
//   node bench/lib/idle-server.ts HOST PORT
// Prints "listening" once bound; ends on SIGTERM or when its stdin closes (the harness died).
import { createServer, type Socket } from 'node:net'

const [host, portText] = process.argv.slice(2)
const port = Number(portText)
if (host === undefined || !Number.isInteger(port)) {
  process.stderr.write('usage: idle-server.ts HOST PORT\n')
  process.exit(2)
}

const sockets = new Set<Socket>()
const server = createServer((socket) => {
  sockets.add(socket)
  socket.on('close', () => sockets.delete(socket))
  socket.on('error', () => socket.destroy())
  socket.once('data', (chunk) => {
    socket.write(chunk)
    // Keep reading (and dropping) whatever follows, so nothing piles up in a buffer.
    socket.on('data', () => {})
  })
})
server.on('error', (err) => {
  process.stderr.write(`idle-server: ${err.message}\n`)
  process.exit(1)
})
server.listen({ host, port, backlog: 4096 }, () => process.stdout.write('listening\n'))

function stop (): void {
  server.close()
  for (const s of sockets) s.destroy()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
process.stdin.on('end', stop)
process.stdin.on('error', stop)
process.stdin.resume()
