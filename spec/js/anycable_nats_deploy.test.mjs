// The deploy scenario with the NATS broker (ANYCABLE_BROKER=nats, JetStream): two
// nodes (real Puma) on one real nats-server with JetStream, an @anycable/web client on
// node 1, broadcasts flowing in through node 2 and from a third process (plain Ruby, as
// a job), and node 1 restarted mid-stream — stopped as a deploy does (SIGTERM), or
// killed (SIGKILL). The client reconnects to node 1's new process and, de-duplicating
// by offset as @anycable/web's users must, ends with every message exactly once and in
// order.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createCable } from '@anycable/web'
import { backoffWithJitter } from '@anycable/core'
import { startPuma, freePort, BrowserLikeWebSocket, RecordingLogger, waitFor, broadcast, sleep } from './support.mjs'

const LIB = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'lib')

let nats
let natsDir
let dbDir
let env
let two

async function startNats() {
  let port = await freePort()
  natsDir = mkdtempSync(join(tmpdir(), 'anycable-rs-js-jetstream-'))
  let child = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', natsDir], {
    stdio: 'ignore'
  })
  await sleep(300)
  return { child, url: `nats://127.0.0.1:${port}` }
}

async function node(opts) {
  let server = await startPuma(env, opts)
  await waitFor(() => server.log().includes('NATS broker: JetStream stream'), 20000)
  await server.http('/login?name=alice')
  return server
}

before(async () => {
  nats = await startNats()
  // One database for every node, as in a deploy: a node started again knows alice
  // before its first request (with a database of its own, a client that reconnected
  // before the test signed alice in there was refused, unauthorized, for good).
  dbDir = mkdtempSync(join(tmpdir(), 'anycable-rs-js-deploy-db-'))
  env = {
    DUMMY_DATABASE: join(dbDir, 'shared.sqlite3'),
    ANYCABLE_BROKER: 'nats',
    ANYCABLE_BROADCAST_ADAPTER: 'nats',
    ANYCABLE_NATS_SERVERS: nats.url,
    ANYCABLE_PONG_TIMEOUT: '2'
  }
  two = await node()
})

after(async () => {
  await two?.stop()
  if (nats && nats.child.exitCode === null) {
    let exited = new Promise(resolve => nats.child.once('exit', resolve))
    nats.child.kill('SIGTERM')
    await exited
  }
  if (natsDir) rmSync(natsDir, { recursive: true, force: true })
  if (dbDir) rmSync(dbDir, { recursive: true, force: true })
})

// A job: broadcasts `ns` from a process that serves no sockets, one every `gap` ms.
function job(ns, gap) {
  let script =
    'require "anycable_rs"; ' +
    `${JSON.stringify(ns)}.each { |n| AnyCableRs.broadcast("all", {"n" => n}); sleep ${gap / 1000} }`
  let child = spawn('ruby', ['-I', LIB, '-e', script], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'inherit', 'inherit']
  })
  return new Promise((resolve, reject) =>
    child.on('exit', code => (code === 0 ? resolve() : reject(new Error(`job exited ${code}`))))
  )
}

