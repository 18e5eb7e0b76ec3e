// Puts owned endpoint IPs on the node's interface (SPEC §12): each as a /32 (/128) whose
// valid_lft and preferred_lft are the given lifetime (cluster mode: lease TTL - 1 s), refreshed
// (`ip addr replace`) every time the lease is renewed, so the kernel removes the addresses of a
// killed or frozen process by itself. A new IPv4 address is announced with gratuitous ARP
// (`arping -U -c 2 -I IFACE IP`, iputils; since Linux 4.12 it updates neighbours' existing
// entries). IPv6 addresses keep DAD: with `net.ipv6.conf.IFACE.ndisc_notify=1` (which
// `enableNdiscNotify` sets) Linux itself sends the unsolicited NA (override flag) once DAD
// completes, and DAD refuses an address still held by another node. The address is tentative
// for 1-2 s meanwhile; `listInterface({ usable: true })` leaves tentative and DAD-failed ones out,
// and cluster mode serves an IP only once it is usable (README "Cluster": nodad vs ndisc_notify).
//
// Every change runs as one `ip -force -batch -` process, and changes run one at a time in the
// order asked, so a removal is never overtaken by an earlier refresh.
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { isIP } from 'node:net'
import ipaddr from 'ipaddr.js'

export interface AddressActuatorOptions {
  /** Interface the addresses go on (`cluster.interface`). */
  iface: string
  /** valid_lft and preferred_lft of every address, in seconds: the lease TTL. */
  lifetimeSeconds: number
  /** Endpoint subnets (CIDRs). At start, /32 and /128 addresses inside them are removed: this
   *  node owns nothing yet, and a killed predecessor's addresses must not answer. */
  subnets: readonly string[]
  /** Send gratuitous ARP for new IPv4 addresses (default true). */
  announce?: boolean
  /** Trouble that changes nothing for the caller (a failed command, an arping that failed). */
  onWarning?: (err: Error) => void
  /** Run the commands in this network namespace (`ip -n NS`, `ip netns exec NS arping`); for
   *  tools and tests that drive a node's interface from outside. Default: the current one. */
  netns?: string
  ipCommand?: string
  arpingCommand?: string
}

interface CommandResult { code: number | null, stderr: string, stdout: string }

function run (command: string, args: readonly string[], input?: string): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => { if (stdout.length < 1 << 22) stdout += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { if (stderr.length < 1 << 16) stderr += chunk.toString() })
    child.on('error', (err) => resolve({ code: -1, stdout, stderr: err.message }))
    child.on('close', (code) => resolve({ code, stdout, stderr }))
    child.stdin.on('error', () => {})
    child.stdin.end(input ?? '')
  })
}

const IFNAME = /^[A-Za-z0-9_.:-]{1,15}$/
const hostPrefix = (ip: string): number => isIP(ip) === 6 ? 128 : 32

export class AddressActuator {
  readonly #iface: string
  readonly #lifetime: number
  readonly #subnets: Array<[ipaddr.IPv4 | ipaddr.IPv6, number]>
  readonly #announce: boolean
  readonly #warn: (err: Error) => void
  readonly #ip: string
  readonly #arping: string
  readonly #nsArgs: string[]
  #current = new Set<string>()
  #queue: Promise<void> = Promise.resolve()
  readonly #arpings = new Set<ChildProcess>()
  #closed = false

