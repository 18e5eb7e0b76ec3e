// Child process of udp-proxy.test.ts, run under a small open-file limit (`ulimit -n`): more
// clients than there are descriptors for flow sockets. Prints what happened as one JSON line.
import type { Socket } from 'node:dgram'
import { ENDPOINT_ID, metricValue, request, sleep, udpBackend, udpClient, udpEndpoint } from './udp-fixtures.ts'

const t = { teardown: () => {} } // the process exits at the end
const be = await udpBackend(t, '127.22.15.11', 0)
const h = await udpEndpoint(t, { ip: '127.22.15.1', servicePort: be.port, backends: [{ address: be.address }] })
const clients: Socket[] = []
const answered = new Set<Socket>()
for (let i = 0; i < 60; i++) {
  const c = await udpClient(t, '127.22.15.100')
  c.on('message', () => { answered.add(c) })
  clients.push(c)
}
for (const c of clients) c.send('x', h.port, h.ip)
await sleep(500)
const answeredAtPeak = answered.size
const flowsAtPeak = h.listener.flows
const activeAtPeak = h.runtime.active
const flowsTotal = await metricValue(h.metrics.connectionsTotal, { endpoint_id: ENDPOINT_ID, protocol: 'UDP' })
const refused = await metricValue(h.metrics.connectionsRefusedTotal, { endpoint_id: ENDPOINT_ID, reason: 'overload' })
// Free descriptors by closing answered clients' sockets; a client whose flow failed tries again.
const unanswered = clients.filter((c) => !answered.has(c))
for (const c of answered) c.close()
const retry = unanswered[0] === undefined ? null : await request(unanswered[0], h, 'again')
process.stdout.write(JSON.stringify({
  clients: clients.length, answered: answeredAtPeak, flowsAtPeak, activeAtPeak, flowsTotal, refused, retry: retry?.msg.toString() ?? null
}) + '\n')
process.exit(0)
