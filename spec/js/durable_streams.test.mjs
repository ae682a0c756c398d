// Durable Streams reads (ANYCABLE_DS, AnyCable's /ds) with the official
// @durable-streams/client: a signed stream read from its start, followed live (long-poll
// and SSE), on Puma's port and the own port, as alice (the app's connect reads her
// cookie); then, with the NATS broker, a reader that saved its offset reads on from it
// after the server restarted, with what a job broadcast meanwhile.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHmac } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stream } from '@durable-streams/client'
import { startPuma, freePort, waitFor, broadcast, sleep, ORIGIN } from './support.mjs'

const LIB = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'lib')
const SECRET = 'streams-s3cret'

// A signed stream name, as the app's `signed_stream_name` helper makes it (Rails'
// MessageVerifier, SHA256, JSON).
function signed(name) {
  let data = Buffer.from(JSON.stringify(name)).toString('base64')
  return `${data}--${createHmac('sha256', SECRET).update(data).digest('hex')}`
}

let server
let ownPort
let cookie

async function login(s) {
  let res = await s.http('/login?name=alice')
  return res.headers.getSetCookie().map(c => c.split(';')[0]).join('; ')
}

before(async () => {
  ownPort = await freePort()
  server = await startPuma({
    ANYCABLE_DS: 'true',
    ANYCABLE_PORT: String(ownPort),
    ANYCABLE_BROKER: 'memory',
    ANYCABLE_STREAMS_SECRET: SECRET,
    ANYCABLE_DS_SSE_TTL: '2',
    ANYCABLE_METRICS_HTTP: '/metrics'
  })
  cookie = await login(server)
})

after(async () => {
  await server?.stop()
})

function read(port, name, opts) {
  return stream({
    url: `http://127.0.0.1:${port}/ds/${encodeURIComponent(name)}`,
    params: { signed: signed(name) },
    headers: { Cookie: cookie, Origin: ORIGIN },
    ...opts
  })
}

// Follows `name` from `offset` until `count` items came; returns them and the offset.
async function follow(port, name, offset, live, count, during) {
  let res = await read(port, name, { offset, live })
  let items = []
  let last
  res.subscribeJson(batch => {
    items.push(...batch.items)
    last = batch.offset
  })
  try {
    await during()
    await waitFor(() => items.length >= count, 10000)
    await sleep(200) // nothing more, nothing twice
    return { items, offset: last }
  } finally {
    res.cancel()
  }
}

for (let [where, port] of [["Puma's port", () => server.port], ['the own port', () => ownPort]]) {
  test(`the client reads a stream, then follows it by long-poll and SSE, on ${where}`, async () => {
    let name = `chat/${port()}`
    for (let n of [1, 2, 3]) await broadcast(server, name, { n })
    let res = await read(port(), name, { offset: '-1', live: false })
    assert.deepEqual(await res.json(), [{ n: 1 }, { n: 2 }, { n: 3 }])
    let saved = res.offset
    assert.match(saved, /::/)

    let polled = await follow(port(), name, saved, 'long-poll', 2, async () => {
      await sleep(300)
      for (let n of [4, 5]) await broadcast(server, name, { n })
    })
    assert.deepEqual(polled.items, [{ n: 4 }, { n: 5 }])

    // SSE from the long-poll's place: only what came after it, across the end of one
    // SSE read (ANYCABLE_DS_SSE_TTL, 2 s) and the client's next.
    let followed = await follow(port(), name, polled.offset, 'sse', 3, async () => {
      await broadcast(server, name, { n: 6 })
      await sleep(2500)
      for (let n of [7, 8]) await broadcast(server, name, { n })
    })
    assert.deepEqual(followed.items, [{ n: 6 }, { n: 7 }, { n: 8 }])
    // Over SSE indeed (the client falls back to long-polls when SSE reads keep failing).
    let metrics = await (await fetch(`http://127.0.0.1:${ownPort}/metrics`)).text()
    assert.match(metrics, /^anycable_go_ds_sse_requests_total [1-9]/m)
  })
}

test('a read refused by the app or the signature is an error the client reports', async () => {
  await assert.rejects(
    stream({
      url: `http://127.0.0.1:${server.port}/ds/secret`,
      params: { signed: signed('another') },
      headers: { Cookie: cookie, Origin: ORIGIN },
      live: false
    }).then(res => res.json()),
    err => err.status === 401 || /401|nauthorized/.test(String(err))
  )
})

test('with the NATS broker, a saved offset reads on after the server restarts', async () => {
  let natsPort = await freePort()
  let natsDir = mkdtempSync(join(tmpdir(), 'anycable-rs-js-ds-jetstream-'))
  let dbDir = mkdtempSync(join(tmpdir(), 'anycable-rs-js-ds-db-'))
  let nats = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', natsDir], {
    stdio: 'ignore'
  })
  let env = {
    DUMMY_DATABASE: join(dbDir, 'shared.sqlite3'),
    ANYCABLE_DS: 'true',
    ANYCABLE_BROKER: 'nats',
    ANYCABLE_BROADCAST_ADAPTER: 'nats',
    ANYCABLE_NATS_SERVERS: `nats://127.0.0.1:${natsPort}`,
    ANYCABLE_STREAMS_SECRET: SECRET
  }
  let node
  let ready = async port => {
    let s = await startPuma(env, { port })
    await waitFor(() => s.log().includes('NATS broker: JetStream stream'), 20000)
    return s
  }
  try {
    await sleep(300)
    node = await ready()
    let port = node.port
    cookie = await login(node)
    let name = 'llm/answer-42'
    for (let n of [1, 2]) await broadcast(node, name, { token: `t${n}` })
    let res = await read(port, name, { offset: '-1', live: false })
    assert.deepEqual(await res.json(), [{ token: 't1' }, { token: 't2' }])
    let saved = res.offset

    await node.stop()
    // A job broadcasts while no server runs (as a worker process does).
    let script = `require "anycable_rs"; %w[t3 t4].each { |t| AnyCableRs.broadcast(${JSON.stringify(name)}, {"token" => t}) }`
    let job = spawn('ruby', ['-I', LIB, '-e', script], { env: { ...process.env, ...env }, stdio: 'inherit' })
    assert.equal(await new Promise(resolve => job.on('exit', resolve)), 0)
    node = await ready(port)

    let resumed = await follow(port, name, saved, 'long-poll', 3, async () => {
      await broadcast(node, name, { token: 't5' })
    })
    assert.deepEqual(resumed.items, [{ token: 't3' }, { token: 't4' }, { token: 't5' }])
  } finally {
    await node?.stop()
    nats.kill('SIGTERM')
    await new Promise(resolve => (nats.exitCode !== null ? resolve() : nats.once('exit', resolve)))
    rmSync(natsDir, { recursive: true, force: true })
    rmSync(dbDir, { recursive: true, force: true })
  }
})
