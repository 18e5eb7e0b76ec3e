// The zone kept up to date name by name (records.ts LiveZone, SPEC §11) answers every query
// exactly as a zone compiled from scratch over the same records would: after random adds and
// removes, every published name, every ancestor and some absent names get byte-identical
// responses from both.
import t from 'tap'
import { buildConfig } from '../../src/config/load-config.ts'
import { answerQuery } from '../../src/dns/answers.ts'
import { buildZone, LiveZone, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_NS, TYPE_SOA, type DnsRecord, type DnsZone } from '../../src/dns/records.ts'
import { encodeQuery } from './helpers.ts'

const config = buildConfig({ listen: { dns: '127.73.20.1:5353' }, dns: { ttl: 30 } })
const suffix = config.dns.suffix

function respond (zone: DnsZone, name: string, type: number): string {
  const answer = answerQuery(encodeQuery(name, type, { id: 7 }), zone, 'udp')
  return answer.action === 'reply' && answer.response !== undefined ? answer.response.toString('hex') : answer.action
}

// A small name space, so that adds and removes collide: shared ancestors, shared names.
function randomRecord (rand: () => number): DnsRecord {
  const ep = `vpce-${Math.floor(rand() * 6)}`
  const svc = `vpcesvc-${Math.floor(rand() * 3)}`
  const zonal = rand() < 0.5 ? '-zone-a' : ''
  const address = rand() < 0.2 ? `fd00::${Math.floor(rand() * 3) + 1}` : `127.73.21.${Math.floor(rand() * 4) + 2}`
  return { name: `${ep}${zonal}.${svc}.local-1.${suffix}`, address }
}

t.test('random updates answer like a zone built from scratch', async (t) => {
  let seed = 42
  const rand = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  const live = new LiveZone(config)
  let zone = live.update([], [], 1)
  const current = new Map<string, DnsRecord>()
  const key = (r: DnsRecord): string => `${r.name} ${r.address}`
  for (let step = 2; step < 200; step++) {
    const added: DnsRecord[] = []
    const removed: DnsRecord[] = []
    for (let i = 0; i < 3; i++) {
      if (rand() < 0.55) {
        const r = randomRecord(rand)
        if (!current.has(key(r))) { current.set(key(r), r); added.push(r) }
      } else {
        const all = [...current.values()]
        const r = all[Math.floor(rand() * all.length)]
        if (r !== undefined && !added.includes(r)) { current.delete(key(r)); removed.push(r) }
      }
    }
    zone = live.update(removed, added, step)
    const fresh = buildZone([...current.values()], config, { serial: step })
    const names = new Set<string>([suffix, `ns.${suffix}`, `absent.${suffix}`, `local-1.${suffix}`, 'outside.example'])
    for (const r of current.values()) {
      for (let n = r.name; n.endsWith(suffix); n = n.slice(n.indexOf('.') + 1)) names.add(n)
    }
    for (let i = 0; i < 3; i++) names.add(randomRecord(rand).name)
    let same = true
    for (const name of names) {
      for (const type of [TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_NS, TYPE_SOA]) {
        if (respond(zone, name, type) !== respond(fresh, name, type)) {
          same = false
          t.fail(`step ${step}: ${name} type ${type} differs`)
        }
      }
    }
    if (!same) break
  }
  t.ok(current.size > 0, `ended with ${current.size} records`)
  t.same([...zone.records].map((r) => `${r.name} ${r.address}`), [...current.values()].map(key).sort(), 'records lists what is published')
})

t.test('removing the last name under an ancestor makes the ancestor NXDOMAIN again', async (t) => {
  const live = new LiveZone(config)
  const a = { name: `vpce-1.vpcesvc-1.local-1.${suffix}`, address: '127.73.21.2' }
  const b = { name: `vpce-2.vpcesvc-1.local-1.${suffix}`, address: '127.73.21.3' }
  live.update([], [a, b], 1)
  const rcode = (zone: DnsZone, name: string): number => {
    const answer = answerQuery(encodeQuery(name, TYPE_A, { id: 1 }), zone, 'udp')
    return answer.rcode
  }
  let zone = live.update([a], [], 2)
  t.equal(rcode(zone, `vpcesvc-1.local-1.${suffix}`), 0, 'still an empty non-terminal: NODATA')
  t.equal(rcode(zone, a.name), 3, 'the removed name: NXDOMAIN')
  zone = live.update([b], [], 3)
  t.equal(rcode(zone, `vpcesvc-1.local-1.${suffix}`), 3, 'nothing below: NXDOMAIN')
  t.equal(rcode(zone, `local-1.${suffix}`), 3)
  t.equal(zone.serial, 3)
})
