# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"

# AnyCable's session restore (extended protocol, ANYCABLE_BROKER=memory): a client that
# comes back with its sid gets its identifiers and subscriptions back without the
# app's `connect` or `subscribed`, on real Puma, on both ports.
RSpec.describe "Session restore (real Puma, memory broker)", type: :cable do
  with_puma(env: {"ANYCABLE_BROKER" => "memory", "ANYCABLE_PORT" => PumaServer.free_port.to_s})

  EXT_PROTOCOL = "actioncable-v1-ext-json"

  before { puma.http(:delete, "/events") }

  def ext(port:, name: nil, query: "", headers: {})
    c = client(name: name, protocols: [EXT_PROTOCOL], port: port, path: "/cable#{query}", headers: headers)
    [c, c.welcome!]
  end

  def next_message(c)
    msg = c.receive
    msg.is_a?(Hash) ? msg : raise("expected a message, got #{msg.inspect}")
  end

  def said(kind)
    events.select { |k, _| k == kind }.map(&:last)
  end

  # `name` on EchoChannel got broadcast 1 (`first`), left, missed broadcast 2 and came
  # back with its sid: [restored client, its welcome, the subscription, first].
  def restored_after_missing_one(name)
    a, welcome = ext(port: puma.port, name: name)
    echo = subscribed(a, channel: "EchoChannel")
    broadcast("all", {n: 1})
    first = next_message(a) until first && first["identifier"] == echo
    a.close
    wait_for { said("disconnect").include?(name) }
    broadcast("all", {n: 2})
    b, restored = ext(port: puma.port, query: "?sid=#{welcome.fetch("sid")}")
    expect(restored).to include("restored" => true, "restored_ids" => [echo])
    [b, restored, echo, first]
  end

  [:puma, :own].each do |which|
    it "restores identifiers and subscriptions without connect or subscribed (#{which} port)" do
      port = which == :puma ? puma.port : Integer(puma.env["ANYCABLE_PORT"])
      a, welcome = ext(port: port, name: "alice")
      old = welcome.fetch("sid")
      state = subscribed(a, channel: "StateChannel", room: "r1")
      echo = subscribed(a, channel: "EchoChannel")
      ticker = subscribed(a, channel: "TickerChannel")
      transform = subscribed(a, channel: "TransformChannel")
      broadcast("all", {n: 1})
      first = next_message(a) until first && first["identifier"] == echo
      epoch = first.fetch("epoch")
      a.close
      wait_for { said("disconnect").include?("alice") }
      broadcast("all", {n: 2})

      # No cookie this time: the sid is what identifies the session.
      b, welcome = ext(port: port, query: "?sid=#{old}")
      expect(welcome).to include("type" => "welcome", "restored" => true)
      expect(welcome["sid"]).not_to eq(old)
      # TransformChannel streams through Ruby blocks: the client subscribes again.
      expect(welcome["restored_ids"]).to contain_exactly(state, echo, ticker)
      expect(said("connect")).to eq(["alice"])
      expect(said("subscribed")).to eq(["alice:r1"])
      # The app's objects are back before any command: the ticker's timer runs.
      tick = next_message(b) until tick && tick["identifier"] == ticker
      expect(tick["message"]).to include("tick")
      # The old sid is in no log line (Rails' request log included: filtered).
      expect(puma.rails_log).not_to include(old)
      expect(puma.log).not_to include(old)

      b.send_json(command: "history", identifier: echo,
        history: {streams: {all: {epoch: epoch, offset: first.fetch("offset")}}})
      replayed = []
      replayed << next_message(b) until replayed.last&.dig("type") == "confirm_history"
      expect(replayed.select { |m| m["identifier"] == echo && m["message"] }.map { |m| m["message"]["n"] }).to eq([2])

      # The channel object is new: the identifiers are there (located from their
      # GlobalIDs), what `subscribed` set is not.
      b.perform(state, "ivars")
      ivars = next_message(b) until ivars && ivars["identifier"] == state
      expect(ivars["message"]).to eq("room" => nil, "count" => nil, "params_room" => "r1", "user" => "alice")
      # Unsubscribing a restored channel lets its streams go.
      b.send_json(command: "unsubscribe", identifier: echo)
      b.send_json(command: "unsubscribe", identifier: ticker)
      sleep 0.3
      broadcast("all", {n: 3})
      b.send_json(command: "ping")
      rest = []
      rest << next_message(b) until rest.last == {"type" => "pong"}
      expect(rest.select { |m| m["identifier"] == echo && m["message"] }).to be_empty
      expect(said("connect")).to eq(["alice"])
      expect(said("subscribed")).to eq(["alice:r1"])

      # The sid restores a session: log lines name it by its first 8 characters only.
      b.send_raw("not json")
      sid = welcome.fetch("sid")
      wait_for { puma.log.include?("session #{sid[0, 8]}: ") }
      expect(puma.log).not_to include(sid)
      expect(puma.rails_log).not_to include(sid)

      # As AnyCable's Disconnect: the restored session's end runs unsubscribed and
      # disconnect for what it has.
      b.close
      wait_for { said("disconnect").size == 2 }
      expect(said("unsubscribed")).to eq(["alice:r1", "alice:"])
    end
  end

  it "keeps what is broadcast between the restore and the client's history request behind the replay" do
    b, restored, echo, first = restored_after_missing_one("alice")
    # Live, before the client's `history` (AnyCable sends it first: out of order).
    broadcast("all", {n: 3})
    sleep 0.3
    b.send_json(command: "history", identifier: echo,
      history: {streams: {all: {epoch: first.fetch("epoch"), offset: first.fetch("offset")}}})
    b.send_json(command: "ping")
    got = []
    got << next_message(b) until got.last == {"type" => "pong"}
    # 3 is in the replay (the history has it by then); its live copy is not sent again.
    expect(got.map { |m| m["type"] || m["message"]["n"] }).to eq([2, 3, "confirm_history", "pong"])

    # A client that asks no history gets them after a few seconds.
    b.close
    wait_for { said("disconnect").count("alice") == 2 }
    c, again = ext(port: puma.port, query: "?sid=#{restored.fetch("sid")}")
    expect(again).to include("restored" => true)
    sent = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    broadcast("all", {n: 4})
    expect(next_message(c)).to include("identifier" => echo, "message" => {"n" => 4})
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - sent).to be >= 2.5
  end

  it "replays a restored session's history while the app's objects are rebuilt; the app's commands wait for them" do
    b, _restored, echo, first = restored_after_missing_one("sloth")
    b.send_json(command: "history", identifier: echo,
      history: {streams: {all: {epoch: first.fetch("epoch"), offset: first.fetch("offset")}}})
    b.perform(echo, "echo", text: "after the rebuild")
    got = [next_message(b), next_message(b)]
    expect(got.map { |m| m["type"] || m["message"]["n"] }).to eq([2, "confirm_history"])
    # The rebuild (2 s in User.find) has not finished: the replay did not wait for it.
    expect(said("located")).to be_empty
    reply = next_message(b)
    expect(reply).to include("identifier" => echo, "message" => include("text" => "after the rebuild"))
    expect(said("located")).to eq(["sloth"])
  end

  it "gives a restored session its state_attr_accessor values back, records located again" do
    a, welcome = ext(port: puma.port, name: "alice", query: "?locale=fr")
    room = subscribed(a, channel: "RoomChannel", room: "r7")
    a.perform(room, "show")
    expect(message_for(a, room)).to eq("room" => "r7", "owner" => "alice", "tags" => {"kind" => "chat", "ids" => [1, 2]},
      "plain" => "set in subscribed", "locale" => "fr")
    a.perform(room, "move", room: "r8")
    expect(message_for(a, room)).to eq("room" => "r8")
    # Not a value the session can keep: an error where it is written, the old value kept.
    a.perform(room, "keep_object")
    wait_for { events.any? { |kind, what| kind == "connection.rescue_from" && what.include?("state_attr_accessor :tags") } }
    a.close
    wait_for { said("disconnect").include?("alice") }

    b, welcome = ext(port: puma.port, query: "?sid=#{welcome.fetch("sid")}")
    expect(welcome).to include("restored" => true, "restored_ids" => [room])
    b.perform(room, "show")
    # Instance variables `subscribed` set are gone; the state attributes are back.
    expect(message_for(b, room)).to eq("room" => "r8", "owner" => "alice", "tags" => {"kind" => "chat", "ids" => [1, 2]},
      "plain" => nil, "locale" => "fr")
    broadcast("room_r7", {hello: 1})
    expect(message_for(b, room)).to include("hello" => 1)

    # On the plain protocol they are plain attributes.
    c = connected(name: "bob")
    plain_room = subscribed(c, channel: "RoomChannel", room: "p")
    c.perform(plain_room, "show")
    expect(message_for(c, plain_room)).to include("room" => "p", "owner" => "bob", "plain" => "set in subscribed")
  end

  # An extended-protocol session of alice's on EchoChannel whose socket closed, once
  # the app's disconnect ran: its sid.
  def closed_session
    count = said("disconnect").count("alice")
    a, welcome = ext(port: puma.port, name: "alice")
    subscribed(a, channel: "EchoChannel")
    a.close
    wait_for { said("disconnect").count("alice") == count + 1 }
    welcome.fetch("sid")
  end

  it "lets remote_connections reach a restored session that sent no command, and keeps nothing after it" do
    old = closed_session
    app_sessions = -> { JSON.parse(puma.http(:get, "/stats").body).dig("server", "sessions") }
    before = app_sessions.call
    b, welcome = ext(port: puma.port, query: "?sid=#{old}")
    expect(welcome).to include("restored" => true)
    # Rebuilt in the app without a command from the client.
    wait_for { app_sessions.call == before + 1 }
    user_id = puma.http(:get, "/login?name=alice").body
    expect(puma.http(:post, "/remote_disconnect", user_id: user_id).code).to eq("201")
    expect(b.receive).to eq("type" => "disconnect", "reason" => "remote", "reconnect" => true)
    expect(b.receive).to eq(:closed)
    # Closed by the app (a logout, say): that session is not restored.
    c = client(protocols: [EXT_PROTOCOL], path: "/cable?sid=#{welcome.fetch("sid")}")
    c.open?
    expect(c.receive).to eq("type" => "disconnect", "reason" => "unauthorized", "reconnect" => false)
  end

  # Issue #24 (4), for a credential the app checks in Ruby: a restore skips `connect`,
  # so without this it would outlive the token.
  it "refuses a restore past the expiry the app's connect gave (AnyCableRs.restorable_until)" do
    valid_until = Time.now.to_i + 2
    a, welcome = ext(port: puma.port, name: "alice", query: "?valid_until=#{valid_until}")
    subscribed(a, channel: "EchoChannel")
    a.close
    wait_for { said("disconnect").include?("alice") }
    sleep 0.1 until Time.now.to_i >= valid_until
    b = client(protocols: [EXT_PROTOCOL], path: "/cable?sid=#{welcome.fetch("sid")}")
    expect(b.receive).to eq("type" => "disconnect", "reason" => "token_expired", "reconnect" => false)
  end

  it "restores once, only over the extended protocol, and never a session the app closed for good" do
    old = closed_session

    plain = client(protocols: ["actioncable-v1-json"], path: "/cable?sid=#{old}")
    plain.open?
    expect(plain.receive).to eq("type" => "disconnect", "reason" => "unauthorized", "reconnect" => false)

    _, again = ext(port: puma.port, headers: {"X-AnyCable-Restore-SID" => old}, query: "?sid=nonsense")
    expect(again).to include("restored" => true)
    third = client(protocols: [EXT_PROTOCOL], path: "/cable?sid=#{old}")
    third.open?
    expect(third.receive).to eq("type" => "disconnect", "reason" => "unauthorized", "reconnect" => false)
  end
end
