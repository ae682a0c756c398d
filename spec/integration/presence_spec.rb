# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"

# An extended-protocol client, and the next presence message it gets.
module PresenceHelpers
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
end

# AnyCable's presence (memory broker) on an app's channel, from Ruby (join_presence,
# leave_presence) and from clients (join, leave, presence), on real Puma.
RSpec.describe "Presence (real Puma, memory broker)", type: :cable do
  with_puma(env: {"ANYCABLE_BROKER" => "memory", "ANYCABLE_PRESENCE_TTL" => "1"})
  include PresenceHelpers

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

# Issue #24 (6, 7): another user joined as "alice" and replaced her info, "alice"
# stayed listed after her socket closed, made-up ids were announced on channels that
# join their users themselves, and big infos made every `presence` reply too large.
RSpec.describe "Presence, tried as an attacker would (real Puma, memory broker)", type: :cable do
  with_puma(env: {"ANYCABLE_BROKER" => "memory", "ANYCABLE_PRESENCE_TTL" => "1"})
  include PresenceHelpers

  let(:error) { {"type" => "error", "total" => 0} }

  it "keeps an id its first joiner's, refuses client joins where the channel joins its users, and bounds info" do
    alice = ext_client("alice")
    a_lobby = subscribed(alice, channel: "LobbyChannel", room: "att")
    alice.send_json(command: "join", identifier: a_lobby, presence: {id: "alice", info: {name: "Alice"}})
    expect(presence_of(alice)).to eq("type" => "join", "id" => "alice", "info" => {"name" => "Alice"})

    bob = ext_client("bob")
    b_lobby = subscribed(bob, channel: "LobbyChannel", room: "att")
    bob.send_json(command: "join", identifier: b_lobby, presence: {id: "alice", info: {name: "Bob was here"}})
    expect(presence_of(bob)).to eq(error)
    bob.send_json(command: "join", identifier: b_lobby, presence: {id: "bob", info: {pad: "x" * 5000}})
    expect(presence_of(bob)).to eq(error)
    bob.send_json(command: "presence", identifier: b_lobby)
    expect(presence_of(bob)).to eq("type" => "info", "total" => 1, "records" => [{"id" => "alice", "info" => {"name" => "Alice"}}])
    expect(alice.silent_for?(0.2)).to be(true)

    # Her own second tab shares the id (same connection identifiers).
    tab = ext_client("alice")
    t_lobby = subscribed(tab, channel: "LobbyChannel", room: "att")
    tab.send_json(command: "join", identifier: t_lobby, presence: {id: "alice", info: {name: "Alice 2"}})
    tab.send_json(command: "presence", identifier: t_lobby)
    expect(presence_of(tab)).to include("total" => 1)

    # Gone when her last socket is (after PRESENCE_TTL), whatever bob tried.
    alice.close
    tab.close
    expect(presence_of(bob)).to eq("type" => "leave", "id" => "alice")

    # Where the channel joins its users itself (presence: true), a client join is refused.
    carol = ext_client("carol")
    staff = subscribed(carol, channel: "LobbyChannel", room: "staff", app_only: true)
    carol.send_json(command: "join", identifier: staff, presence: {id: "ceo", info: {}})
    expect(presence_of(carol)).to eq(error)
    dave = ext_client("dave")
    d_staff = dave.subscribe(channel: "LobbyChannel", room: "staff", app_only: true, auto_join: true)
    expect(dave.receive).to include("type" => "confirm_subscription")
    expect(presence_of(dave)).to eq("type" => "join", "id" => "dave", "info" => {"name" => "dave"})
    expect(presence_of(carol)).to eq("type" => "join", "id" => "dave", "info" => {"name" => "dave"})
    expect(d_staff).to include("staff")
  end
end

# Issue #24: "the app decides who may join with which id/info on its channels (a
# hook)". With `stream_from …, presence: :ask`, a client's join (alone or on its
# subscribe) reaches the channel's presence_join_requested: the dummy's joins each
# user under their own name with one info field it takes, and refuses mallory. The
# hook is no action a client can perform.
RSpec.describe "Presence joins the channel decides (presence: :ask; real Puma, memory broker)", type: :cable do
  with_puma(env: {"ANYCABLE_BROKER" => "memory", "ANYCABLE_PRESENCE_TTL" => "1"})
  include PresenceHelpers

  it "joins a client as the channel says, refuses whom it refuses, and never runs the hook as an action" do
    alice = ext_client("alice")
    a_lobby = subscribed(alice, channel: "LobbyChannel", room: "ask", ask: true)
    alice.send_json(command: "join", identifier: a_lobby, presence: {id: "ceo", info: {status: "here", admin: true}})
    expect(presence_of(alice)).to eq("type" => "join", "id" => "alice", "info" => {"name" => "alice", "status" => "here"})

    mallory = ext_client("mallory")
    m_lobby = subscribed(mallory, channel: "LobbyChannel", room: "ask", ask: true)
    mallory.send_json(command: "join", identifier: m_lobby, presence: {id: "alice", info: {status: "pwned"}})
    expect(presence_of(mallory)).to eq("type" => "error", "total" => 0)
    # As an action, the hook does not run (Action Cable would list a channel's public
    # method as one).
    mallory.perform(m_lobby, "presence_join_requested", id: "alice")
    expect(mallory.silent_for?(0.3)).to be(true)
    expect(alice.silent_for?(0.2)).to be(true)
    expect(puma.rails_log).to include("Unable to process LobbyChannel#presence_join_requested")

    # A join on the subscribe command goes the same way, after the confirmation.
    bob = ext_client("bob")
    bob.send_json(command: "subscribe", identifier: JSON.generate(channel: "LobbyChannel", room: "ask", ask: true),
      presence: {id: "bobby", info: {status: "away"}})
    expect(bob.receive).to include("type" => "confirm_subscription")
    joined = {"type" => "join", "id" => "bob", "info" => {"name" => "bob", "status" => "away"}}
    expect(presence_of(bob)).to eq(joined)
    expect(presence_of(alice)).to eq(joined)
    alice.send_json(command: "presence", identifier: a_lobby)
    expect(presence_of(alice)).to include("total" => 2)
  end
end
