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
    # Which worker accepts a connection is up to the kernel: more until both serve some.
    clients += Array.new(2) { connected(name: "w") } until sessions_per_worker.values.all?(&:positive?) || clients.size >= 40
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

# local (in-process) broadcasting with workers: the workers relay broadcasts among
# themselves (Unix sockets in a directory of their master's), so a broadcast made in
# any worker reaches every worker's clients, once.
RSpec.describe "Puma cluster mode with in-process broadcasting (workers 2, preload_app)", type: :cable do
  before(:all) { @puma = PumaServer.new(workers: 2, preload: true).start }

  after(:all) do
    @puma&.stop
    @puma&.cleanup
  end

  def worker_pids
    File.read("/proc/#{puma.pid}/task/#{puma.pid}/children").split.map(&:to_i)
  end

  def relay_dir
    File.join(Dir.tmpdir, "anycable-rs-#{Process.uid}", "puma-#{puma.pid}")
  end

  def all_get_each_broadcast_once(clients, ids, rounds:)
    rounds.times do |i|
      # Each POST lands in whichever worker accepts it: over a few rounds, both.
      expect(puma.http(:post, "/broadcast", stream: "all", payload: %({"n":#{i}})).code).to eq("201")
      clients.zip(ids).each { |c, id| expect(message_for(c, id)).to eq("n" => i) }
    end
    expect(clients.map { |c| c.silent_for?(0.2) }).to all(be(true))
  end

  it "delivers a broadcast made in either worker to the clients of both, exactly once" do
    wait_for { Dir[File.join(relay_dir, "*.sock")].size == 2 }
    clients = Array.new(12) { connected(name: "w") }
    # Which worker accepts a connection is up to the kernel: more until both serve some.
    clients += Array.new(2) { connected(name: "w") } until sessions_per_worker.values.all?(&:positive?) || clients.size >= 40
    ids = clients.map { |c| subscribed(c, channel: "EchoChannel") }
    expect(sessions_per_worker.values).to all(be_positive)
    all_get_each_broadcast_once(clients, ids, rounds: 6)
    serving = worker_pids.count { |pid| Dir["/proc/#{pid}/task/*/comm"].any? { |f| File.read(f).include?("anycable-rs") } }
    expect(serving).to eq(2)
    expect(Dir[File.join(relay_dir, "*.sock")].map { |f| File.basename(f, ".sock").to_i }).to match_array(worker_pids)
  end

  it "keeps relaying after a worker dies and Puma forks another" do
    dead = worker_pids.first
    Process.kill("KILL", dead)
    wait_for(timeout: 30) { (pids = worker_pids).size == 2 && !pids.include?(dead) && Dir[File.join(relay_dir, "*.sock")].size >= 2 }
    clients = Array.new(8) { connected(name: "w") }
    ids = clients.map { |c| subscribed(c, channel: "EchoChannel") }
    all_get_each_broadcast_once(clients, ids, rounds: 4)
    # The dead worker's socket is gone: removed by a sibling that found its process gone.
    wait_for { !File.exist?(File.join(relay_dir, "#{dead}.sock")) }
  end
end

# The http adapter with workers: a POST /_broadcast reaches one worker, which relays it.
RSpec.describe "Puma cluster mode with the http adapter (workers 2)", type: :cable do
  before(:all) do
    @puma = PumaServer.new(workers: 2,
      env: {"ANYCABLE_BROADCAST_ADAPTER" => "http", "ANYCABLE_BROADCAST_KEY" => "k3y"}).start
  end

  after(:all) do
    @puma&.stop
    @puma&.cleanup
  end

  it "delivers every POST /_broadcast to the clients of both workers, exactly once" do
    relay = File.join(Dir.tmpdir, "anycable-rs-#{Process.uid}", "puma-#{puma.pid}")
    wait_for { Dir[File.join(relay, "*.sock")].size == 2 }
    clients = Array.new(12) { connected(name: "h") }
    ids = clients.map { |c| subscribed(c, channel: "EchoChannel") }
    expect(sessions_per_worker.values).to all(be_positive)
    6.times do |i|
      res = post_json("/_broadcast", JSON.generate(stream: "all", data: %({"n":#{i}})), auth: "Bearer k3y")
      expect(res.code).to eq("201"), res.body
      clients.zip(ids).each { |c, id| expect(message_for(c, id)).to eq("n" => i) }
    end
    expect(clients.map { |c| c.silent_for?(0.2) }).to all(be(true))
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
