// /metrics after real TCP, UDP and DNS traffic: the counters match what was sent; the output
// passes `promtool check metrics`; a real Prometheus scraping every second sees the values; the
// access log has one well-formed line per connection and flow.
import { execFile, spawn } from 'node:child_process'
import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import dns2 from 'dns2'
import pino from 'pino'
import t from 'tap'
import { buildApp } from '../../src/app.ts'
import { buildConfig } from '../../src/config/load-config.ts'
import { sampleSum } from '../helpers/prom-text.ts'
import { requireTools } from '../helpers/tools.ts'

const SVC = 'vpcesvc-0000000045a1'
const EP = 'vpce-0000000045a1'
const EP_IP = '127.45.1.5'
const PORT = 9001
const TCP_CONNS = 5
const TCP_BYTES = 1000
const UDP_FLOWS = 3
const UDP_DATAGRAMS = 4
const UDP_BYTES = 100

function tcpRoundTrip (payload: Buffer, localAddress?: string): Promise<{ echoed: number, error?: string }> {
  return new Promise((resolve) => {
    const socket = connect({ host: EP_IP, port: PORT, localAddress })
    let echoed = 0
    socket.on('connect', () => socket.write(payload))
    socket.on('data', (d) => {
      echoed += d.length
      if (echoed >= payload.length) socket.end()
    })
    socket.on('error', (err) => resolve({ echoed, error: (err as NodeJS.ErrnoException).code }))
    socket.on('close', () => resolve({ echoed }))
  })
}

function udpExchange (count: number, size: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket: UdpSocket = createSocket('udp4')
    let got = 0
    const timer = setTimeout(() => { socket.close(); reject(new Error(`UDP: ${got}/${count} echoes`)) }, 5000)
    socket.on('message', () => {
      if (++got === count) { clearTimeout(timer); socket.close(); resolve(got) }
    })
    socket.bind(0, '127.0.0.1', () => {
      for (let i = 0; i < count; i++) socket.send(Buffer.alloc(size, i), PORT, EP_IP)
    })
  })
}

function dnsQuery (port: number, name: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const q = new dns2.Packet()
    q.header.id = Math.floor(Math.random() * 65535)
    q.header.rd = 1
    q.questions.push({ name, type: dns2.Packet.TYPE.A, class: dns2.Packet.CLASS.IN } as unknown as (typeof q.questions)[number])
    const socket = createSocket('udp4')
    const timer = setTimeout(() => { socket.close(); reject(new Error('no DNS answer')) }, 3000)
    socket.on('message', (msg) => {
      clearTimeout(timer)
      socket.close()
      resolve(msg.readUInt16BE(2) & 0x0f)
    })
    socket.send(q.toBuffer(), port, '127.45.0.1')
  })
}

