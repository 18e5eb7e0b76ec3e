// HTTP requests whose path goes on the wire byte for byte: fetch and URL resolve dot segments
// and re-encode, which would hide exactly the spellings the auth tests are about.
import { request } from 'node:http'

/** A request whose path goes on the wire byte for byte (fetch would resolve dot segments). */
export function rawCall (url: string, method: string, path: string, headers: Record<string, string> = {}, body?: string):
Promise<{ status: number, body: any }> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, method, path, headers: body === undefined ? headers : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        let parsed: unknown
        try { parsed = text === '' ? undefined : JSON.parse(text) } catch { parsed = text }
        resolve({ status: res.statusCode ?? 0, body: parsed })
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

