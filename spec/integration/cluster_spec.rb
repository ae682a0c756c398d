# frozen_string_literal: true

require "spec_helper"

# Threads start after fork: each Puma worker runs its own server and the preloading
# master runs none; NATS carries every broadcast to every worker.
RSpec.describe "Puma cluster mode (workers 2, preload_app)", type: :cable do
  before(:all) do
    @nats = NatsServer.new.start
    @puma = PumaServer.new(workers: 2, preload: true,
      env: {"ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => @nats.url}).start
  end

  after(:all) do
    @puma&.stop
    @puma&.cleanup
    @nats&.stop
  end

  it "serves sockets from every worker and delivers each broadcast to every client exactly once" do
    clients = Array.new(12) { connected(name: "w") }
    ids = clients.map { |c| subscribed(c, channel: "EchoChannel") }
    clients.zip(ids).each do |c, id|
      c.perform(id, "echo", {"ok" => true})
      expect(message_for(c, id)).to eq("ok" => true, "action" => "echo")
    end
    sleep 0.3 # every worker's NATS subscription is up
    expect(puma.http(:post, "/broadcast", stream: "all", payload: '{"to":"all"}').code).to eq("201")
    clients.zip(ids).each { |c, id| expect(message_for(c, id)).to eq("to" => "all") }
    expect(clients.map { |c| c.silent_for?(0.2) }).to all(be(true))
    master_threads = Dir["/proc/#{puma.pid}/task/*/comm"].map { |f| File.read(f).strip }
    expect(master_threads.grep(/anycable-rs/)).to be_empty
    worker_pids = File.read("/proc/#{puma.pid}/task/#{puma.pid}/children").split.map(&:to_i)
    serving = worker_pids.count { |pid| Dir["/proc/#{pid}/task/*/comm"].any? { |f| File.read(f).include?("anycable-rs") } }
    expect(serving).to eq(2)
  end
end

RSpec.describe "Puma cluster mode with in-process broadcasting" do
  it "refuses to boot, saying what to configure" do
    server = PumaServer.new(workers: 2, preload: true)
    expect { server.start }.to raise_error(/ANYCABLE_BROADCAST_ADAPTER=nats/)
  ensure
    server&.stop
    server&.cleanup
  end
end

# ANYCABLE_PORT with workers: each worker listens on the same port (SO_REUSEPORT) and
# the kernel spreads connections over them (the second worker failed with "Address
# already in use" before).
RSpec.describe "Puma cluster mode with the server's own port", type: :cable do
  before(:all) do
    @nats = NatsServer.new.start
    @own_port = PumaServer.free_port
    @puma = PumaServer.new(workers: 2, preload: true,
      env: {"ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => @nats.url,
            "ANYCABLE_PORT" => @own_port.to_s}).start
  end

  after(:all) do
    @puma&.stop
    @puma&.cleanup
    @nats&.stop
  end

  # Established TCP connections on `port` whose socket `pid` holds.
  def established_on(pid, port)
    inodes = Dir["/proc/#{pid}/fd/*"].filter_map { |fd| File.readlink(fd)[/\Asocket:\[(\d+)\]\z/, 1] rescue nil } # rubocop:disable Style/RescueModifier
    File.readlines("/proc/net/tcp").drop(1).count do |line|
      cols = line.split
      cols[1].split(":").last.to_i(16) == port && cols[3] == "01" && inodes.include?(cols[9])
    end
  end

  it "accepts on every worker" do
    clients = Array.new(16) { connected(name: "own", port: @own_port) }
    ids = clients.map { |c| subscribed(c, channel: "EchoChannel") }
    clients.zip(ids).each do |c, id|
      c.perform(id, "echo", {"ok" => true})
      expect(message_for(c, id)).to include("ok" => true)
    end
    worker_pids = File.read("/proc/#{puma.pid}/task/#{puma.pid}/children").split.map(&:to_i)
    counts = worker_pids.map { |pid| established_on(pid, @own_port) }
    expect(counts.size).to eq(2)
    expect(counts.sum).to eq(16)
    expect(counts).to all(be_positive)
    expect(puma.log).not_to include("Address already in use")
  end
end
