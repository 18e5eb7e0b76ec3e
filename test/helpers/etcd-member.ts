// One etcd member on a loopback address for tests that need a real etcd but no namespaces
// (etcd 3.4 from Debian's etcd-server; scripts/install-test-tools.sh installs it).
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface EtcdMember {
  url: string
  proc: ChildProcess
  output: () => string
  /** SIGSTOP / SIGCONT: etcd stops answering without closing connections (a silent peer). */
  pause: () => void
  resume: () => void
  stop: () => Promise<void>
}

interface Teardown { teardown (fn: () => unknown): void }

/** A free TCP port on `host` (etcd cannot be told to take port 0 and report it). */
export function freePort (host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, host, () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

export async function startEtcdMember (t: Teardown, host: string): Promise<EtcdMember> {
  const dir = mkdtempSync(join(existsShm() ? '/dev/shm' : tmpdir(), 'lg-etcd-'))
  const clientPort = await freePort(host)
  const peerPort = await freePort(host)
  const url = `http://${host}:${clientPort}`
  const peer = `http://${host}:${peerPort}`
  const proc = spawn('etcd', [
    '--name', 'm1', '--data-dir', join(dir, 'data'),
    '--listen-client-urls', url, '--advertise-client-urls', url,
    '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
    '--initial-cluster', `m1=${peer}`, '--initial-cluster-state', 'new'
  ], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  const collect = (chunk: Buffer): void => { if (out.length < 1 << 20) out += chunk.toString() }
  proc.stdout.on('data', collect)
  proc.stderr.on('data', collect)
  const exited = new Promise<void>((resolve) => proc.on('exit', () => resolve()))
  const stop = async (): Promise<void> => {
    if (proc.exitCode === null && proc.signalCode === null) { proc.kill('SIGCONT'); proc.kill('SIGKILL') }
    await exited
    rmSync(dir, { recursive: true, force: true })
  }
  t.teardown(stop)
  const deadline = Date.now() + 15000
  while (!/ready to serve client requests/.test(out)) {
    if (proc.exitCode !== null) throw new Error(`etcd exited (${proc.exitCode}):\n${out.slice(-2000)}`)
    if (Date.now() > deadline) throw new Error(`etcd not ready within 15 s:\n${out.slice(-2000)}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return {
    url,
    proc,
    output: () => out,
    pause: () => { proc.kill('SIGSTOP') },
    resume: () => { proc.kill('SIGCONT') },
    stop
  }
}

function existsShm (): boolean {
  try { return statSync('/dev/shm').isDirectory() } catch { return false }
}