  constructor (options: AddressActuatorOptions) {
    if (!IFNAME.test(options.iface)) throw new RangeError(`cluster.interface: ${JSON.stringify(options.iface)} is not an interface name`)
    if (!Number.isInteger(options.lifetimeSeconds) || options.lifetimeSeconds < 1) {
      throw new RangeError(`address lifetime: ${options.lifetimeSeconds} (expected whole seconds >= 1)`)
    }
    this.#subnets = options.subnets.map((cidr, i) => {
      try { return ipaddr.parseCIDR(cidr) } catch { throw new RangeError(`subnets[${i}]: ${JSON.stringify(cidr)} is not a CIDR`) }
    })
    this.#iface = options.iface
    this.#lifetime = options.lifetimeSeconds
    this.#announce = options.announce ?? true
    this.#warn = options.onWarning ?? (() => {})
    this.#ip = options.ipCommand ?? 'ip'
    this.#arping = options.arpingCommand ?? 'arping'
    if (options.netns !== undefined && !/^[A-Za-z0-9_.-]{1,64}$/.test(options.netns)) throw new RangeError(`netns: ${JSON.stringify(options.netns)} is not a namespace name`)
    this.#nsArgs = options.netns === undefined ? [] : ['-n', options.netns]
  }

  /** The addresses this actuator has put on the interface. */
  get addresses (): ReadonlySet<string> { return this.#current }

  /** Removes /32 and /128 addresses of the endpoint subnets from the interface (nothing is owned yet). */
  start (): Promise<void> {
    return this.#enqueue(async () => {
      const stray = (await this.listInterface()).filter((ip) => this.#inSubnets(ip) && !this.#current.has(ip))
      if (stray.length > 0) await this.#batch(stray.map((ip) => this.#delLine(ip)), true)
    })
  }

  /** Makes the owned set exactly `ips`: removes first, then adds and announces. */
  set (ips: ReadonlySet<string>): Promise<void> {
    const wanted = new Set<string>()
    for (const ip of ips) {
      if (isIP(ip) === 0) throw new RangeError(`address actuator: ${JSON.stringify(ip)} is not an IP address`)
      wanted.add(ip)
    }
    return this.#enqueue(async () => {
      if (this.#closed) wanted.clear()
      const removed = [...this.#current].filter((ip) => !wanted.has(ip))
      const added = [...wanted].filter((ip) => !this.#current.has(ip))
      if (removed.length > 0) {
        for (const ip of removed) this.#current.delete(ip)
        await this.#batch(removed.map((ip) => this.#delLine(ip)), true)
      }
      if (added.length > 0) {
        for (const ip of added) this.#current.add(ip)
        await this.#batch(added.map((ip) => this.#replaceLine(ip)), false)
        if (this.#announce && !this.#closed) for (const ip of added) if (isIP(ip) === 4) this.#gratuitousArp(ip)
      }
    })
  }

  /** Gives every owned address a fresh lifetime: call on each lease renewal. */
  refresh (): Promise<void> {
    return this.#enqueue(async () => {
      if (this.#current.size > 0) await this.#batch([...this.#current].map((ip) => this.#replaceLine(ip)), false)
    })
  }

  /** Removes every owned address and stops the announcements. Safe to call twice. */
  async close (): Promise<void> {
    this.#closed = true
    await this.set(new Set())
    for (const child of this.#arpings) child.kill('SIGKILL')
  }

  /** Whether any endpoint subnet is IPv6 (then `enableNdiscNotify` is wanted). */
  get hasIpv6 (): boolean { return this.#subnets.some(([net]) => net.kind() === 'ipv6') }

  /** `net.ipv6.conf.IFACE.ndisc_notify = 1` in this process's network namespace: Linux then sends
   *  an unsolicited NA for each IPv6 address once its DAD completes. */
  async enableNdiscNotify (): Promise<void> {
    if (this.#nsArgs.length > 0) {
      const res = await run(this.#ip, ['netns', 'exec', this.#nsArgs[1] as string, 'sysctl', '-qw', `net.ipv6.conf.${this.#iface}.ndisc_notify=1`])
      if (res.code !== 0) throw new Error(`sysctl ndisc_notify on ${this.#iface}: ${res.stderr.trim()}`)
      return
    }
    await writeFile(`/proc/sys/net/ipv6/conf/${this.#iface}/ndisc_notify`, '1\n')
  }

  /** Local /32 and /128 addresses on the interface (as plain addresses), for start-up clean-up and
   *  tests; `usable`: only those the kernel lets a socket bind (not tentative, not DAD-failed). */
  async listInterface (options: { usable?: boolean } = {}): Promise<string[]> {
    const res = await run(this.#ip, [...this.#nsArgs, '-j', 'addr', 'show', 'dev', this.#iface])
    if (res.code !== 0) throw new Error(`ip addr show dev ${this.#iface}: ${res.stderr.trim() || `exit ${res.code}`}`)
    const links = JSON.parse(res.stdout) as Array<{ addr_info?: Array<{ local?: string, prefixlen?: number, tentative?: boolean, dadfailed?: boolean }> }>
    const out: string[] = []
    for (const link of links) {
      for (const a of link.addr_info ?? []) {
        if (options.usable === true && (a.tentative === true || a.dadfailed === true)) continue
        if (typeof a.local === 'string' && a.prefixlen === hostPrefix(a.local)) out.push(a.local)
      }
    }
    return out
  }

  #inSubnets (ip: string): boolean {
    let addr: ipaddr.IPv4 | ipaddr.IPv6
    try { addr = ipaddr.parse(ip) } catch { return false }
    return this.#subnets.some(([net, bits]) => net.kind() === addr.kind() && addr.match(net, bits))
  }

  #replaceLine (ip: string): string {
    const lft = String(this.#lifetime)
    return `addr replace ${ip}/${hostPrefix(ip)} dev ${this.#iface} valid_lft ${lft} preferred_lft ${lft}`
  }

  #delLine (ip: string): string { return `addr del ${ip}/${hostPrefix(ip)} dev ${this.#iface}` }

  async #batch (lines: string[], deleting: boolean): Promise<void> {
    const res = await run(this.#ip, [...this.#nsArgs, '-force', '-batch', '-'], lines.join('\n') + '\n')
    if (res.code === 0) return
    // Deleting an address that already expired is success: older kernels say "Cannot assign
    // requested address", newer ones (extack) "ipv4: Address not found". `ip -batch` adds a
    // "Command failed -:N" line after each error.
    const errors = res.stderr.split('\n').filter((l) => l.trim() !== '' && !/^Command failed -:\d+$/.test(l.trim()) &&
      !(deleting && /Cannot assign requested address|Address not found/.test(l)))
    if (errors.length > 0) this.#warn(new Error(`ip -batch on ${this.#iface}: ${errors.slice(0, 5).join('; ')}`))
  }

  #gratuitousArp (ip: string): void {
    const args = ['-U', '-c', '2', '-I', this.#iface, ip]
    const child = this.#nsArgs.length === 0
      ? spawn(this.#arping, args, { stdio: ['ignore', 'ignore', 'pipe'] })
      : spawn(this.#ip, ['netns', 'exec', this.#nsArgs[1] as string, this.#arping, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
    this.#arpings.add(child)
    let stderr = ''
    child.stderr?.on('data', (chunk: Buffer) => { if (stderr.length < 4096) stderr += chunk.toString() })
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
    child.on('error', (err) => this.#warn(new Error(`arping ${ip}: ${err.message}`)))
    child.on('close', (code) => {
      clearTimeout(timer)
      this.#arpings.delete(child)
      if (code !== 0 && code !== null && !this.#closed) this.#warn(new Error(`arping -U ${ip} on ${this.#iface}: exit ${code} ${stderr.trim()}`))
    })
  }

  #enqueue (job: () => Promise<void>): Promise<void> {
    const next = this.#queue.then(job, job)
    this.#queue = next.catch((err: unknown) => this.#warn(err instanceof Error ? err : new Error(String(err))))
    return next
  }
}
