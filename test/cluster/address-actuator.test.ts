// The address actuator on a real interface (SPEC §12): two namespaces joined by a veth pair,
// 198.18.20.0/24, endpoint subnet 198.18.21.0/24. Needs root; under CI=true a missing tool or
// privilege fails. Stale lg-h16a-* namespaces are removed first; everything is torn down after.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { AddressActuator } from '../../src/cluster/address-actuator.ts'
import { labDown } from '../helpers/netns-lab.ts'
import { requireTools } from '../helpers/tools.ts'

const A = 'lg-h16a-a'
const B = 'lg-h16a-b'
const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' })
const addrs = (ns: string): Array<{ local: string, prefixlen: number, valid_life_time: number }> =>
  (JSON.parse(ip('-n', ns, '-j', 'addr', 'show', 'dev', 'eth0')) as Array<{ addr_info: Array<{ local: string, prefixlen: number, valid_life_time: number }> }>)[0]!.addr_info
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

t.test('address actuator', async (t) => {
  if (!requireTools(t, ['ip', 'arping'])) return
  if (process.getuid?.() !== 0) {
    if (process.env.CI === 'true') t.fail('needs root (network namespaces)')
    else t.pass('needs root', { skip: 'needs root (network namespaces)' })
    return
  }
  t.teardown(() => { labDown('h16a') })
  labDown('h16a')
  ip('netns', 'add', A)
  ip('netns', 'add', B)
  ip('-n', A, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', B)
  for (const [ns, addr] of [[A, '198.18.20.1/24'], [B, '198.18.20.2/24']] as const) {
    ip('-n', ns, 'addr', 'add', addr, 'dev', 'eth0')
    ip('-n', ns, 'link', 'set', 'eth0', 'up')
    ip('-n', ns, 'link', 'set', 'lo', 'up')
  }
  ip('-n', B, 'route', 'add', '198.18.21.0/24', 'dev', 'eth0')
  const warnings: string[] = []
  const actuator = new AddressActuator({ iface: 'eth0', lifetimeSeconds: 3, subnets: ['198.18.21.0/24'], netns: A, onWarning: (e) => warnings.push(e.message) })
  t.teardown(() => actuator.close())

  t.test('start removes host addresses of endpoint subnets, and nothing else', async (t) => {
    ip('-n', A, 'addr', 'add', '198.18.21.50/32', 'dev', 'eth0')
    ip('-n', A, 'addr', 'add', '198.18.22.50/32', 'dev', 'eth0')
    await actuator.start()
    t.same(addrs(A).filter((a) => !a.local.includes(':')).map((a) => `${a.local}/${a.prefixlen}`).sort(), ['198.18.20.1/24', '198.18.22.50/32'])
  })

  t.test('set adds /32 addresses whose lifetime is the TTL; refresh renews it; the kernel drops it when not renewed', async (t) => {
    await actuator.set(new Set(['198.18.21.10', '198.18.21.11']))
    const added = addrs(A).filter((a) => a.local.startsWith('198.18.21.'))
    t.same(added.map((a) => a.local).sort(), ['198.18.21.10', '198.18.21.11'])
    t.ok(added.every((a) => a.prefixlen === 32 && a.valid_life_time <= 3), 'valid_lft <= 3 s')
    await sleep(1100)
    t.ok(addrs(A).filter((a) => a.local.startsWith('198.18.21.')).every((a) => a.valid_life_time <= 2), 'counting down')
    await actuator.refresh()
    t.ok(addrs(A).filter((a) => a.local.startsWith('198.18.21.')).every((a) => a.valid_life_time === 3), 'renewed to 3 s')
    await sleep(3600)
    t.same(addrs(A).filter((a) => a.local.startsWith('198.18.21.')), [], 'without a refresh the kernel removed them by itself')
    await actuator.set(new Set())
    t.same(warnings, [], 'removing addresses that already expired is not an error')
  })

  t.test('a new address is announced: the neighbour\'s stale ARP entry moves to our MAC', async (t) => {
    const mac = (JSON.parse(ip('-n', A, '-j', 'link', 'show', 'eth0')) as Array<{ address: string }>)[0]!.address
    ip('-n', B, 'neigh', 'replace', '198.18.21.20', 'lladdr', '02:00:5e:00:53:01', 'dev', 'eth0', 'nud', 'stale')
    await actuator.set(new Set(['198.18.21.20']))
    let lladdr = ''
    for (let i = 0; i < 30 && lladdr !== mac; i++) {
      await sleep(100)
      lladdr = (JSON.parse(ip('-n', B, '-j', 'neigh', 'show', '198.18.21.20')) as Array<{ lladdr?: string }>)[0]?.lladdr ?? ''
    }
    t.equal(lladdr, mac, 'gratuitous ARP updated the existing entry (Linux >= 4.12)')
  })

  t.test('set removes what is no longer owned; close removes everything', async (t) => {
    await actuator.set(new Set(['198.18.21.20', '198.18.21.21']))
    await actuator.set(new Set(['198.18.21.21']))
    t.same(addrs(A).filter((a) => a.local.startsWith('198.18.21.')).map((a) => a.local), ['198.18.21.21'])
    await actuator.close()
    t.same(addrs(A).filter((a) => a.local.startsWith('198.18.21.')), [])
  })

  // IPv6 (RFC 5180's benchmark range 2001:2::/48, inside these two namespaces only): DAD stays
  // on, the address is not usable while tentative, and with ndisc_notify=1 Linux sends the
  // unsolicited NA (override) once DAD completes: the neighbour's stale entry moves to our MAC.
  t.test('IPv6: usable only after DAD; ndisc_notify announces it', async (t) => {
    const v6 = new AddressActuator({ iface: 'eth0', lifetimeSeconds: 5, subnets: ['2001:2:0:21::/64'], netns: A, onWarning: (e) => warnings.push(e.message) })
    t.teardown(() => v6.close())
    t.ok(v6.hasIpv6, 'an IPv6 endpoint subnet asks for ndisc_notify')
    await v6.enableNdiscNotify()
    t.equal(execFileSync('ip', ['netns', 'exec', A, 'sysctl', '-n', 'net.ipv6.conf.eth0.ndisc_notify'], { encoding: 'utf8' }).trim(), '1')
    const mac = (JSON.parse(ip('-n', A, '-j', 'link', 'show', 'eth0')) as Array<{ address: string }>)[0]!.address
    ip('-n', B, '-6', 'route', 'add', '2001:2:0:21::/64', 'dev', 'eth0')
    ip('-n', B, '-6', 'neigh', 'replace', '2001:2:0:21::5', 'lladdr', '02:00:5e:00:53:02', 'dev', 'eth0', 'nud', 'stale')
    const v6s = async (usable: boolean): Promise<string[]> => (await v6.listInterface({ usable })).filter((a) => a.includes(':'))
    const addedAt = Date.now()
    await v6.set(new Set(['2001:2:0:21::5']))
    t.same(await v6s(false), ['2001:2:0:21::5'], 'the /128 is on the interface')
    t.same(await v6s(true), [], 'not usable while DAD runs (tentative)')
    let usableAfter = -1
    for (let i = 0; i < 50 && usableAfter < 0; i++) {
      await sleep(100)
      if ((await v6s(true)).length === 1) usableAfter = Date.now() - addedAt
    }
    t.ok(usableAfter >= 0, `usable after DAD (${usableAfter} ms)`)
    let lladdr = ''
    for (let i = 0; i < 30 && lladdr !== mac; i++) {
      lladdr = (JSON.parse(ip('-n', B, '-j', '-6', 'neigh', 'show', '2001:2:0:21::5')) as Array<{ lladdr?: string }>)[0]?.lladdr ?? ''
      if (lladdr !== mac) await sleep(100)
    }
    t.equal(lladdr, mac, 'the unsolicited NA moved the neighbour\'s entry to our MAC')
    await v6.refresh()
    t.same(await v6s(true), ['2001:2:0:21::5'], 'a refresh (addr replace) does not restart DAD')
  })

  t.test('bad input is refused with the field named', async (t) => {
    t.throws(() => new AddressActuator({ iface: 'eth0; rm', lifetimeSeconds: 3, subnets: [] }), /cluster\.interface/)
    t.throws(() => new AddressActuator({ iface: 'eth0', lifetimeSeconds: 3, subnets: ['198.18.21.0/33'] }), /subnets\[0\]/)
    t.throws(() => actuator.set(new Set(['198.18.21.1\naddr flush dev eth0'])), /is not an IP address/)
  })
})
