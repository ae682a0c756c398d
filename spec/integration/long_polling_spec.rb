# frozen_string_literal: true

require "spec_helper"

# Long polling (ANYCABLE_POLL, AnyCable Pro's /lp; issue "Beyond WebSockets") with
# raw HTTP: a session across requests, its polls held and answered, its end, and the
# refusals. The protocol as @anycable/long-polling speaks it: spec/js/long_polling.test.mjs.
RSpec.describe "Long polling (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_POLL" => "true", "ANYCABLE_POLL_INTERVAL" => "2", "ANYCABLE_POLL_FLUSH_INTERVAL" => "100",
                  "ANYCABLE_POLL_KEEPALIVE_TIMEOUT" => "3", "ANYCABLE_PORT" => PumaServer.free_port.to_s})

  ECHO = JSON.generate(channel: "EchoChannel")

  def lp(lines = [], id: nil, name: "alice", origin: "http://allowed.test", port: puma.port, method: :post, body: nil)
    uri = URI("http://127.0.0.1:#{port}/lp")
    req = (method == :post ? Net::HTTP::Post : Net::HTTP::Get).new(uri)
    req["Origin"] = origin if origin
    req["Cookie"] = cookies_for(name) if name
    req["X-Anycable-Poll-ID"] = id if id
    req.body = body || lines.map { |l| JSON.generate(l) }.join("\n") if method == :post
    Net::HTTP.start(uri.host, uri.port, read_timeout: 10) { |h| h.request(req) }
  end

  def messages(res)
    res.body.to_s.split("\n").map { |l| JSON.parse(l) }
  end

  # Broadcast messages from polls of session `id` until `n` came (each poll answers
  # what was gathered for the flush interval: two broadcasts may take two polls).
  def polled(id, n, port: puma.port)
    got = []
    got.concat(messages(lp(id: id, port: port)).map { |m| m["message"] }) while got.size < n
    got
  end

  def open_session(port: puma.port, name: "alice")
    res = lp([{command: "subscribe", identifier: ECHO}], port: port, name: name)
    expect(res.code).to eq("200")
    expect(messages(res).map { |m| m["type"] }).to eq(%w[welcome confirm_subscription])
    res["X-Anycable-Poll-ID"]
  end

  it "keeps a session across requests: commands in, a held poll answered by what comes, 204 when nothing does" do
    [puma.port, Integer(puma.env["ANYCABLE_PORT"])].each do |port|
      id = open_session(port: port)
      expect(id).to match(/\A\h{32,}\z/)
      res = lp([{command: "message", identifier: ECHO, data: JSON.generate(action: "echo", n: 1)}], id: id, port: port)
      expect([res.code, res["X-Anycable-Poll-ID"]]).to eq(["200", id])
      expect(messages(res)).to eq([{"identifier" => ECHO, "message" => {"n" => 1, "action" => "echo"}}])
      poll = Thread.new { polled(id, 2, port: port) }
      sleep 0.3
      broadcast("all", {"b" => 1})
      broadcast("all", {"b" => 2})
      expect(poll.value).to eq([{"b" => 1}, {"b" => 2}])
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      idle = lp(id: id, port: port)
      expect([idle.code, idle.body.to_s]).to eq(["204", ""])
      expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be_between(1.8, 5)
      # What comes between polls waits for the next one.
      broadcast("all", {"b" => 3})
      sleep 0.2
      expect(messages(lp(id: id, port: port)).map { |m| m["message"] }).to eq([{"b" => 3}])
    end
  end

  it "ends a session its client left (the app's disconnect runs); its id is then refused" do
    delete_events = puma.http(:delete, "/events")
    expect(delete_events.code).to eq("204")
    id = open_session(name: "leaver")
    wait_for(timeout: 10) { events.include?(["disconnect", "leaver"]) }
    res = lp(id: id, name: "leaver")
    expect([res.code, messages(res)]).to eq(["401", [{"type" => "disconnect", "reason" => "session_expired", "reconnect" => true}]])
    expect(lp(id: "0" * 40).code).to eq("401")
  end

  it "answers an older poll empty when a newer one comes (the JS transport aborts it to send)" do
    id = open_session
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    old = Thread.new { [lp(id: id), Process.clock_gettime(Process::CLOCK_MONOTONIC) - started] }
    sleep 0.5
    res = lp([{command: "message", identifier: ECHO, data: JSON.generate(action: "echo", n: 2)}], id: id)
    expect(messages(res).map { |m| m["message"] }).to eq([{"n" => 2, "action" => "echo"}])
    old_res, old_after = old.value
    # Answered when the newer one came, well before its poll interval (2 s) was out.
    expect([old_res.code, old_after < 1.5]).to eq(["204", true])
  end

  it "hands a session's next polls over ahead of the app's middleware: one request line in its log, not one a poll" do
    opened = log_lines('Started POST "/lp"').size
    id = open_session(name: "quiet")
    3.times { lp([{command: "message", identifier: ECHO, data: JSON.generate(action: "echo", n: 1)}], id: id, name: "quiet") }
    wait_for { log_lines('Started POST "/lp"').size > opened }
    sleep 0.3
    expect(log_lines('Started POST "/lp"').size).to eq(opened + 1)
  end

  it "refuses what a WebSocket would be refused, and bad requests" do
    unauthorized = lp(name: nil)
    expect([unauthorized.code, messages(unauthorized)]).to eq(["401", [{"type" => "disconnect", "reason" => "unauthorized", "reconnect" => false}]])
    expect(lp(origin: "http://evil.test").code).to eq("403")
    expect(lp(body: "{\"command\":\"subscribe\"}\nnot json").code).to eq("400")
    expect(lp(body: " " * (64 * 1024 + 1)).code).to eq("413")
    expect(lp(method: :get, port: Integer(puma.env["ANYCABLE_PORT"])).code).to eq("405")
  end
end
