# frozen_string_literal: true

require "spec_helper"

RSpec.describe "Channels on the embedded server (real Puma)", type: :cable do
  with_puma

  it "keeps channel objects for the life of the socket: instance variables persist between actions" do
    c = connected
    id = subscribed(c, channel: "StateChannel", room: "r")
    c.perform(id, "increment")
    first = message_for(c, id)
    c.perform(id, "increment")
    second = message_for(c, id)
    expect([first["count"], second["count"]]).to eq([1, 2])
    expect(second["object_id"]).to eq(first["object_id"])
  end

  it "delivers ActionCable.server.broadcast to plain stream_from subscribers, encoded per identifier" do
    a = connected(name: "alice")
    b = connected(name: "bob")
    ida = subscribed(a, channel: "EchoChannel")
    idb = subscribed(b, {channel: "EchoChannel", extra: 1})
    broadcast("all", {"text" => "hello", "n" => [1, 2]})
    expect(message_for(a, ida)).to eq("text" => "hello", "n" => [1, 2])
    expect(message_for(b, idb)).to eq("text" => "hello", "n" => [1, 2])
  end

  it "broadcasts from inside an action and transmits to the caller" do
    a = connected(name: "alice")
    b = connected(name: "bob")
    ida = subscribed(a, channel: "EchoChannel")
    idb = subscribed(b, channel: "EchoChannel")
    a.perform(ida, "broadcast", {"text" => "from a"})
    got_a = [a.receive, a.receive].map { |m| m["message"] }
    expect(got_a).to all(include("text" => "from a", "action" => "broadcast"))
    expect(message_for(b, idb)).to include("text" => "from a")
  end

  it "echoes action data with transmit" do
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    c.perform(id, "echo", {"payload" => "x" * 200})
    expect(message_for(c, id)).to eq("payload" => "x" * 200, "action" => "echo")
  end

  it "supports stream_for and broadcast_to with a record" do
    a = connected(name: "alice")
    b = connected(name: "bob")
    ida = subscribed(a, channel: "ScopedChannel")
    idb = subscribed(b, channel: "ScopedChannel")
    alice_id = puma.http(:get, "/login?name=alice").body
    expect(puma.http(:post, "/broadcast", user_id: alice_id, payload: '{"for":"alice"}').code).to eq("201")
    expect(message_for(a, ida)).to eq("for" => "alice")
    expect(b.silent_for?(0.5)).to be(true)
    expect(idb).to include("ScopedChannel")
  end

  it "runs stream_from blocks and coders in Ruby" do
    c = connected
    id = subscribed(c, channel: "TransformChannel")
    broadcast("shout", "quiet words")
    expect(message_for(c, id)).to eq("shouted" => "\"QUIET WORDS\"")
    broadcast("decoded", {"text" => "hi"})
    expect(message_for(c, id)).to eq("decoded_class" => "Hash", "text" => "hi")
  end

  it "stops streams with stop_stream_from and stop_all_streams" do
    c = connected
    id = subscribed(c, channel: "StateChannel", room: "s")
    c.perform(id, "stream", {"name" => "s1"})
    expect(message_for(c, id)).to eq("streaming" => "s1")
    c.perform(id, "stream", {"name" => "s2"})
    expect(message_for(c, id)).to eq("streaming" => "s2")
    broadcast("s1", 1)
    expect(message_for(c, id)).to eq(1)

    c.perform(id, "stop", {"name" => "s1"})
    expect(message_for(c, id)).to eq("stopped" => "s1")
    broadcast("s1", 2)
    broadcast("s2", 3)
    expect(message_for(c, id)).to eq(3)

    c.perform(id, "stop_all")
    expect(message_for(c, id)).to eq("stopped" => "all")
    broadcast("s2", 4)
    expect(c.silent_for?(0.5)).to be(true)
  end

  it "runs periodically timers with the channel's state, and stops them on unsubscribe" do
    c = connected
    id = subscribed(c, channel: "TickerChannel")
    ticks = Array.new(3) { message_for(c, id)["tick"] }
    expect(ticks).to eq([1, 2, 3])
    c.send_json(command: "unsubscribe", identifier: id)
    sleep 0.3 # a tick already queued may still arrive
    c.silent_for?(0.1)
    expect(c.silent_for?(0.6)).to be(true)
  end

  it "answers reject with reject_subscription" do
    c = connected
    id = c.subscribe(channel: "PickyChannel")
    expect(c.receive).to eq("identifier" => id, "type" => "reject_subscription")
    ok = subscribed(c, channel: "PickyChannel", ok: true)
    expect(ok).to include("PickyChannel")
  end

  it "unsubscribes: unsubscribed runs and the channel's streams stop" do
    puma.http(:delete, "/events")
    c = connected(name: "gina")
    id = subscribed(c, channel: "StateChannel", room: "u")
    c.send_json(command: "unsubscribe", identifier: id)
    wait_for { events.include?(["unsubscribed", "gina:u"]) }
    e = subscribed(c, channel: "EchoChannel")
    c.perform(e, "echo", {"still" => "here"})
    expect(message_for(c, e)).to include("still" => "here")
  end
end
