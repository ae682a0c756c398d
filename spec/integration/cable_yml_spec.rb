# frozen_string_literal: true

require "spec_helper"
require "open3"
require "tmpdir"

# With no ANYCABLE_BROADCAST_ADAPTER, broadcasts travel the way the app's own
# config/cable.yml says: here Redis, with its url and channel_prefix.
RSpec.describe "Broadcast adapter from config/cable.yml (real Puma, real redis-server)", type: :cable do
  before(:all) do
    @redis = RedisServer.new.start
    @cable_dir = Dir.mktmpdir("anycable-rs-cable-yml")
    @cable_yml = File.join(@cable_dir, "cable.yml")
    File.write(@cable_yml, <<~YAML)
      test:
        adapter: redis
        url: <%= "#{@redis.url}/1" %>
        channel_prefix: dummy_test
    YAML
    @puma = PumaServer.new(env: {"DUMMY_CABLE_YML" => @cable_yml}).start
  end

  after(:all) do
    @puma&.stop
    @puma&.cleanup
    @redis&.stop
    FileUtils.rm_rf(@cable_dir) if @cable_dir
  end

  after do |example|
    warn "--- puma log ---\n#{@puma.log}\nredis channels: #{redis_channels.inspect}" if example.exception && @puma
  end

  def redis_channels
    socket = TCPSocket.new("127.0.0.1", @redis.port)
    socket.write("*2\r\n$6\r\nPUBSUB\r\n$8\r\nCHANNELS\r\n")
    count = socket.gets[1..].to_i
    Array.new(count) { socket.gets && socket.gets.strip }
  ensure
    socket&.close
  end

  it "subscribes to the prefixed channel, and a broadcast from another process reaches the clients" do
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    wait_for { redis_channels.include?("dummy_test:__anycable__") }
    out, status = Open3.capture2e(
      {"RAILS_ENV" => "test", "ANYCABLE_EMBEDDED" => "true", "DUMMY_CABLE_YML" => @cable_yml,
       "DUMMY_DATABASE" => puma.env["DUMMY_DATABASE"], "DUMMY_LOG" => File::NULL},
      "ruby", "-I", File.expand_path("../../lib", __dir__), "-e", <<~RUBY, chdir: PumaServer::DUMMY
        require "./config/environment"
        config = AnyCableRs.config
        puts [config.broadcast_adapter, config.redis_channel].join(" ")
        ActionCable.server.broadcast("all", {"from" => "runner"})
      RUBY
    )
    expect(status).to be_success, out
    expect(out).to include("redis dummy_test:__anycable__")
    expect(message_for(c, id)).to eq("from" => "runner")
    expect(out).not_to include("reached no client")
  end
end
