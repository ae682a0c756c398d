// vitest runs only the Durable Streams conformance cases (ds_conformance.test.mjs
// starts it); the other tests here are node:test's.
export default { test: { include: ['ds_conformance.vitest.mjs'], testTimeout: 30000 } }
