// Starts the dummy Rails app in real Puma with anycable-rs embedded, for the JS clients.
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import { BaseLogger } from '@anycable/core'

const here = dirname(fileURLToPath(import.meta.url))
export const DUMMY = join(here, '..', 'dummy')
export const ORIGIN = 'http://allowed.test'

// A port nothing listens on, never one handed out before in this process (the kernel
// can give one ephemeral port to two binds in a row once the first is closed).
const handedOut = new Set()

export async function freePort() {
  for (;;) {
    let port = await new Promise((resolve, reject) => {
      let srv = createServer()
      srv.listen(0, '127.0.0.1', () => {
        let { port } = srv.address()
        srv.close(() => resolve(port))
      })
      srv.on('error', reject)
    })
    if (!handedOut.has(port)) {
      handedOut.add(port)
      return port
    }
  }
}

// `port`: a given one (a node restarted where its clients reconnect).
export async function startPuma(env = {}, { port } = {}) {
  port ||= await freePort()
  let dir = mkdtempSync(join(tmpdir(), 'anycable-rs-js-'))
  let logPath = join(dir, 'rails.log')
  let child = spawn(
    'puma',
    ['-b', `tcp://127.0.0.1:${port}`, '-t', '4:4', '-e', 'test', 'config.ru'],
    {
      cwd: DUMMY,
      env: {
        ...process.env,
        RAILS_ENV: 'test',
        ANYCABLE_EMBEDDED: 'true',
        DUMMY_DATABASE: join(dir, 'test.sqlite3'),
        DUMMY_LOG: logPath,
        ...env
      },
      stdio: ['ignore', 'pipe', 'pipe']
    }
  )
  let output = ''
  child.stdout.on('data', d => (output += d))
  child.stderr.on('data', d => (output += d))
  let deadline = Date.now() + 60000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`puma exited:\n${output}`)
    try {
      let res = await fetch(`http://127.0.0.1:${port}/stats`)
      if (res.ok) break
    } catch {}
    await sleep(100)
  }
  return {
    port,
    url: `ws://127.0.0.1:${port}/cable`,
    http: (path, opts) => fetch(`http://127.0.0.1:${port}${path}`, opts),
    log: () => output,
    railsLog: () => {
      try {
        return readFileSync(logPath, 'utf8')
      } catch {
        return ''
      }
    },
    async stop(signal = 'SIGTERM') {
      child.kill(signal)
      await new Promise(resolve => {
        if (child.exitCode !== null) return resolve()
        let t = setTimeout(() => child.kill('SIGKILL'), 15000)
        child.on('exit', () => {
          clearTimeout(t)
          resolve()
        })
      })
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

// Debian's Chromium, headless (CHROMIUM_PATH to use another).
export async function launchChromium() {
  let { chromium } = await import('playwright-core')
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'
    ]
  })
}

export function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms))
}

// `ws` with the Origin header a browser would send.
export class BrowserLikeWebSocket extends WebSocket {
  constructor(url, protocols, opts = {}) {
    super(url, protocols, { origin: ORIGIN, ...opts })
  }
}

export function waitFor(fn, timeout = 5000) {
  return new Promise((resolve, reject) => {
    let deadline = Date.now() + timeout
    // `fn` may be async: its promise is awaited, not taken for a truthy value.
    let tick = async () => {
      let value
      try {
        value = await fn()
      } catch (e) {
        return reject(e)
      }
      if (value) return resolve(value)
      if (Date.now() > deadline) return reject(new Error(`condition not met in time: ${fn}`))
      setTimeout(tick, 20)
    }
    tick()
  })
}

// @rails/actioncable was written for browsers: give it the few globals it touches,
// and `ws` with a browser's Origin as its WebSocket.
export async function loadRailsActionCable() {
  globalThis.addEventListener ||= () => {}
  globalThis.removeEventListener ||= () => {}
  globalThis.document ||= { visibilityState: 'visible', addEventListener() {}, removeEventListener() {} }
  let actioncable = await import('@rails/actioncable')
  actioncable.adapters.WebSocket = BrowserLikeWebSocket
  return actioncable
}

export async function broadcast(server, stream, payload) {
  let res = await server.http('/broadcast', {
    method: 'POST',
    body: new URLSearchParams({ stream, payload: JSON.stringify(payload) })
  })
  if (res.status !== 201) throw new Error(`broadcast failed: ${res.status}`)
}

// The client's own log (debug), kept for a failure's message.
export class RecordingLogger extends BaseLogger {
  constructor() {
    super('debug')
    this.started = Date.now()
    this.lines = []
  }

  writeLogEntry(level, msg, details) {
    let extra = ''
    try {
      if (details) extra = ` ${JSON.stringify(details, (k, v) => (v instanceof Error ? String(v) : v))}`
    } catch {
      extra = ' (details not serializable)'
    }
    this.lines.push(`${Date.now() - this.started}ms ${level} ${msg}${extra}`)
  }
}
