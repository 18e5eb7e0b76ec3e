// How a request path would read once every layer in front of a handler has had its say: percent
// decoding (repeated, so `%2576` is caught too), `\` as `/`, empty segments (`//`) and dot
// segments (`.`, `..`, RFC 3986 §5.2.4) removed, lowercased. Used only to decide whether an
// UNMATCHED path is "under /v1" so that it answers 401 before 404 (SPEC §10): a caller without a
// token learns nothing from the difference. Matched routes are judged by their route template.

const MAX_DECODE_ROUNDS = 4

function decodeOnce (text: string): string {
  // decodeURIComponent refuses a lone `%`; decode the valid escapes and keep the rest as it is.
  return text.replace(/(%[0-9a-fA-F]{2})+/g, (run) => {
    try {
      return decodeURIComponent(run)
    } catch {
      return run.replace(/%([0-9a-fA-F]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)))
    }
  })
}

export function normalizedPath (url: string): string {
  let path = url
  const cut = path.search(/[?#;]/)
  if (cut >= 0) path = path.slice(0, cut)
  for (let i = 0; i < MAX_DECODE_ROUNDS; i++) {
    const next = decodeOnce(path)
    if (next === path) break
    path = next
  }
  const out: string[] = []
  for (const segment of path.replace(/\\/g, '/').split('/')) {
    const s = segment.trim()
    if (s === '' || s === '.') continue
    if (s === '..') { out.pop(); continue }
    out.push(s)
  }
  return '/' + out.join('/').toLowerCase()
}

/** True for `/v1` and everything below it, however spelled. */
export function isUnderV1 (url: string): boolean {
  const path = normalizedPath(url)
  return path === '/v1' || path.startsWith('/v1/')
}
