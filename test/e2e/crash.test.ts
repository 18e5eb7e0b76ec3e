// kill -9 at random moments while changes stream in; after each restart every acknowledged
// change is there, nothing half-written is, the database is never reported corrupt, and
// accepted endpoints listen again (SPEC §8, §11).
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import t from 'tap'
import { api, startGateway, writeConfig, type Gateway } from '../helpers/gateway-process.ts'

const TOKEN = 'provider-dev-token'
const ROUNDS = 20

/** Every item of a paginated list route (SPEC §10), following nextToken. */
async function listAll (gw: Gateway, path: string): Promise<Array<Record<string, any>>> {
  const items: Array<Record<string, any>> = []
  let token: string | undefined
  for (let page = 0; page < 100; page++) {
    const res = await api(gw, 'GET', `${path}?limit=1000${token === undefined ? '' : `&nextToken=${token}`}`, TOKEN)
    if (res.status !== 200) throw new Error(`GET ${path}: ${res.status} ${JSON.stringify(res.body)}`)
    items.push(...res.body.items)
    token = res.body.nextToken
    if (token === undefined) return items
  }
  throw new Error(`GET ${path}: more than 100 pages`)
}

function echoThrough (ip: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: ip, port })
    let got = ''
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no echo from ${ip}:${port}`)) }, 5000)
    socket.on('connect', () => socket.write('ping'))
    socket.on('data', (d) => {
      got += d.toString()
      if (got.length >= 4) { clearTimeout(timer); socket.end(); resolve(got) }
    })
    socket.on('error', (err) => { clearTimeout(timer); reject(err) })
  })
}

t.test('every acknowledged change survives SIGKILL at random moments', async (t) => {
  const echo = createServer((s) => { s.on('error', () => {}); s.pipe(s) })
  await new Promise<void>((resolve) => echo.listen(0, '127.40.0.10', resolve))
  t.teardown(() => echo.close())
  const echoPort = (echo.address() as AddressInfo).port

  const dir = await mkdtemp(join(tmpdir(), 'linkgate-crash-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const configFile = await writeConfig(dir, {
    listen: { api: '127.0.0.1:0', dns: '127.40.0.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.40.1.0/24', zone: 'zone-a' }, { id: 'subnet-b', cidr: '127.40.2.0/24', zone: 'zone-b' }],
    quotas: { servicesPerAccount: 1000, endpointsPerAccount: 1000 },
    log: { level: 'warn' }
  })

  const services = new Map<string, string>() // acknowledged service id -> serviceName
  const endpoints = new Map<string, { ip: string, serviceId: string }>() // acknowledged endpoint id -> ip
  const deleted = new Set<string>()
  let seq = 0

  for (let round = 0; round < ROUNDS; round++) {
    const gw = await startGateway(t, configFile)
    // Everything acknowledged before is still there.
    t.notMatch(gw.output(), /corrupt/i, `round ${round}: the start reports no corruption`)
    const svcList = await listAll(gw, '/v1/endpoint-services')
    const epList = await listAll(gw, '/v1/endpoints')
    for (const [id, serviceName] of services) {
      t.equal(svcList.find((s) => s.id === id)?.serviceName, serviceName, `round ${round}: service ${id} survived`)
    }
    for (const [id, { ip, serviceId }] of endpoints) {
      const ep = epList.find((e) => e.id === id)
      t.match(ep, { ip, serviceId, status: 'accepted' }, `round ${round}: endpoint ${id} survived`)
    }
    for (const id of deleted) {
      t.notOk(epList.some((e) => e.id === id), `round ${round}: deleted endpoint ${id} stays deleted`)
    }
    // Nothing half-written: every resource present is whole.
    for (const s of svcList) t.ok(s.serviceName && Array.isArray(s.portMappings) && Array.isArray(s.backends), `service ${s.id} is whole`)
    for (const e of epList) t.ok(e.ip && e.serviceId && e.status, `endpoint ${e.id} is whole`)

    // Stream changes; SIGKILL at a random moment while they are in flight.
    const killAfter = 50 + Math.floor(Math.random() * 350)
    const deadline = Date.now() + killAfter
    const killer = setTimeout(() => gw.proc.kill('SIGKILL'), killAfter)
    const writer = (async () => {
      for (let i = 0; i < 200 && Date.now() < deadline + 1000; i++) {
        try {
          const n = ++seq
          const svc = await api(gw, 'POST', '/v1/endpoint-services', TOKEN, {
            name: `s${n}`,
            portMappings: [{ protocol: 'TCP', servicePort: echoPort, terminalPort: 9000 + (n % 500) }],
            backends: [{ address: '127.40.0.10', zone: 'zone-a' }]
          })
          if (svc.status !== 201) continue
          services.set(svc.body.id, svc.body.serviceName)
          const ep = await api(gw, 'POST', '/v1/endpoints', TOKEN, { serviceId: svc.body.id, subnetId: n % 2 === 0 ? 'subnet-a' : 'subnet-b' })
          if (ep.status !== 201) continue
          endpoints.set(ep.body.id, { ip: ep.body.ip, serviceId: svc.body.id })
          if (n % 3 === 0) {
            // From the moment the delete is sent, the endpoint may or may not be there after a
            // kill; only an acknowledged delete must stick.
            endpoints.delete(ep.body.id)
            const del = await api(gw, 'DELETE', `/v1/endpoints/${ep.body.id}`, TOKEN)
            if (del.status === 204) deleted.add(ep.body.id)
          }
        } catch {
          return // the process is gone: requests in flight are unacknowledged
        }
      }
    })()
    const exit = await gw.exited
    clearTimeout(killer)
    await writer
    t.equal(exit.signal, 'SIGKILL', `round ${round}: killed after ${killAfter} ms`)
  }

  t.ok(services.size >= ROUNDS, `${services.size} services and ${endpoints.size} endpoints acknowledged over ${ROUNDS} rounds`)
  // After the last kill the database passes SQLite's full integrity check, no temp file is left
  // behind, and accepted endpoints listen again.
  const db = new DatabaseSync(join(dir, 'state', 'state.db'))
  t.same(db.prepare('PRAGMA integrity_check').all(), [{ integrity_check: 'ok' }], 'integrity_check: ok')
  db.close()
  t.same((await readdir(join(dir, 'state'))).filter((f) => /tmp|journal|^state\.json/.test(f)), [], 'no temp, journal or JSON file in stateDir')
  const gw = await startGateway(t, configFile)
  const list = await listAll(gw, '/v1/endpoints')
  const sample = [...endpoints.keys()].slice(-5)
  for (const id of sample) {
    const ep = list.find((e) => e.id === id) as Record<string, any>
    const svc = (await api(gw, 'GET', `/v1/endpoint-services/${ep.serviceId}`, TOKEN)).body
    const port = svc.portMappings[0].terminalPort
    // The listener may take a moment after the API is up; retry briefly.
    let echoed = ''
    for (let attempt = 0; attempt < 20 && echoed === ''; attempt++) {
      echoed = await echoThrough(ep.ip, port).catch(async () => { await new Promise((r) => setTimeout(r, 100)); return '' })
    }
    t.equal(echoed, 'ping', `endpoint ${id} at ${ep.ip}:${port} forwards again after restart`)
  }
  gw.proc.kill('SIGTERM')
  t.equal((await gw.exited).code, 0, 'SIGTERM exits 0')
})
