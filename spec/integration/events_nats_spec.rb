# frozen_string_literal: true

require "spec_helper"
require_relative "../support/sse_client"

# Server-Sent Events and Durable Streams reads across two nodes with the NATS broker
# (issue "Beyond WebSockets"): an event's id, a reader's offset, is its place in the
# JetStream history both nodes share, so a client that comes back to the other node gets
# what it missed there.
RSpec.describe "Server-Sent Events and Durable Streams reads on two nodes with the NATS broker (real Puma)",
  type: :cable do
  before(:all) do
    @nats = JetStreamServer.new.start
    env = {"ANYCABLE_BROKER" => "nats", "ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => @nats.url,
           "ANYCABLE_SSE" => "true", "ANYCABLE_DS" => "true", "ANYCABLE_STREAMS_SECRET" => "streams-s3cret",
           "ANYCABLE_POLL" => "true", "ANYCABLE_POLL_FLUSH_INTERVAL" => "100"}
    @one = PumaServer.new(env: env).start
    @two = PumaServer.new(env: env.merge("DUMMY_DATABASE" => @one.env["DUMMY_DATABASE"])).start
    wait_for(timeout: 20) { [@one, @two].all? { |s| s.log.include?("NATS broker: JetStream stream anycable_history") } }
  end

  after(:all) do
    [@one, @two].each { |p| p&.stop && p&.cleanup }
    @nats&.stop
    @nats&.cleanup
  end

  after { (@sse_clients || []).each(&:close) }

  def puma
    @one
  end

  def sse(server, headers: {})
    c = SseClient.new(server.port, "/events?channel=EchoChannel",
      headers: {"Origin" => "http://allowed.test", "Cookie" => cookies_for("alice")}.merge(headers))
    (@sse_clients ||= []) << c
    expect(c.status).to eq(200)
    expect([c.next_event.event, c.next_event.event]).to eq(%w[welcome confirm_subscription])
    c
  end

  def post(server, n, stream: "all")
    expect(server.http(:post, "/broadcast", stream: stream, payload: JSON.generate(n: n)).code).to eq("201")
  end

  def ds_read(server, name, **params)
    uri = URI("http://127.0.0.1:#{server.port}/ds/#{name}?#{URI.encode_www_form(params.merge(signed: signed(name)))}")
    request = Net::HTTP::Get.new(uri)
    request["Cookie"] = cookies_for("alice")
    Net::HTTP.start(uri.host, uri.port, read_timeout: 20) { |http| http.request(request) }
  end

  it "streams what either node broadcasts, and gives a client back on the other node what it missed" do
    on_two = sse(@two)
    post(@one, 1)
    first = on_two.next_event(timeout: 10)
    expect(first.json).to eq("n" => 1)
    expect(first.id).to match(%r{\A\d+/[^/]+/all\z})
    on_two.close
    post(@two, 2)
    post(@one, 3)
    back = sse(@one, headers: {"Last-Event-ID" => first.id})
    events = Array.new(3) { back.next_event(timeout: 10) }
    expect(events.map(&:event)).to eq([nil, nil, "confirm_history"])
    expect(events.first(2).map(&:json)).to eq([{"n" => 2}, {"n" => 3}])
    offsets = [first, *events.first(2)].map { |e| Integer(e.id.split("/").first) }
    expect(offsets).to eq(offsets.sort.uniq)
    post(@two, 4)
    expect(back.next_event(timeout: 10).json).to eq("n" => 4)
    expect(back.silent_for?(0.5)).to be(true)
  end

  it "reads a stream on either node from the offset the other gave: catch-up, long-poll, SSE (Durable Streams)" do
    post(@one, 1, stream: "ds_shared")
    first = ds_read(@two, "ds_shared", offset: "-1")
    expect(JSON.parse(first.body)).to eq([{"n" => 1}])
    waiting = Thread.new { ds_read(@one, "ds_shared", offset: first["stream-next-offset"], live: "long-poll") }
    sleep 0.5
    post(@two, 2, stream: "ds_shared")
    polled = waiting.value
    expect([polled.code, JSON.parse(polled.body)]).to eq(["200", [{"n" => 2}]])
    post(@one, 3, stream: "ds_shared")
    query = URI.encode_www_form(offset: polled["stream-next-offset"], live: "sse", signed: signed("ds_shared"))
    reader = SseClient.new(@two.port, "/ds/ds_shared?#{query}", headers: {"Cookie" => cookies_for("alice")})
    (@sse_clients ||= []) << reader
    data = reader.next_event(timeout: 10)
    expect([data.event, data.json]).to eq(["data", [{"n" => 3}]])
    control = reader.next_event
    expect(control.json).to include("upToDate" => true)
    expect(control.json["streamNextOffset"]).to be > polled["stream-next-offset"]
  end

  it "gives a long-polling session on one node what the other broadcasts (its polls stay on its node)" do
    lp = lambda do |server, lines, id: nil|
      uri = URI("http://127.0.0.1:#{server.port}/lp")
      request = Net::HTTP::Post.new(uri)
      request["Cookie"] = cookies_for("alice")
      request["X-Anycable-Poll-ID"] = id if id
      request.body = lines.map { |l| JSON.generate(l) }.join("\n")
      Net::HTTP.start(uri.host, uri.port, read_timeout: 20) { |http| http.request(request) }
    end
    opened = lp.call(@two, [{command: "subscribe", identifier: JSON.generate(channel: "EchoChannel")}])
    expect(opened.body.split("\n").map { |l| JSON.parse(l)["type"] }).to eq(%w[welcome confirm_subscription])
    id = opened["X-Anycable-Poll-ID"]
    poll = Thread.new { lp.call(@two, [], id: id) }
    sleep 0.5
    post(@one, 5)
    got = poll.value.body.split("\n").map { |l| JSON.parse(l) }
    expect(got.map { |m| m["message"] }).to eq([{"n" => 5}])
    expect(got.first["offset"]).to be_a(Integer) # its place in the history both nodes share
  end
end
