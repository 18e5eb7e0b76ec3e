// One A query over UDP, to know that a DNS server (or a UDP proxy in front of one) answers.
import { createSocket } from 'node:dgram'

/** A minimal DNS query for `name` IN A with id 0x6c67 and RD set (RFC 1035 §4.1). */
export function encodeQuery (name: string, id = 0x6c67): Buffer {
  const labels = name.split('.').filter((l) => l.length > 0)
  const parts: Buffer[] = [Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])]
  for (const label of labels) parts.push(Buffer.from([label.length]), Buffer.from(label, 'ascii'))
  parts.push(Buffer.from([0, 0, 1, 0, 1]))
  return Buffer.concat(parts)
}

/** True when a reply with the same id and rcode NOERROR arrives within `timeoutMs`. */
export function probeDns (address: string, port: number, name: string, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createSocket(address.includes(':') ? 'udp6' : 'udp4')
    const query = encodeQuery(name)
    const done = (ok: boolean): void => {
      clearTimeout(timer)
      socket.close()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    socket.on('error', () => done(false))
    socket.on('message', (msg) => {
      if (msg.length >= 12 && msg[0] === query[0] && msg[1] === query[1]) done(((msg[3] ?? 0xff) & 0x0f) === 0)
    })
    socket.send(query, port, address)
  })
}
