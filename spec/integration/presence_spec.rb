# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"

# AnyCable's presence (memory broker) on an app's channel, from Ruby (join_presence,
# leave_presence) and from clients (join, leave, presence), on real Puma.
RSpec.describe "Presence (real Puma, memory broker)", type: :cable do
  with_puma(env: {"ANYCABLE_BROKER" => "memory", "ANYCABLE_PRESENCE_TTL" => "1"})

  def ext_client(name)
    c = client(name: name, protocols: ["actioncable-v1-ext-json"])
    c.welcome!
    c
  end

  def presence_of(c)
    msg = c.receive
    expect(msg["type"]).to eq("presence"), msg.inspect
    msg["message"]
  end

  it "joins from Ruby and from clients, tells every subscriber once, answers who is there, and expires" do
    alice = ext_client("alice")
    lobby = alice.subscribe(channel: "LobbyChannel", room: "1", auto_join: true)
    expect(alice.receive).to eq("identifier" => lobby, "type" => "confirm_subscription")
    expect(presence_of(alice)).to eq("type" => "join", "id" => "alice", "info" => {"name" => "alice"})

    bob = ext_client("bob")
    bob_lobby = subscribed(bob, channel: "LobbyChannel", room: "1")
    bob.send_json(command: "join", identifier: bob_lobby, presence: {id: "bob", info: {away: false}})
    joined = {"type" => "join", "id" => "bob", "info" => {"away" => false}}
    expect(presence_of(bob)).to eq(joined)
    expect(presence_of(alice)).to eq(joined)

    bob.send_json(command: "presence", identifier: bob_lobby)
    expect(presence_of(bob)).to eq("type" => "info", "total" => 2,
      "records" => [{"id" => "alice", "info" => {"name" => "alice"}}, {"id" => "bob", "info" => {"away" => false}}])

    # leave_presence from an action; a channel without a presence stream gets `error`.
    alice.perform(lobby, "go_away")
    expect(presence_of(alice)).to eq("type" => "leave", "id" => "alice")
    expect(presence_of(bob)).to eq("type" => "leave", "id" => "alice")
    echo = subscribed(bob, channel: "EchoChannel")
    bob.send_json(command: "join", identifier: echo, presence: {id: "bob"})
    expect(bob.receive).to eq("type" => "presence", "identifier" => echo, "message" => {"type" => "error", "total" => 0})

    # Unsubscribing leaves at once; a closed socket leaves after PRESENCE_TTL.
    carol = ext_client("carol")
    carol_lobby = subscribed(carol, channel: "LobbyChannel", room: "1", auto_join: true)
    expect(presence_of(carol)["id"]).to eq("carol")
    expect(presence_of(bob)["id"]).to eq("carol")
    carol.send_json(command: "unsubscribe", identifier: carol_lobby)
    expect(presence_of(bob)).to eq("type" => "leave", "id" => "carol")
    alice.close
    closed = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    bob.send_json(command: "leave", identifier: bob_lobby)
    expect(presence_of(bob)).to eq("type" => "leave", "id" => "bob")
    dave = ext_client("dave")
    dave_lobby = subscribed(dave, channel: "LobbyChannel", room: "1", auto_join: true)
    expect(presence_of(dave)["id"]).to eq("dave")
    expect(presence_of(bob)["id"]).to eq("dave")
    dave.close
    expect(presence_of(bob)).to eq("type" => "leave", "id" => "dave")
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - closed).to be >= 1.0
    bob.send_json(command: "presence", identifier: bob_lobby, data: {return_records: false})
    expect(presence_of(bob)).to eq("type" => "info", "total" => 0)
  end
end
