# frozen_string_literal: true

require "spec_helper"
require_relative "../support/sse_client"

# Server-Sent Events across two nodes with the NATS broker (issue "Beyond WebSockets"):
# an event's id is its place in the JetStream history both nodes share, so an
# EventSource that comes back to the other node gets what it missed there.
RSpec.describe "Server-Sent Events on two nodes with the NATS broker (real Puma)", type: :cable do
  before(:all) do
    @nats = JetStreamServer.new.start
    env = {"ANYCABLE_BROKER" => "nats", "ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => @nats.url,
           "ANYCABLE_SSE" => "true"}
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

  def post(server, n)
    expect(server.http(:post, "/broadcast", stream: "all", payload: JSON.generate(n: n)).code).to eq("201")
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
end
