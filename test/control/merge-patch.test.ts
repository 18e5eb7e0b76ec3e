// RFC 7396 Appendix A, every example, plus the copy guarantee the control plane relies on.
import t from 'tap'
import { mergePatch } from '../../src/control/merge-patch.ts'

const examples: Array<[unknown, unknown, unknown]> = [
  [{ a: 'b' }, { a: 'c' }, { a: 'c' }],
  [{ a: 'b' }, { b: 'c' }, { a: 'b', b: 'c' }],
  [{ a: 'b' }, { a: null }, {}],
  [{ a: 'b', b: 'c' }, { a: null }, { b: 'c' }],
  [{ a: ['b'] }, { a: 'c' }, { a: 'c' }],
  [{ a: 'c' }, { a: ['b'] }, { a: ['b'] }],
  [{ a: { b: 'c' } }, { a: { b: 'd', c: null } }, { a: { b: 'd' } }],
  [{ a: [{ b: 'c' }] }, { a: [1] }, { a: [1] }],
  [['a', 'b'], ['c', 'd'], ['c', 'd']],
  [{ a: 'b' }, ['c'], ['c']],
  [{ a: 'foo' }, null, null],
  [{ a: 'foo' }, 'bar', 'bar'],
  [{ e: null }, { a: 1 }, { e: null, a: 1 }],
  [[1, 2], { a: 'b', c: null }, { a: 'b' }],
  [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }]
]

t.test('RFC 7396 Appendix A examples', async (t) => {
  examples.forEach(([target, patch, result], i) => {
    t.same(mergePatch(target, patch), result, `example ${i + 1}: ${JSON.stringify(target)} + ${JSON.stringify(patch)}`)
  })
})

t.test('the target is never modified, even when frozen, and the result shares nothing with it', async (t) => {
  const target = Object.freeze({ hc: Object.freeze({ a: 1, b: 2 }), keep: Object.freeze([1, 2]) })
  const out = mergePatch(target, { hc: { a: 5 } }) as any
  t.same(out, { hc: { a: 5, b: 2 }, keep: [1, 2] })
  t.same(target, { hc: { a: 1, b: 2 }, keep: [1, 2] })
  out.keep.push(3)
  out.hc.c = 1
  t.same(target.keep, [1, 2], 'a deep copy: the validator may fill defaults into it')
})
