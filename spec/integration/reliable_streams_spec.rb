# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"

# AnyCable's extended protocol (actioncable-v1-ext-json) and the memory broker's
# history, with raw frames against the dummy app on real Puma (issue "Reliable streams",
# first step: one process, no session restore).
RSpec.describe "Reliable streams: extended protocol and history (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_BROKER" => "memory", "ANYCABLE_PING_INTERVAL" => "0.5", "ANYCABLE_PONG_TIMEOUT" => "0.5",
                  "ANYCABLE_PORT" => PumaServer.free_port.to_s})

  EXT = "actioncable-v1-ext-json"

  def ext_client(**opts)
    c = client(name: "alice", protocols: [EXT], **opts)
    c.welcome!
    c
  end

  # Answers every ping (as @anycable/web does with pongs: true), so pong_timeout
  # leaves the client alone while the example runs.
  def receive_answering_pings(c)
    loop do
      msg = c.receive(pings: true)
      return msg unless msg.is_a?(Hash) && msg["type"] == "ping"

      c.send_json(command: "pong")
    end
  end

  def broadcast_n(n)
    broadcast("all", {n: n})
  end

  it "is chosen when offered, on Puma's port and the server's own; plain clients are served as before" do
    [puma.port, Integer(puma.env["ANYCABLE_PORT"])].each do |port|
      c = client(name: "alice", protocols: [EXT], port: port)
      welcome = c.welcome!
      expect(c.protocol).to eq(EXT)
      expect(welcome["sid"]).to match(/\A\h{17,}\z/)
      c.send_json(command: "pong")
      c.send_json(command: "ping")
      expect(receive_answering_pings(c)).to eq("type" => "pong")

      plain = connected(name: "bob", port: port)
      expect(plain.protocol).to eq("actioncable-v1-json")
    end
  end

  it "gives broadcasts offsets and replays the missed ones after a re-subscribe, then confirm_history" do
    a = ext_client
    id = a.subscribe(channel: "EchoChannel")
    expect(receive_answering_pings(a)).to eq("identifier" => id, "type" => "confirm_subscription")
    broadcast_n(1)
    first = receive_answering_pings(a)
    expect(first).to include("identifier" => id, "message" => {"n" => 1}, "stream_id" => "all")
    epoch = first.fetch("epoch")
    expect(epoch).to match(/\A[\w-]{4}\z/)
    a.close

    base = first.fetch("offset")
    broadcast_n(2)
    broadcast_n(3)
    b = ext_client
    b.send_json(command: "subscribe", identifier: id,
      history: {since: Time.now.to_i - 60, streams: {all: {epoch: epoch, offset: base}}})
    expect(receive_answering_pings(b)).to eq("identifier" => id, "type" => "confirm_subscription")
    [2, 3].each_with_index do |n, i|
      expect(receive_answering_pings(b)).to eq("identifier" => id, "message" => {"n" => n}, "stream_id" => "all",
        "epoch" => epoch, "offset" => base + i + 1)
    end
    expect(receive_answering_pings(b)).to eq("type" => "confirm_history", "identifier" => id)

    # Another process's (or an earlier run's) epoch: only reject_history.
    b.send_json(command: "history", identifier: id, history: {since: 0, streams: {all: {epoch: "zzzz", offset: 1}}})
    expect(receive_answering_pings(b)).to eq("type" => "reject_history", "identifier" => id)
    # A rejected subscribe gets no history reply.
    picky = b.subscribe(channel: "PickyChannel")
    b.send_json(command: "subscribe", identifier: JSON.generate(channel: "PickyChannel", x: 1),
      history: {since: Time.now.to_i - 60})
    expect(receive_answering_pings(b)).to eq("identifier" => picky, "type" => "reject_subscription")
    expect(receive_answering_pings(b)["type"]).to eq("reject_subscription")
    b.send_json(command: "ping")
    expect(receive_answering_pings(b)).to eq("type" => "pong")
  end

  it "disconnects a silent extended client as no_pong, and leaves plain clients alone" do
    # Before the silent client connects: its window (ping interval + pong timeout) starts
    # at its welcome, so at least that much has passed when no_pong comes, however long
    # bob's connect takes on a loaded machine.
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    silent = ext_client
    plain = connected(name: "bob")
    expect(silent.receive(timeout: 5)).to eq("type" => "disconnect", "reason" => "no_pong", "reconnect" => true)
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be >= 1.0
    expect(silent.receive(timeout: 5)).to eq(:closed)
    expect(plain.silent_for?(1.5)).to be(true)
    expect(plain.closed?).to be(false)
  end
end

RSpec.describe "ANYCABLE_BROKER" do
  it "takes nats only with the nats broadcast adapter, and refuses anything it does not know" do
    expect { AnyCableRs::Config.load(env: {"ANYCABLE_BROKER" => "nats"}, yaml_path: nil, cable_yaml_path: nil) }
      .to raise_error(ArgumentError, /ANYCABLE_BROKER=nats .*needs ANYCABLE_BROADCAST_ADAPTER=nats/)
    nats = AnyCableRs::Config.load(env: {"ANYCABLE_BROKER" => "nats", "ANYCABLE_BROADCAST_ADAPTER" => "nats"},
      yaml_path: nil, cable_yaml_path: nil)
    expect(nats.native_options).to include(broker: "nats", broadcast_adapter: "nats")
    expect { AnyCableRs::Config.new(broker: "redis") }.to raise_error(ArgumentError, /none, memory or nats/)
    config = AnyCableRs::Config.load(env: {"ANYCABLE_BROKER" => "memory", "ANYCABLE_HISTORY_TTL" => "60"},
      yaml_path: nil, cable_yaml_path: nil)
    expect(config.native_options).to include(broker: "memory", history_limit: 100, history_ttl: 60.0, pong_timeout: 0.0)
    expect(AnyCableRs::Config.new.broker).to eq("none")
  end

  it "is checked by the native side too: unknown brokers, nats without NATS and empty histories are refused" do
    base = AnyCableRs::Config.new.native_options
    expect { AnyCableRs::Native.new(base.merge(broker: "redis")) }.to raise_error(ArgumentError, /not supported/)
    expect { AnyCableRs::Native.new(base.merge(broker: "nats")) }.to raise_error(ArgumentError, /needs broadcast_adapter nats/)
    expect { AnyCableRs::Native.new(base.merge(broker: "memory", history_limit: 0)) }.to raise_error(ArgumentError)
    expect(AnyCableRs::Native.new(base.merge(broker: "memory"))).to be_a(AnyCableRs::Native)
    # The NATS broker keeps sessions only sealed: no key (no secret, no secret_key_base),
    # no start; with one, or keeping no sessions, it starts.
    nats = base.merge(broker: "nats", broadcast_adapter: "nats")
    expect { AnyCableRs::Native.new(nats) }.to raise_error(ArgumentError, /sealed .*ANYCABLE_SECRET or a secret_key_base/)
    expect(AnyCableRs::Native.new(nats.merge(sessions_key_hex: "ab" * 32))).to be_a(AnyCableRs::Native)
    expect(AnyCableRs::Native.new(nats.merge(sessions_ttl: 0.0))).to be_a(AnyCableRs::Native)
    expect { AnyCableRs::Native.new(nats.merge(sessions_key_hex: "ab" * 16)) }.to raise_error(ArgumentError, /32 bytes/)
    expect(AnyCableRs::Config.new(broker: "nats", broadcast_adapter: "nats", secret: "s").native_options[:sessions_key_hex])
      .to eq(OpenSSL::HMAC.hexdigest("SHA256", "s", "anycable-rs sessions"))
  end
end
