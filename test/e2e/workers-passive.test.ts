// SPEC §5 passive health with SPEC §11 workers, through `linkgate start` with `workers: 2`:
// failed connects seen by different workers count toward one verdict, so a backend is marked
// unhealthy after PASSIVE_FAILURE_THRESHOLD failures in total, not that many per worker. The
// gateway's debug log says which worker saw each failed connect (the `worker` field), which
// proves the spread. Addresses: 127.81.10.0/24 (gateway, endpoints, the good backend),
// 127.81.11.0/24 (backends that refuse); every listener on port 0.
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { PASSIVE_FAILURE_THRESHOLD } from '../../src/dataplane/upstream/upstream-state.ts'
import { startGateway, writeConfig } from '../helpers/gateway-process.ts'

const TRIALS = 8
const PORT = 8110
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const svcId = (i: number): string => `vpcesvc-00000000811${i}`
const badId = (i: number): string => `be-0000811${i}`

/** One connection through the endpoint: resolves with what the backend said ('' when reset). */
function once (ip: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: ip, port: PORT })
    let got = ''
    const timer = setTimeout(() => { s.destroy() }, 3000)
    s.on('data', (d: Buffer) => { got += d.toString() })
    s.on('error', () => {})
    s.on('close', () => { clearTimeout(timer); resolve(got) })
  })
}

interface LogLine { msg?: string, worker?: number, backendId?: string, to?: string, reason?: string }

function logLines (out: string): LogLine[] {
  const lines: LogLine[] = []
  for (const l of out.split('\n')) {
    if (!l.startsWith('{')) continue
    try { lines.push(JSON.parse(l) as LogLine) } catch {}
  }
  return lines
}

t.test('passive failures seen by both workers make one verdict at the threshold', async (t) => {
  // The good backend; each trial's bad backend refuses (nothing listens on its address).
  const good = createServer((s) => { s.on('error', () => {}); s.end('A') })
  await new Promise<void>((resolve) => good.listen(0, '127.81.10.200', resolve))
  t.teardown(() => good.close())
  const servicePort = (good.address() as AddressInfo).port
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-workers-passive-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // One service and endpoint per trial, so that every trial starts from fresh health records.
  const services = Array.from({ length: TRIALS }, (_, i) => ({
    id: svcId(i),
    ownerAccountId: '100000000001',
    portMappings: [{ protocol: 'TCP', servicePort, terminalPort: PORT }],
    backends: [
      { id: `be-0000810${i}`, address: '127.81.10.200', zone: 'zone-a', weight: 1 },
      { id: badId(i), address: `127.81.11.${10 + i}`, zone: 'zone-a', weight: 1 }
    ]
  }))
  const endpoints = services.map((s, i) => ({ id: `vpce-00000000811${i}`, ownerAccountId: '100000000001', serviceId: s.id, subnetId: 'subnet-a', ip: `127.81.10.${10 + i}` }))
  const configFile = await writeConfig(dir, {
    listen: { api: '127.81.10.1:0', dns: '127.81.10.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.81.10.0/24', zone: 'zone-a' }],
    workers: 2,
    log: { level: 'debug', format: 'json' },
    services,
    endpoints
  })
  const gw = await startGateway(t, configFile)

  const failures = (i: number): LogLine[] => logLines(gw.output()).filter((l) => l.msg === 'backend connect failed' && l.backendId === badId(i))
  const verdict = (i: number): LogLine | undefined => logLines(gw.output()).find((l) => l.msg === 'backend health changed' && l.backendId === badId(i) && l.to === 'unhealthy')

  let spreadTrial = -1
  for (let i = 0; i < TRIALS && spreadTrial < 0; i++) {
    const ip = `127.81.10.${10 + i}`
    // One connection at a time: each worker alternates the good and the bad backend (weights 1:1),
    // a failed connect fails over to the good one, so every client gets 'A'.
    for (let c = 0; c < 40 && failures(i).length < PASSIVE_FAILURE_THRESHOLD; c++) {
      t.equal(await once(ip), 'A', `trial ${i}: connection ${c} served (failed over where needed)`)
      await sleep(250) // the worker's failure line and its report to the main thread land
    }
    const seen = failures(i)
    t.equal(seen.length, PASSIVE_FAILURE_THRESHOLD, `trial ${i}: ${PASSIVE_FAILURE_THRESHOLD} failed connects`)
    const deadline = Date.now() + 2000
    while (verdict(i) === undefined && Date.now() < deadline) await sleep(20)
    const v = verdict(i)
    t.ok(v !== undefined, `trial ${i}: unhealthy after ${PASSIVE_FAILURE_THRESHOLD} failed connects in total (workers ${seen.map((l) => l.worker).join(', ')})`)
    t.match(v?.reason, `passive: ${PASSIVE_FAILURE_THRESHOLD} consecutive failed connects`, `trial ${i}: the verdict counts failures of every worker`)
    // After the verdict no worker tries it: 12 more connections, no new failure.
    for (let c = 0; c < 12; c++) t.equal(await once(ip), 'A')
    await sleep(200)
    t.equal(failures(i).length, PASSIVE_FAILURE_THRESHOLD, `trial ${i}: no worker tries the backend after the verdict`)
    if (new Set(seen.map((l) => l.worker)).size === 2) spreadTrial = i
  }
  // Each trial's failures land on whichever worker the kernel's hash gave the connection; a trial
  // whose failures were all on one worker proves nothing about sharing, so trials go on until
  // one had both (3 of 4 trials do): that one shows the threshold is over both workers.
  t.ok(spreadTrial >= 0, `a trial had failures on both workers (trial ${spreadTrial})`)
  const workersAll = new Set(logLines(gw.output()).filter((l) => l.msg === 'backend connect failed').map((l) => l.worker))
  t.same([...workersAll].sort(), [0, 1], 'both workers saw failed connects')
  gw.proc.kill('SIGTERM')
  await gw.exited
})
