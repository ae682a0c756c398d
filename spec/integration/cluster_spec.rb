# frozen_string_literal: true

require "spec_helper"

# Threads must start after fork: each Puma worker runs its own server, and the preloading
# master runs none. (Broadcasting across workers needs a pub/sub between them.)
RSpec.describe "Puma cluster mode (workers 2, preload_app)", type: :cable do
  with_puma(workers: 2, preload: true)

  it "serves sockets from the workers, started after fork" do
    clients = Array.new(8) { connected(name: "w") }
    clients.each do |c|
      id = subscribed(c, channel: "StateChannel", room: "cluster")
      c.perform(id, "increment")
      expect(message_for(c, id)).to include("count" => 1)
    end
    master_threads = Dir["/proc/#{puma.pid}/task/*/comm"].map { |f| File.read(f).strip }
    expect(master_threads.grep(/anycable-rs/)).to be_empty
    expect(puma.log).to include("anycable-rs: serving WebSockets").or(satisfy { puma.rails_log.include?("anycable-rs: serving") })
  end
end
