// Reassembly of DNS-over-TCP messages (RFC 1035 §4.2.2, RFC 7766), shared by the server's TCP
// sessions and the forwarder's TCP fallback.
/**
 * The received bytes of an incomplete length-prefixed DNS message (RFC 1035 §4.2.2). Chunks are
 * kept as they come and joined once, when the message they start is complete, so a 64 KiB
 * message trickled a byte at a time costs one copy, not one copy of everything so far per chunk.
 */
export class FrameParts {
  #parts: Buffer[] = []
  #length = 0

  /** Adds `chunk`; returns every byte so far once the first message is complete, else undefined. */
  add (chunk: Buffer): Buffer | undefined {
    if (this.#length === 0) {
      if (chunk.length >= 2 && chunk.length >= chunk.readUInt16BE(0) + 2) return chunk
      this.keep(chunk)
      return undefined
    }
    this.#parts.push(chunk)
    this.#length += chunk.length
    if (this.#length < 2) return undefined
    const first = this.#parts[0] as Buffer
    const hi = first[0] as number
    const lo = first.length > 1 ? first[1] as number : (this.#parts[1] as Buffer)[0] as number
    if (this.#length < ((hi << 8) | lo) + 2) return undefined
    const all = this.#parts.length === 1 ? first : Buffer.concat(this.#parts, this.#length)
    this.clear()
    return all
  }

  /** Hold the start of a message whose rest has not arrived. */
  keep (rest: Buffer): void {
    if (rest.length === 0) return
    this.#parts = [rest]
    this.#length = rest.length
  }

  clear (): void {
    this.#parts = []
    this.#length = 0
  }
}
