'use strict'

// Fastify's own repositories lint with neostandard: standard style, TypeScript included.
module.exports = [
  ...require('neostandard')({
    ts: true,
    ignores: ['dist/**', 'coverage/**', '.tap/**']
  }),
  {
    rules: {
      // `void promise` marks a promise deliberately not awaited (its errors are
      // handled where it is made), as typescript-eslint's no-floating-promises asks.
      'no-void': ['error', { allowAsStatement: true }],
      // A `let` assigned once after a closure that reads it was made (a child
      // process, a store under test) cannot be a const.
      'prefer-const': ['error', { destructuring: 'all', ignoreReadBeforeAssign: true }]
    }
  }
]
