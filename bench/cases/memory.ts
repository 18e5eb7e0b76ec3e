// Case 6: memory per idle proxied session. A child process opens N connections through the
// proxy to the idle-session backend (another process), each carries one byte there and back,
// then all sit idle; the proxy's RSS (master + workers for nginx) is read before and after.
// Each proxy is restarted first, so every one starts from its own fresh baseline (a Node heap
// that earlier cases grew would hide the sessions in free space, and flatter linkgate).
// N is 8,000 (4,000 in a quick run): the harness, the client and the backend each stay far below the 20,000
// open-file limit, and the proxy holds 16,000 (client and backend side).
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { rssKiB } from '../lib/proc.ts'
import type { Row } from '../lib/results.ts'
import { ports, proxyNames, type ProxyName } from '../lib/topology.ts'
import { cellsOf, perPeer, type BenchContext } from './context.ts'

export const idleSessions = 8000

interface MemoryResult {
  readonly kibPerSession: number
  readonly opened: number
  readonly failed: number
  readonly beforeKiB: number
  readonly afterKiB: number
}

/** Opens `count` idle sessions to host:port from a child process; resolves once they are up. */
async function holdSessions (host: string, count: number, deadlineMs: number): Promise<{ opened: number, failed: number, release: () => Promise<void> }> {
  const script = join(import.meta.dirname, '../lib/idle-clients.ts')
  const child = spawn(process.execPath, [script, host, String(ports.idle), String(count), String(deadlineMs)], { stdio: ['pipe', 'pipe', 'inherit'] })
  child.stdin.on('error', () => {})
  const exited = once(child, 'exit')
  const kill = setTimeout(() => child.kill('SIGKILL'), deadlineMs + 5000)
  kill.unref()
  let line = ''
  for await (const chunk of child.stdout.setEncoding('utf8')) {
    line += chunk as string
    if (line.includes('\n')) break
  }
  const release = async (): Promise<void> => {
    child.stdin.end('close\n')
    await exited
    clearTimeout(kill)
  }
  if (!line.includes('\n')) {
    await release()
    throw new Error('idle-clients printed no result')
  }
  const { opened, failed } = JSON.parse(line) as { opened: number, failed: number }
  return { opened, failed, release }
}

export async function memoryCase (ctx: BenchContext): Promise<Row[]> {
  const count = ctx.quick ? idleSessions / 2 : idleSessions
  const proxies = proxyNames
  const outcomes = await perPeer<MemoryResult>(ctx, proxies, async (peer) => {
    await ctx.restart(peer.name as ProxyName, false)
    const pid = ctx.peers[peer.name].daemon?.pid
    if (pid === undefined) throw new Error('no process to measure')
    const settleMs = ctx.quick ? 500 : 1000
    await sleep(settleMs)
    const beforeKiB = rssKiB(pid)
    const held = await holdSessions(peer.address, count, 40_000)
    try {
      if (held.opened < count * 0.95) throw new Error(`only ${held.opened} of ${count} sessions opened (${held.failed} failed)`)
      await sleep(settleMs)
      const afterKiB = rssKiB(pid)
      const kibPerSession = (afterKiB - beforeKiB) / held.opened
      ctx.log(`  ${peer.name}: ${held.opened} sessions, RSS ${beforeKiB} -> ${afterKiB} KiB, ${kibPerSession.toFixed(2)} KiB each`)
      return { kibPerSession, opened: held.opened, failed: held.failed, beforeKiB, afterKiB }
    } finally {
      await held.release()
      // Let the proxy see the closes and release the backend side before the next peer.
      await sleep(settleMs)
    }
  })
  return [
    { caseId: 6, caseName: 'idle sessions', metric: `RSS growth per idle session (${count.toLocaleString('en-US')} sessions)`, unit: 'KiB', better: 'lower',
      reference: 'haproxy', cells: { direct: { note: 'n/a: no proxy process' }, ...cellsOf(outcomes, (r) => r.kibPerSession) },
      note: 'RSS of the proxy\'s processes (nginx: master + workers; linkgate: its one process, main thread + data-plane worker threads), fresh process, after one byte each way on every session; growth ÷ sessions',
      target: { kind: 'absolute', max: 4, text: '≤ 4 KiB' } }
  ]
}