t.test('metrics, promtool, Prometheus and the access log agree with the traffic sent', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-metrics-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))

  const tcpEcho = createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s) })
  await new Promise<void>((resolve) => tcpEcho.listen(0, '127.45.0.10', resolve))
  t.teardown(() => tcpEcho.close())
  const udpEcho = createSocket('udp4')
  udpEcho.on('message', (msg, rinfo) => udpEcho.send(msg, rinfo.port, rinfo.address))
  await new Promise<void>((resolve) => udpEcho.bind(0, '127.45.0.10', resolve))
  t.teardown(() => udpEcho.close())

  const accessFile = join(dir, 'access.log')
  const config = buildConfig({
    listen: { api: '127.45.0.1:0', dns: '127.45.0.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.45.1.0/24', zone: 'zone-a' }],
    limits: { udpIdleTimeoutSeconds: 0.5 },
    log: { level: 'silent', access: accessFile },
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [
        { protocol: 'TCP', servicePort: (tcpEcho.address() as AddressInfo).port, terminalPort: PORT },
        { protocol: 'UDP', servicePort: (udpEcho.address() as AddressInfo).port, terminalPort: PORT }
      ],
      backends: [{ id: 'be-000045a1', address: '127.45.0.10', zone: 'zone-a' }],
      healthCheck: { enabled: false }
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: EP_IP, allowedSources: ['127.0.0.0/9'] }]
  })
  const app = buildApp(config, { logger: pino({ level: 'silent' }) })
  t.teardown(() => app.destroy())
  const addresses = await app.start()
  const apiUrl = `http://127.45.0.1:${addresses.api.port}`

  // TCP: admitted connections with known payloads, and one from a source outside allowedSources.
  for (let i = 0; i < TCP_CONNS; i++) {
    const r = await tcpRoundTrip(Buffer.alloc(TCP_BYTES, i))
    t.equal(r.echoed, TCP_BYTES, `TCP connection ${i} echoed`)
  }
  const refused = await tcpRoundTrip(Buffer.from('x'), '127.200.0.1')
  t.equal(refused.echoed, 0, 'a source outside allowedSources gets nothing')
  // UDP: a few flows.
  for (let i = 0; i < UDP_FLOWS; i++) t.equal(await udpExchange(UDP_DATAGRAMS, UDP_BYTES), UDP_DATAGRAMS)
  // DNS: two names that exist, one that does not.
  const dnsName = app.store.state.endpoints[EP]?.dnsNames[0] as string
  t.equal(await dnsQuery(addresses.dns.udp.port, dnsName), 0, 'NOERROR')
  t.equal(await dnsQuery(addresses.dns.udp.port, dnsName.toUpperCase()), 0, 'NOERROR, any case')
  t.equal(await dnsQuery(addresses.dns.udp.port, `nope.${SVC}.local-1.privatelink.internal`), 3, 'NXDOMAIN')
  // Let UDP flows expire (idle 0.5 s, swept periodically) so their access-log lines exist.
  await new Promise((resolve) => setTimeout(resolve, 2500))

  const text = await (await fetch(`${apiUrl}/metrics`)).text()
  const ep = { endpoint_id: EP, service_id: SVC }
  t.equal(sampleSum(text, 'linkgate_connections_total', { ...ep, protocol: 'TCP', terminal_port: String(PORT) }), TCP_CONNS)
  t.equal(sampleSum(text, 'linkgate_connections_total', { ...ep, protocol: 'UDP', terminal_port: String(PORT) }), UDP_FLOWS)
  t.equal(sampleSum(text, 'linkgate_bytes_total', { ...ep, protocol: 'TCP', direction: 'client_to_backend' }), TCP_CONNS * TCP_BYTES)
  t.equal(sampleSum(text, 'linkgate_bytes_total', { ...ep, protocol: 'TCP', direction: 'backend_to_client' }), TCP_CONNS * TCP_BYTES)
  t.equal(sampleSum(text, 'linkgate_bytes_total', { ...ep, protocol: 'UDP', direction: 'client_to_backend' }), UDP_FLOWS * UDP_DATAGRAMS * UDP_BYTES)
  t.equal(sampleSum(text, 'linkgate_bytes_total', { ...ep, protocol: 'UDP', direction: 'backend_to_client' }), UDP_FLOWS * UDP_DATAGRAMS * UDP_BYTES)
  t.equal(sampleSum(text, 'linkgate_connections_refused_total', { endpoint_id: EP, reason: 'source' }), 1)
  t.equal(sampleSum(text, 'linkgate_active_connections', { ...ep, protocol: 'TCP' }), 0)
  t.equal(sampleSum(text, 'linkgate_active_connections', { ...ep, protocol: 'UDP' }), 0)
  t.equal(sampleSum(text, 'linkgate_backend_connections_total', { service_id: SVC, backend_id: 'be-000045a1', zone: 'zone-a' }), TCP_CONNS + UDP_FLOWS)
  t.equal(sampleSum(text, 'linkgate_backend_up', { service_id: SVC, backend_id: 'be-000045a1', address: '127.45.0.10', zone: 'zone-a' }), 1)
  t.equal(sampleSum(text, 'linkgate_backend_connect_duration_seconds_count', { service_id: SVC }), TCP_CONNS)
  t.equal(sampleSum(text, 'linkgate_dns_queries_total', { qtype: 'A', rcode: 'NOERROR' }), 2)
  t.equal(sampleSum(text, 'linkgate_dns_queries_total', { qtype: 'A', rcode: 'NXDOMAIN' }), 1)
  t.ok(sampleSum(text, 'process_resident_memory_bytes') > 0, 'default process metrics are there')

  t.test('promtool check metrics passes without a complaint', async (t) => {
    if (!requireTools(t, ['promtool'])) return
    const result = await new Promise<{ code: number | null, out: string }>((resolve) => {
      const child = execFile('promtool', ['check', 'metrics'], (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? 1, out: stdout + stderr })
      })
      child.stdin?.end(text)
    })
    t.equal(result.code, 0, 'promtool exit code')
    t.equal(result.out.trim(), '', 'promtool said nothing')
  })

  t.test('a real Prometheus scraping every second sees linkgate_connections_total', async (t) => {
    if (!requireTools(t, ['prometheus'])) return
    const promDir = join(dir, 'prometheus')
    const promPort = 20000 + Math.floor(Math.random() * 20000)
    await writeFile(join(dir, 'prometheus.yml'), [
      'global: { scrape_interval: 1s, evaluation_interval: 1s }',
      'scrape_configs:',
      '  - job_name: linkgate',
      `    static_configs: [{ targets: ["127.45.0.1:${addresses.api.port}"] }]`
    ].join('\n') + '\n')
    const prom = spawn('prometheus', [
      `--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${promDir}`,
      `--web.listen-address=127.45.0.3:${promPort}`, '--log.level=error'
    ], { stdio: 'ignore' })
    t.teardown(() => { prom.kill('SIGKILL') })
    const query = encodeURIComponent(`sum(linkgate_connections_total{endpoint_id="${EP}",protocol="TCP"})`)
    let value: number | undefined
    const deadline = Date.now() + 40_000
    while (Date.now() < deadline && value !== TCP_CONNS) {
      await new Promise((resolve) => setTimeout(resolve, 500))
      try {
        const res = await fetch(`http://127.45.0.3:${promPort}/api/v1/query?query=${query}`)
        const body = await res.json() as { data?: { result?: Array<{ value: [number, string] }> } }
        const v = body.data?.result?.[0]?.value[1]
        if (v !== undefined) value = Number(v)
      } catch {}
    }
    t.equal(value, TCP_CONNS, 'Prometheus query API returns the TCP connections the test made')
  })

  t.test('the access log has one well-formed line per connection and flow', async (t) => {
    await app.close()
    const lines = (await readFile(accessFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l))
    const tcp = lines.filter((l) => l.protocol === 'TCP' && l.closeReason !== 'source')
    const udp = lines.filter((l) => l.protocol === 'UDP')
    t.equal(tcp.length, TCP_CONNS, 'one line per admitted TCP connection')
    t.equal(udp.length, UDP_FLOWS, 'one line per UDP flow')
    for (const l of tcp) {
      t.match(l, {
        endpointId: EP, serviceId: SVC, terminalPort: PORT, backendId: 'be-000045a1', backendAddress: '127.45.0.10', zone: 'zone-a',
        bytesToBackend: TCP_BYTES, bytesToClient: TCP_BYTES, closeReason: 'client'
      })
      t.match(l.client, /^127\.0\.0\.1:\d+$/)
      t.type(l.durationMs, 'number')
      t.match(l.time, /^\d{4}-\d\d-\d\dT/)
    }
    for (const l of udp) {
      t.match(l, { endpointId: EP, bytesToBackend: UDP_DATAGRAMS * UDP_BYTES, bytesToClient: UDP_DATAGRAMS * UDP_BYTES, closeReason: 'idle' })
    }
  })
})
