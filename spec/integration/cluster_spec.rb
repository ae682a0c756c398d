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
