// A rolling deploy on the cluster test bed (issue #22): three machines (network
// namespaces), each with Puma, the embedded server and its own embedded nats-server
// clustered with the others', the NATS broker. One @anycable/web client (extended
// protocol) per machine, behind a "load balancer" (the WebSocket constructor) that
// sends a connection to the client's own machine, or to the next one up while its own
// is being deployed. Broadcasts come every 100 ms through whichever machine is up
// while each machine in turn is stopped as a deploy stops it (SIGTERM), started again
// on the same address, and given a few seconds. Every client ends with every
// broadcast once, in order, and restored its session at least once (no connect, no
// subscribed) instead of starting over.
//
// Runs only inside the bed (not `npm test`: its name is no *.test.mjs):
//   spec/cluster/bed run 3 -- node --test spec/js/rolling_deploy.cluster.mjs
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createCable } from '@anycable/web'
import { backoffWithJitter } from '@anycable/core'
import { BrowserLikeWebSocket, RecordingLogger, waitFor, sleep } from './support.mjs'

const BED = join(dirname(fileURLToPath(import.meta.url)), '..', 'cluster', 'bed')
const NODES = [1, 2, 3]
const address = i => `10.254.0.${10 + i}`
const base = i => `http://${address(i)}:3000`

// The bed's command line (start, stop, log …), without blocking the event loop: the
// clients keep reading and reconnecting meanwhile.
function bed(...args) {
  return new Promise((resolve, reject) => {
    let child = spawn(BED, args.map(String), { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', d => (out += d))
    child.stderr.on('data', d => (out += d))
    child.on('exit', code =>
      code === 0 ? resolve(out) : reject(new Error(`bed ${args.join(' ')} exited ${code}: ${out.slice(-3000)}`))
    )
  })
}

// Machines being deployed: the load balancer sends no new connection there.
const down = new Set()
function upFrom(home) {
  for (let k = 0; k < NODES.length; k++) {
    let i = ((home - 1 + k) % NODES.length) + 1
    if (!down.has(i)) return i
  }
  return home
}

// An @anycable/web client whose home is machine `home`.
function clientOf(home) {
  let sockets = [] // {node, sid}: where each socket went, whether it asked to restore
  class Balanced extends BrowserLikeWebSocket {
    constructor(url, protocols, opts) {
      let u = new URL(url)
      let node = upFrom(home)
      u.host = `${address(node)}:3000`
      sockets.push({ node, sid: !!u.searchParams.get('sid') })
      super(u.toString(), protocols, opts)
    }
  }
  let logger = new RecordingLogger()
  let cable = createCable(`ws://${address(home)}:3000/cable?user=alice`, {
    websocketImplementation: Balanced,
    protocol: 'actioncable-v1-ext-json',
    protocolOptions: { pongs: true },
    reconnectStrategy: backoffWithJitter(300, { maxInterval: 1000 }), // ms
    logger
  })
  let me = { home, cable, logger, sockets, connects: [], infos: [], ns: [], probes: new Set() }
  cable.on('connect', ev => me.connects.push({ restored: !!ev?.restored, at: Date.now() - logger.started }))
  me.channel = cable.subscribeTo('EchoChannel')
  me.channel.on('message', msg => {
    if (msg.probe) me.probes.add(msg.probe)
    else me.ns.push(msg.n)
  })
  me.channel.on('info', ev => me.infos.push(ev.type))
  return me
}

// A broadcast through machine i (201 or an error).
async function post(i, payload) {
  let res = await fetch(`${base(i)}/broadcast`, {
    method: 'POST',
    body: new URLSearchParams({ stream: 'all', payload: JSON.stringify(payload) }),
    signal: AbortSignal.timeout(15000)
  })
  if (res.status !== 201) throw new Error(`broadcast through ${i}: ${res.status}`)
}

before(async () => {
  if (!process.env.ANYCABLE_BED) throw new Error('run this through spec/cluster/bed run 3 -- node --test …')
  await bed('start', 1) // alone first: it creates the shared database's schema
  await Promise.all([bed('start', 2), bed('start', 3)])
  // Serving starts before JetStream answers (a cluster's first machine waits for the
  // others): until then a history request is refused, as it should be.
  for (let i of NODES) {
    await waitFor(async () => (await bed('log', i)).includes('NATS broker: JetStream stream'), 60000)
  }
  let res = await fetch(`${base(1)}/login?name=alice`)
  assert.equal(res.status, 200)
})

after(async () => {
  await Promise.all(NODES.map(i => bed('stop', i).catch(() => {})))
})

test('a rolling deploy of all three machines: every client gets every broadcast once, in order, restoring its session', async () => {
  let clients = NODES.map(clientOf)
  try {
    await Promise.all(clients.map(c => c.channel.ensureSubscribed()))
    // Every machine's share of the cluster's broadcasts is up: a probe through each
    // reaches every client.
    for (let i of NODES) {
      await waitFor(async () => {
        let probe = `${i}-${Date.now()}`
        await post(i, { probe })
        await sleep(300)
        return clients.every(c => c.probes.has(probe))
      }, 30000)
    }

    let sent = 0
    let flowing = true
    let failedPosts = []
    let turn = 0
    let flow = (async () => {
      while (flowing) {
        let n = ++sent
        // A machine that refuses the connection (stopping) stored nothing: the next
        // one up takes the broadcast.
        for (let attempt = 0; ; attempt++) {
          let i = upFrom((turn++ % NODES.length) + 1)
          try {
            await post(i, { n })
            break
          } catch (e) {
            failedPosts.push(`${n} via ${i}: ${e.cause?.code || e.message}`)
            if (attempt > 20) throw e
            await sleep(100)
          }
        }
        await sleep(100)
      }
    })()

    await sleep(2000)
    for (let i of NODES) {
      down.add(i)
      await bed('stop', i)
      await bed('start', i)
      down.delete(i)
      await sleep(3000)
    }
    flowing = false
    await flow

    let expected = Array.from({ length: sent }, (_, k) => k + 1)
    try {
      await waitFor(() => clients.every(c => new Set(c.ns).size >= sent), 45000)
    } catch (e) {
      let report = clients
        .map(c => {
          let got = new Set(c.ns)
          let missing = expected.filter(n => !got.has(n))
          return (
            `client ${c.home}: ${c.ns.length} messages, missing ${JSON.stringify(missing.slice(0, 40))}, ` +
            `sockets ${JSON.stringify(c.sockets)}, connects ${JSON.stringify(c.connects)}, infos ` +
            `${JSON.stringify(c.infos)}, cable ${c.cable.state}\n${c.logger.lines.slice(-40).join('\n')}`
          )
        })
        .join('\n')
      throw new Error(`${e.message}\n${report}\nfailed posts: ${JSON.stringify(failedPosts)}`)
    }
    await sleep(500)

    for (let c of clients) {
      let why = `client ${c.home}: sockets ${JSON.stringify(c.sockets)}, connects ${JSON.stringify(c.connects)}`
      assert.deepEqual(c.ns, expected, `client ${c.home}: every broadcast once, in order (${why})`)
      assert.deepEqual(c.infos.filter(t => t === 'history_not_found'), [], why)
      // Its machine was deployed at least once while it was connected to it: each
      // time its socket closed, it asked to restore and got its session back.
      assert.ok(c.sockets.length >= 2, `reconnected: ${why}`)
      assert.ok(c.connects.some(ev => ev.restored), `restored: ${why}`)
      assert.ok(c.sockets.slice(1).every(s => s.sid), `every reconnect asked to restore: ${why}`)
    }
    console.log(
      `# ${sent} broadcasts; per client: ` +
        clients
          .map(c => `${c.home}: ${c.sockets.map(s => s.node).join('>')} restored ${c.connects.filter(x => x.restored).length}/${c.connects.length - 1}`)
          .join(', ') +
        `; broadcasts re-sent after a refused connection: ${failedPosts.length}`
    )
  } finally {
    for (let c of clients) c.cable.disconnect()
  }
})