async function deployScenario(signal) {
  let one = await node()
  let logger = new RecordingLogger()
  let c = createCable(`${one.url}?user=alice`, {
    websocketImplementation: BrowserLikeWebSocket,
    protocol: 'actioncable-v1-ext-json',
    protocolOptions: { pongs: true },
    // The default backs off from the ping interval (3 s) without a cap: a restart slow
    // on a loaded machine would leave the next attempt past the test's wait.
    reconnectStrategy: backoffWithJitter(500, { maxInterval: 2000 }), // ms
    logger
  })
  try {
    let connects = []
    let infos = []
    c.on('connect', ev => connects.push(ev))
    c.on('disconnect', ev => logger.info('event: disconnect', { reason: ev?.reason }))
    c.on('close', ev => logger.info('event: close', { reason: ev?.reason }))
    let channel = c.subscribeTo('EchoChannel')
    let firsts = [] // {n, offset}, the first copy of each offset, in arrival order
    let seen = new Set()
    let copies = 0
    channel.on('message', (msg, meta) => {
      copies++
      if (seen.has(meta.offset)) return
      seen.add(meta.offset)
      firsts.push({ n: msg.n, offset: meta.offset })
    })
    channel.on('info', ev => infos.push(ev.type))
    await channel.ensureSubscribed()

    let fromNodeTwo = Array.from({ length: 40 }, (_, i) => i + 1)
    let fromJob = [101, 102, 103, 104, 105, 106]
    let flow = (async () => {
      for (let n of fromNodeTwo) {
        await broadcast(two, 'all', { n })
        await sleep(100)
      }
    })()
    let jobDone = job(fromJob, 400)
    await waitFor(() => firsts.length >= 8, 10000)
    await sleep(1200) // the session is in the NATS broker's bucket (written each second)

    // Node 1 goes away mid-stream and comes back on its port (a deploy's restart).
    let port = one.port
    logger.info(`test: ${signal} to node 1`)
    await one.stop(signal)
    let oldLog = one.log()
    logger.info('test: node 1 stopped; starting again')
    one = await node({ port })
    logger.info('test: node 1 is up again')

    await Promise.all([flow, jobDone])
    let expected = fromNodeTwo.length + fromJob.length
    try {
      await waitFor(() => firsts.length >= expected, 45000)
    } catch (e) {
      let got = new Set(firsts.map(m => m.n))
      let missing = [...fromNodeTwo, ...fromJob].filter(n => !got.has(n))
      throw new Error(
        `${e.message}; missing ${JSON.stringify(missing)}; infos ${JSON.stringify(infos)}; ` +
          `connects ${JSON.stringify(connects)}; cable ${c.state}\n` +
          `--- client log ---\n${logger.lines.slice(-80).join('\n')}\n` +
          `--- node 1 before ---\n${oldLog.slice(-3000)}\n--- node 1 after ---\n${one.log().slice(-3000)}\n` +
          `--- node 1 after, requests to /cable ---\n` +
          one.railsLog().split('\n').filter(l => l.includes('/cable')).slice(-20).join('\n')
      )
    }
    await sleep(300)

    assert.equal(firsts.length, expected, `got ${JSON.stringify(firsts)}`)
    let offsets = firsts.map(m => m.offset)
    assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), 'in offset order')
    let ns = firsts.map(m => m.n)
    assert.deepEqual(ns.filter(n => n < 100), fromNodeTwo, 'node 2 broadcasts, each once, in order')
    assert.deepEqual(ns.filter(n => n > 100), fromJob, 'job broadcasts, each once, in order')
    assert.equal(new Set(firsts.map(m => m.offset)).size, expected)
    return { copies, expected, connects }
  } finally {
    c.disconnect()
    await one.stop()
  }
}

test('node 1 stopped as a deploy stops it (SIGTERM) and started again: the session restored, nothing lost, nothing twice', async () => {
  let { copies, expected, connects } = await deployScenario('SIGTERM')
  // Closed 1001 without a `server_restart` message (on which the client would drop its
  // sid), the client asks to restore, and gets it from the session the stopping node
  // stored: no connect, no subscribed; the history it asks for and the live stream
  // overlap in nothing.
  assert.ok(
    connects.some(ev => ev.restored),
    `connects: ${JSON.stringify(connects)}`
  )
  assert.equal(copies, expected)
})

test('node 1 killed (SIGKILL) and started again: the session restored from NATS, nothing lost', async () => {
  let { connects } = await deployScenario('SIGKILL')
  // No disconnect message came: the client kept its sid, and the new process found the
  // session the dead one had stored.
  assert.ok(
    connects.some(ev => ev.restored),
    `connects: ${JSON.stringify(connects)}`
  )
})
