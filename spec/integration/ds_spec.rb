# frozen_string_literal: true

require "spec_helper"
require "active_support"
require "active_support/message_verifier"
require "erb"
require_relative "../support/sse_client"

# Durable Streams reads (issue "Beyond WebSockets", step 3): GET/HEAD /ds/<stream> on
# Puma's port and the own port, from the memory broker's history: catch-up, long-poll
# and SSE, authorized by the stream's signed name and the app's connect (cookies).
# Plain HTTP here; @durable-streams/client and the conformance tests in spec/js.
RSpec.describe "Durable Streams reads (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_DS" => "true", "ANYCABLE_PORT" => PumaServer.free_port.to_s,
                  "ANYCABLE_BROKER" => "memory", "ANYCABLE_STREAMS_SECRET" => "streams-s3cret",
                  "ANYCABLE_DS_POLL_INTERVAL" => "2", "ANYCABLE_DS_SSE_TTL" => "3",
                  "ANYCABLE_MAX_PENDING_BYTES" => "16384", "ANYCABLE_METRICS_HTTP" => "/metrics"})

  # One read of `name` (signed for it unless `signed:` says otherwise), as alice.
  def read(name, port: puma.port, who: "alice", method: :get, headers: {}, signed: signed(name), **params)
    params[:signed] = signed if signed
    uri = URI("http://127.0.0.1:#{port}/ds/#{ERB::Util.url_encode(name)}?#{URI.encode_www_form(params)}")
    request = (method == :head ? Net::HTTP::Head : Net::HTTP::Get).new(uri)
    request["Origin"] = "http://allowed.test"
    request["Cookie"] = cookies_for(who) if who
    headers.each { |k, v| request[k] = v }
    Net::HTTP.start(uri.host, uri.port, read_timeout: 15) { |http| http.request(request) }
  end

  def sse(name, offset, port: puma.port)
    query = URI.encode_www_form(offset: offset, live: "sse", signed: signed(name))
    c = SseClient.new(port, "/ds/#{ERB::Util.url_encode(name)}?#{query}",
      headers: {"Origin" => "http://allowed.test", "Cookie" => cookies_for("alice")})
    (@sse_clients ||= []) << c
    c
  end

  after { (@sse_clients || []).each(&:close) }

  it "reads a stream's history from an offset on both ports, then from where it left off" do
    [puma.port, own_port].each do |port|
      stream = "ds/chat #{port}"
      3.times { |i| broadcast(stream, {"n" => i}) }
      all = read(stream, port: port, offset: "-1")
      expect(all.code).to eq("200")
      expect(all["content-type"]).to eq("application/json")
      expect(JSON.parse(all.body)).to eq([{"n" => 0}, {"n" => 1}, {"n" => 2}])
      expect(all["stream-up-to-date"]).to eq("true")
      expect(all["stream-cursor"]).to match(/\A\d+\z/)
      expect(all["access-control-expose-headers"]).to include("Stream-Next-Offset")
      # Only the signed name and the app's connect let this read in: not a shared cache's.
      expect(all["cache-control"]).to start_with("private")
      tail = all["stream-next-offset"]
      expect(tail).to match(/\A0{19}3::\S+\z/)
      expect(read(stream, port: port).body).to eq(all.body) # no offset: from the start
      cached = read(stream, port: port, offset: "-1", headers: {"If-None-Match" => all["etag"]})
      expect([cached.code, cached["content-type"], cached["etag"]]).to eq(["304", nil, all["etag"]])

      now = read(stream, port: port, offset: "now")
      expect([now.body, now["stream-next-offset"], now["cache-control"]]).to eq(["[]", tail, "no-store"])
      broadcast(stream, {"n" => 3})
      more = read(stream, port: port, offset: tail)
      expect(JSON.parse(more.body)).to eq([{"n" => 3}])
      expect(more["stream-next-offset"]).to be > tail # offsets sort as text
      expect(read(stream, port: port, offset: more["stream-next-offset"]).body).to eq("[]")
      head = read(stream, port: port, method: :head)
      expect([head.code, head["stream-next-offset"], head.body]).to eq(["200", more["stream-next-offset"], nil])
    end
  end

  it "holds a long-poll until a message comes, and answers 204 with the reader's place when none does" do
    stream = "ds_poll"
    broadcast(stream, {"n" => 0})
    tail = read(stream, offset: "-1")["stream-next-offset"]
    waiting = Thread.new { read(stream, offset: tail, live: "long-poll") }
    sleep 0.5
    broadcast(stream, {"n" => 1})
    broadcast(stream, {"n" => 2})
    got = waiting.value
    expect(got.code).to eq("200")
    messages = JSON.parse(got.body)
    next_offset = got["stream-next-offset"]
    # Both, if the second came before the answer was written; else the second is next.
    if messages.size == 1
      second = read(stream, offset: next_offset, live: "long-poll")
      messages += JSON.parse(second.body)
      next_offset = second["stream-next-offset"]
    end
    expect(messages).to eq([{"n" => 1}, {"n" => 2}])
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    idle = read(stream, offset: next_offset, live: "long-poll", cursor: got["stream-cursor"])
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be_between(1.8, 4)
    expect([idle.code, idle["stream-next-offset"], idle["stream-up-to-date"]]).to eq(["204", next_offset, "true"])
    expect(idle["stream-cursor"].to_i).to be > got["stream-cursor"].to_i
  end

  it "follows a stream as SSE: what it missed, then each message, each followed by its place" do
    stream = "ds_sse"
    broadcast(stream, {"n" => 0})
    [puma.port, own_port].each do |port|
      c = sse(stream, "-1", port: port)
      expect([c.status, c.headers["content-type"]]).to eq([200, "text/event-stream"])
      data = c.next_event
      expect([data.event, data.json]).to eq(["data", [{"n" => 0}]])
      control = c.next_event
      expect(control.event).to eq("control")
      expect(control.json).to include("upToDate" => true)
      expect(control.json["streamNextOffset"]).to match(/::/)
    end
    late = sse(stream, "now")
    first = late.next_event
    expect([first.event, first.json["upToDate"]]).to eq(["control", true]) # even with nothing to catch up on
    broadcast(stream, {"n" => 1})
    events = Array.new(2) { late.next_event }
    expect(events.map(&:event)).to eq(%w[data control])
    expect(events[0].json).to eq([{"n" => 1}])
    # Each reader's own place: the read from -1 ended on the same message.
    expect(@sse_clients.first.next_event.json).to eq([{"n" => 1}])
    # The read lasts ANYCABLE_DS_SSE_TTL (3 s), then ends cleanly; the reader comes back
    # from its last offset.
    expect(late.next_event(timeout: 6)).to eq(:closed)
  end

  it "keeps a reader that takes what it is sent, however much passes (MAX_PENDING_BYTES bounds only what waits)" do
    stream = "ds_much"
    reader = sse(stream, "now")
    expect(reader.next_event.event).to eq("control")
    text = "x" * 1000
    # 40 KB through a read whose session may hold 16 KB waiting: each is taken as it comes.
    40.times { |n| broadcast(stream, {"n" => n, "text" => text}) }
    got = []
    while got.size < 40
      event = reader.next_event
      expect(event).not_to eq(:closed), "the read ended after #{got.size} messages"
      got.concat(event.json.map { |m| m["n"] }) if event.event == "data"
    end
    expect(got).to eq((0...40).to_a)
  end

  it "refuses what it must, and says why" do
    broadcast("ds_secret", {"n" => 1})
    # The app's connect runs first: no cookie, no read.
    expect(read("ds_secret", who: nil, offset: "-1").code).to eq("401")
    # A token of another key, or no token with public streams off.
    forged = read("ds_secret", signed: signed("ds_secret", "another-secret"), offset: "-1")
    expect([forged.code, forged.body]).to eq(["401", "the signed stream name did not verify"])
    expect(read("ds_secret", signed: nil, offset: "-1").code).to eq("401")
    refused_head = read("ds_secret", signed: nil, method: :head)
    expect([refused_head.code, refused_head.body]).to eq(["401", nil])
    # A token for one stream does not read another's history (AnyCable's reads the path's).
    other = read("ds_secret", signed: signed("ds_mine"), offset: "-1")
    expect([other.code, other.body]).to eq(["401", "the signed name is another stream's"])
    # Bad offsets, parameters and places.
    expect(read("ds_secret", offset: "").code).to eq("400")
    expect(read("ds_secret", offset: "5").code).to eq("400")
    expect(read("ds_secret", live: "sse").code).to eq("400")
    expect(read("ds_secret", offset: "-1", live: "forever").code).to eq("400")
    expect(read("ds_secret", offset: "1::another-epoch").code).to eq("410")
    # Another site's page: refused before the app's connect.
    evil = read("ds_secret", offset: "-1", headers: {"Origin" => "http://evil.test"})
    expect([evil.code, evil["access-control-allow-origin"]]).to eq(["403", nil])
    uri = URI("http://127.0.0.1:#{own_port}/ds/ds_secret")
    expect(Net::HTTP.start(uri.host, uri.port) { |h| h.request(Net::HTTP::Put.new(uri)) }.code).to eq("405")
    body = Net::HTTP.get(URI("http://127.0.0.1:#{own_port}/metrics"))
    expect(body).to match(/^anycable_go_ds_requests_total \d+/)
    # A signed name reads its stream: the request log shows it filtered.
    wait_for { puma.rails_log.include?("signed=[FILTERED]") }
    expect(puma.rails_log).not_to include(signed("ds_secret"))
  end
end

RSpec.describe "Durable Streams reads of public streams, without identifying the reader (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_DS" => "true", "ANYCABLE_DS_SKIP_AUTH" => "true", "ANYCABLE_BROKER" => "memory",
                  "ANYCABLE_PUBLIC_STREAMS" => "true"})

  it "reads a public stream with no cookie, cacheable by anyone, and never the app's own streams" do
    broadcast("$public:lobby", {"hello" => "world"})
    broadcast("lobby", {"private" => true})
    res = Net::HTTP.get_response(URI("http://127.0.0.1:#{puma.port}/ds/lobby?offset=-1"))
    expect([res.code, JSON.parse(res.body)]).to eq(["200", [{"hello" => "world"}]])
    expect(res["cache-control"]).to start_with("public")
    # Handed over ahead of the app's middleware: no request line in its log (which
    # has one for a request that goes through).
    expect(puma.http(:get, "/stats").code).to eq("200")
    wait_for { log_lines('Started GET "/stats"').any? }
    expect(log_lines('Started GET "/ds/lobby')).to be_empty
  end
end
