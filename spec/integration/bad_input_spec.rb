# frozen_string_literal: true

require "spec_helper"

RSpec.describe "Bad input on the embedded server (real Puma)", type: :cable do
  with_puma

  # After bad input the same socket still works, and so do others.
  def still_works(c)
    id = subscribed(c, {channel: "FaultyChannel", probe: rand(1_000_000)})
    c.perform(id, "ping")
    expect(message_for(c, id)).to eq("pong" => true)
  end

  let(:bystander) { connected(name: "bystander") }

  before { bystander }

  after { still_works(bystander) }

  it "ignores malformed JSON, unknown commands and missing identifiers, logging the first and counting the rest" do
    c = connected
    c.send_raw("{not json")
    c.send_raw('{"command":"dance","identifier":"{}"}')
    c.send_raw('{"command":"subscribe"}')
    c.send_raw('["an","array"]')
    expect(c.silent_for?(0.3)).to be(true)
    still_works(c)
    expect(puma.log).to match(/malformed message/)
    # One line per connection per 10 s: a client sending garbage in a loop cannot
    # flood the log; the rest is counted when the connection ends.
    expect(puma.log).not_to match(/unknown command: "dance"/)
    sid = puma.log[/WARN session (\h+): malformed message: key must be a string/, 1]
    c.close
    wait_for { puma.log.include?("session #{sid}: 3 more bad messages were ignored") }
  end

  it "keeps the log bounded when a client sends bad frames in a loop" do
    c = connected
    before = puma.log.lines.size
    500.times { |i| c.send_raw("{garbage #{i}") }
    expect(c.silent_for?(0.5)).to be(true)
    still_works(c)
    expect(puma.log.lines.size - before).to be <= 2
  end

  it "drops a message over the size limit and keeps the connection" do
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    c.perform(id, "echo", {"big" => "x" * 70_000})
    expect(c.silent_for?(0.3)).to be(true)
    expect(puma.log).to match(/over the 65536-byte limit/)
    still_works(c)
  end

  it "closes with 1009 on a frame past the hard limit, without touching others" do
    c = connected
    c.send_raw("x" * (1024 * 1024 + 10))
    expect(c.receive).to eq(:closed)
    expect(c.close_event.code).to eq(1009)
  end

  it "rejects an unknown channel class or a malformed identifier" do
    c = connected
    id = c.subscribe(channel: "NoSuchChannel")
    expect(c.receive).to eq("identifier" => id, "type" => "reject_subscription")
    c.send_json(command: "subscribe", identifier: "{oops")
    expect(c.receive).to eq("identifier" => "{oops", "type" => "reject_subscription")
    id = c.subscribe(channel: "String")
    expect(c.receive).to eq("identifier" => id, "type" => "reject_subscription")
    expect(log_lines("Subscription class not found: \"NoSuchChannel\"").size).to eq(1)
    still_works(c)
  end

  it "ignores a second subscribe to one identifier (as Action Cable does) and messages for unknown identifiers" do
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    c.send_json(command: "subscribe", identifier: id)
    c.perform('{"channel":"EchoChannel","nope":1}', "echo", {"x" => 1})
    c.send_json(command: "unsubscribe", identifier: '{"channel":"Unknown"}')
    expect(c.silent_for?(0.3)).to be(true)
    expect(log_lines("Already subscribed to #{id}").size).to eq(1)
    expect(log_lines("Unable to find subscription with identifier").size).to eq(2)
    c.perform(id, "echo", {"x" => 2})
    expect(message_for(c, id)).to eq("x" => 2, "action" => "echo")
  end

  it "rejects a subscription whose subscribed raises, logs it once with its backtrace, stops its streams" do
    c = connected
    id = c.subscribe(channel: "FaultyChannel", explode: true)
    expect(c.receive).to eq("identifier" => id, "type" => "reject_subscription")
    expect(log_lines("subscribed exploded").size).to eq(1)
    expect(puma.rails_log).to match(%r{subscribed exploded.*\n.*app/channels/faulty_channel\.rb}m)
    broadcast("faulty", "should not arrive")
    expect(c.silent_for?(0.3)).to be(true)
    still_works(c)
  end

  it "logs an exception in an action once with its backtrace; the socket keeps working" do
    c = connected
    id = subscribed(c, channel: "FaultyChannel")
    c.perform(id, "boom")
    expect(c.silent_for?(0.3)).to be(true)
    expect(log_lines("action exploded").size).to eq(1)
    expect(puma.rails_log).to match(%r{action exploded.*\n.*app/channels/faulty_channel\.rb}m)
    c.perform(id, "ping")
    expect(message_for(c, id)).to eq("pong" => true)
  end

  it "hands an action's exception to the connection's rescue_from" do
    puma.http(:delete, "/events")
    c = connected
    id = subscribed(c, channel: "FaultyChannel")
    c.perform(id, "rescued")
    wait_for { events.include?(["connection.rescue_from", "handled by rescue_from"]) }
  end

  it "logs an unknown action as Action Cable does and keeps going" do
    c = connected
    id = subscribed(c, channel: "FaultyChannel")
    c.perform(id, "no_such_action")
    expect(c.silent_for?(0.3)).to be(true)
    expect(log_lines("Unable to process FaultyChannel#no_such_action")).not_to be_empty
    still_works(c)
  end

  it "survives clients that vanish without a close frame" do
    10.times do
      c = connected
      subscribed(c, channel: "EchoChannel")
      c.instance_variable_get(:@socket).close
    end
    wait_for { JSON.parse(puma.http(:get, "/stats").body)["sessions"] <= 1 }
  end
end

# Issue #24 (9): 2 000 messages to a 32 KB unknown identifier wrote 62.7 MiB of Rails
# log in 1.4 s from one socket. Lines a client can cause from the Ruby side are now one
# a second per kind, client text cut (AnyCableRs::BoundedLog).
RSpec.describe "Bad input on the Ruby side, in a loop (real Puma)", type: :cable do
  with_puma

  it "keeps the Rails log bounded: one line a second per kind, client text cut, the count told" do
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    unknown = JSON.generate(channel: "EchoChannel", pad: "x" * 3000)
    before = puma.rails_log.bytesize
    300.times { c.perform(unknown, "echo", {}) }
    300.times { c.perform(id, "no_such_action", {"pad" => "y" * 30_000}) }
    300.times { c.send_json(command: "subscribe", identifier: id) }
    # Action Cable's own line for a valid action carries its arguments: cut too.
    c.perform(id, "echo", {"pad" => "z" * 30_000})
    expect(message_for(c, id)).to include("action" => "echo")
    # Commands of one socket run in order: when this is answered, all of them ran.
    c.perform(id, "echo", {"x" => 3})
    expect(message_for(c, id)).to eq("x" => 3, "action" => "echo")
    grown = puma.rails_log.bytesize - before
    # Before: over 10 MB; each kind's line is at most ~1 KB now.
    expect(grown).to be < 60_000
    expect(log_lines("Unable to find subscription with identifier").size).to be_between(1, 3)
    expect(log_lines("Unable to process EchoChannel#no_such_action").size).to be_between(1, 3)
    expect(log_lines("Already subscribed to").size).to be_between(1, 3)
    expect(puma.rails_log).not_to include("x" * 600)
    expect(puma.rails_log).not_to include("z" * 600)
    expect(log_lines("EchoChannel#echo(").size).to eq(2)
    sleep 1.1
    c.perform(unknown, "echo", {})
    wait_for { log_lines("more such lines dropped since the last").any? }
  end
end
