// A long-polling transport for @anycable/core's cable, written to the protocol of
// AnyCable's @anycable/long-polling (which the npm registry here does not serve): every
// request a POST; the first one without a session id, the response naming it in
// X-Anycable-Poll-ID; then a poll every `cooldownPeriod` after the last answer, with
// what was sent meanwhile (gathered for `sendBuffer`, joined by newlines) as its body
// — sending aborts the poll held open and posts at once. Answers are JSON lines; a 401
// is read (its disconnect message) and closes the transport, as does any other status
// that is not 2xx. The server sends no pings over long polling: the transport makes
// its own every `pingInterval`. Node's fetch keeps no cookies: `headers` go on every
// request (a browser would send its cookies and Origin itself).
import { createNanoEvents } from 'nanoevents'

export class LongPollingClient {
  constructor(url, opts = {}) {
    this.url = url
    this.opts = { cooldownPeriod: 500, sendBuffer: 500, pingInterval: 3000, headers: {}, ...opts }
    this.emitter = createNanoEvents()
    this.connected = false
    this.buffer = []
    this.sessionID = undefined
    // What the test can look at: each request's session header and status.
    this.requests = []
  }

  displayName() {
    return `LongPolling(${this.url})`
  }

  async open() {
    let response
    try {
      response = await this.request(undefined, undefined)
    } catch (error) {
      this.emitter.emit('close', error)
      throw error
    }
    if (!response.ok) {
      if (response.status === 401) await this.deliver(response)
      let error = new Error(`Unexpected status code: ${response.status}`)
      this.emitter.emit('close', error)
      throw error
    }
    this.connected = true
    this.emitter.emit('open')
    await this.deliver(response)
    this.sessionID = response.headers.get('x-anycable-poll-id')
    this.schedulePoll()
    this.pingTimer = setInterval(() => {
      this.emitter.emit('data', JSON.stringify({ type: 'ping', source: 'long polling transport emulation' }))
    }, this.opts.pingInterval)
  }

  send(data) {
    if (!this.connected) throw new Error('No connection')
    this.buffer.push(data)
    if (!this.sendTimer) this.sendTimer = setTimeout(() => this.flush(), this.opts.sendBuffer)
  }

  flush() {
    this.sendTimer = undefined
    if (!this.connected) return
    clearTimeout(this.pollTimer)
    this.inflight?.abort()
    this.poll()
  }

  schedulePoll() {
    clearTimeout(this.pollTimer)
    this.pollTimer = setTimeout(() => this.poll(), this.opts.cooldownPeriod)
  }

  async poll() {
    clearTimeout(this.sendTimer)
    this.sendTimer = undefined
    let body = this.buffer.length > 0 ? this.buffer.join('\n') : undefined
    this.buffer = []
    let controller = new AbortController()
    this.inflight = controller
    let response
    try {
      response = await this.request(body, controller.signal)
    } catch (error) {
      if (error.name === 'AbortError') return
      return this.onclose()
    }
    if (response.ok) {
      await this.deliver(response)
      if (this.connected && this.inflight === controller) this.schedulePoll()
    } else {
      if (response.status === 401) await this.deliver(response)
      this.onclose()
    }
  }

  async request(body, signal) {
    let headers = { ...this.opts.headers }
    if (this.sessionID !== undefined) headers['X-Anycable-Poll-ID'] = this.sessionID
    let response = await fetch(this.url, { method: 'POST', body, headers, signal })
    this.requests.push({ id: headers['X-Anycable-Poll-ID'], status: response.status, body })
    return response
  }

  async deliver(response) {
    let text = await response.text()
    for (let line of text.split('\n')) {
      if (line !== '') this.emitter.emit('data', line)
    }
  }

  onclose() {
    if (!this.connected) return
    clearTimeout(this.pollTimer)
    clearTimeout(this.sendTimer)
    clearInterval(this.pingTimer)
    this.inflight?.abort()
    this.sessionID = undefined
    this.connected = false
    this.emitter.emit('close')
  }

  async close() {
    this.onclose()
  }

  setURL(url) {
    this.url = url
  }

  setParam(key, value) {
    let url = new URL(this.url)
    url.searchParams.set(key, value)
    this.url = `${url.protocol}//${url.host}${url.pathname}?${url.searchParams}`
  }

  setToken(value, param = 'jid') {
    this.setParam(param, value)
  }

  on(event, callback) {
    return this.emitter.on(event, callback)
  }

  once(event, callback) {
    let unbind = this.emitter.on(event, (...args) => {
      unbind()
      callback(...args)
    })
    return unbind
  }
}
