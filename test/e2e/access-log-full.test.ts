// SPEC §10 "Logs never stop the proxy": a real gateway with `log.access: /dev/full` (every write
// fails with ENOSPC) serves 200 proxied connections, keeps answering /healthz, counts every
// dropped line in linkgate_access_log_dropped_total, and shuts down cleanly.
// Addresses: 127.72.1.0/24.
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { startGateway, writeConfig } from '../helpers/gateway-process.ts'
import { sampleSum } from '../helpers/prom-text.ts'

const SVC = 'vpcesvc-0000000072a1'
const EP = 'vpce-0000000072e1'
const EP_IP = '127.72.1.10'
const CONNECTIONS = 200

function echoOnce (payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: EP_IP, port: 7201 })
    let got = ''
    const timer = setTimeout(() => { s.destroy(); reject(new Error('no echo within 5 s')) }, 5000)
    s.on('error', (err) => { clearTimeout(timer); reject(err) })
    s.on('connect', () => s.end(payload))
    s.on('data', (d) => { got += d.toString() })
    s.on('close', () => { clearTimeout(timer); resolve(got) })
  })
}

t.test('log.access on a full disk: 200 connections served, lines dropped and counted, /healthz answers, clean exit', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-devfull-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const echo = createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s) })
  await new Promise<void>((resolve) => echo.listen(0, '127.72.1.20', resolve))
  t.teardown(() => echo.close())

  const configFile = await writeConfig(dir, {
    listen: { api: '127.72.1.1:0', dns: '127.72.1.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.72.1.0/24', zone: 'zone-a' }],
    log: { level: 'warn', access: '/dev/full' },
    limits: { shutdownGraceSeconds: 2 },
    services: [{
      id: SVC,
      ownerAccountId: '100000000001',
      portMappings: [{ protocol: 'TCP', servicePort: (echo.address() as AddressInfo).port, terminalPort: 7201 }],
      backends: [{ id: 'be-000072b1', address: '127.72.1.20', zone: 'zone-a' }],
      healthCheck: { enabled: false }
    }],
    endpoints: [{ id: EP, ownerAccountId: '100000000001', serviceId: SVC, subnetId: 'subnet-a', ip: EP_IP }]
  })
  const gw = await startGateway(t, configFile)

  let served = 0
  for (let batch = 0; batch < CONNECTIONS / 20; batch++) {
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => echoOnce(`c${batch * 20 + i}`)))
    served += replies.filter((r, i) => r === `c${batch * 20 + i}`).length
    // Every batch also checks the API's event loop is free.
    t.equal((await fetch(`${gw.apiUrl}/healthz`)).status, 200, `batch ${batch}: /healthz answers`)
  }
  t.equal(served, CONNECTIONS, 'every proxied connection was served')

  // Every line fails to write (ENOSPC) and is counted; the writer waits 1 s after each failure.
  let dropped = 0
  for (let i = 0; i < 60 && dropped < CONNECTIONS; i++) {
    dropped = sampleSum(await (await fetch(`${gw.apiUrl}/metrics`)).text(), 'linkgate_access_log_dropped_total')
    if (dropped < CONNECTIONS) await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.equal(dropped, CONNECTIONS, 'linkgate_access_log_dropped_total counts every line')
  const errors = gw.output().split('\n').filter((l) => l.includes('access log: write failed'))
  t.equal(errors.length, 1, 'the write error is logged once (at most once a minute)')
  t.match(errors[0], /ENOSPC/)

  gw.proc.kill('SIGTERM')
  const exit = await gw.exited
  t.same(exit, { code: 0, signal: null }, 'SIGTERM: the gateway exits 0 (nothing spins on the full disk)')
})
