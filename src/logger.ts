// The process log (SPEC §14 `log.format`): JSON lines for machines, one readable line per
// event for people. `auto` decides by whether stdout is a terminal, as journald-era daemons
// and kubectl do: a pipe or a file gets JSON, a terminal gets text.
import { createRequire } from 'node:module'
import pino, { type Logger } from 'pino'
import type pinoPretty from 'pino-pretty'
import type { Config } from './control/schemas.ts'

export type LogFormat = Config['log']['format']

export function wantsPretty (format: LogFormat, stdoutIsTty: boolean): boolean {
  return format === 'pretty' || (format === 'auto' && stdoutIsTty)
}

export function createLogger (log: Pick<Config['log'], 'level' | 'format'>, stdout: NodeJS.WriteStream = process.stdout): Logger {
  const tty = stdout.isTTY === true
  if (!wantsPretty(log.format, tty)) return pino({ level: log.level })
  // pino-pretty as a synchronous stream on stdout (not a transport thread): the start-up banner,
  // written with process.stdout, stays in order with the log lines around it.
  // Loaded only when wanted: a data-plane worker (JSON unless a person watches) starts faster.
  const pretty = createRequire(import.meta.url)('pino-pretty') as typeof pinoPretty
  return pino({ level: log.level }, pretty({
    destination: 1,
    sync: true,
    colorize: tty,
    singleLine: true,
    translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l',
    ignore: 'hostname'
  }))
}
