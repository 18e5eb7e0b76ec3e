// Case 6's client side, in its own process (8,000 sockets would crowd the harness's open-file
// limit): opens COUNT connections to HOST:PORT, at most 200 connecting at a time, sends one byte
// on each and waits for its echo, so every session is fully proxied before it is counted. Then
// prints one JSON line {"opened","failed","ms"} and holds the sockets, idle, until a line arrives
// on stdin (or stdin closes), or DEADLINE_MS passes since start: then it closes them and exits.
//   node bench/lib/idle-clients.ts HOST PORT COUNT DEADLINE_MS
import { connect, type Socket } from 'node:net'

const [host, portText, countText, deadlineText] = process.argv.slice(2)
const port = Number(portText)
const count = Number(countText)
const deadlineMs = Number(deadlineText)
if (host === undefined || !Number.isInteger(port) || !Number.isInteger(count) || !Number.isFinite(deadlineMs)) {
  process.stderr.write('usage: idle-clients.ts HOST PORT COUNT DEADLINE_MS\n')
  process.exit(2)
}

const started = Date.now()
const sockets: Socket[] = []
let opened = 0
let failed = 0
let next = 0
let reported = false

const hardStop = setTimeout(finish, deadlineMs)
hardStop.unref()

function openOne (): void {
  if (next >= count || Date.now() - started > deadlineMs / 2) {
    if (opened + failed >= next && !reported) report()
    return
  }
  next++
  const socket = connect({ host, port })
  const timer = setTimeout(() => fail(), 10_000)
  let settled = false
  const fail = (): void => {
    if (settled) return
    settled = true
    clearTimeout(timer)
    socket.destroy()
    failed++
    openOne()
  }
  socket.on('error', fail)
  socket.on('close', () => {
    if (!settled) fail()
  })
  socket.once('connect', () => socket.write('x'))
  socket.once('data', () => {
    if (settled) return
    settled = true
    clearTimeout(timer)
    sockets.push(socket)
    opened++
    openOne()
  })
}

function report (): void {
  reported = true
  process.stdout.write(JSON.stringify({ opened, failed, ms: Date.now() - started }) + '\n')
}

function finish (): void {
  if (!reported) report()
  for (const s of sockets) s.destroy()
  process.exit(0)
}

for (let i = 0; i < Math.min(200, count); i++) openOne()
process.stdin.on('data', finish)
process.stdin.on('end', finish)
process.stdin.on('error', finish)
