// JSON Merge Patch (RFC 7396 §2): the PATCH rule of the control API (SPEC §10). Fields not in
// the patch keep their value, `null` removes a field, objects merge recursively, anything else
// (arrays included) replaces. The result is a fresh copy: `target` (often frozen) is untouched,
// and the validator may fill defaults into it.

const isObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v)

export function mergePatch (target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return structuredClone(patch)
  const out: Record<string, unknown> = isObject(target) ? structuredClone(target) : {}
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key]
    else out[key] = mergePatch(out[key], value)
  }
  return out
}
