# frozen_string_literal: true

require "spec_helper"
require "tmpdir"
require "anycable_rs"

RSpec.describe AnyCableRs::Config do
  def config_from(env = {}, yaml: nil, rails_env: "production")
    Dir.mktmpdir do |dir|
      path = File.join(dir, "anycable.yml")
      File.write(path, yaml) if yaml
      described_class.load(env: env, yaml_path: path, rails_env: rails_env)
    end
  end

  it "has AnyCable's defaults" do
    c = config_from
    expect([c.embedded, c.port, c.path, c.health_path, c.ping_interval]).to eq([false, nil, "/cable", "/health", 3.0])
  end

  it "reads ANYCABLE_* env with types" do
    c = config_from({"ANYCABLE_EMBEDDED" => "true", "ANYCABLE_PORT" => "8080", "ANYCABLE_PING_INTERVAL" => "1.5",
      "ANYCABLE_ALLOWED_ORIGINS" => "a.com, *.b.com", "ANYCABLE_RPC_POOL_SIZE" => "7"})
    expect([c.embedded, c.port, c.ping_interval, c.allowed_origins, c.rpc_pool_size])
      .to eq([true, 8080, 1.5, ["a.com", "*.b.com"], 7])
  end

  it "reads config/anycable.yml for the Rails env, env vars winning" do
    yaml = <<~YAML
      default: &default
        path: /ws
        port: 9000
      production:
        <<: *default
        health_path: /up
    YAML
    c = config_from({"ANYCABLE_PORT" => "9100"}, yaml: yaml)
    expect([c.path, c.health_path, c.port]).to eq(["/ws", "/up", 9100])
  end

  it "says which setting is wrong" do
    expect { config_from({"ANYCABLE_PORT" => "eighty"}) }.to raise_error(ArgumentError, /port must be an integer, got "eighty"/)
    expect { described_class.new(nope: 1) }.to raise_error(ArgumentError, /unknown anycable-rs settings: nope/)
  end
end

RSpec.describe AnyCableRs::Config, "Fly.io presets" do
  fly = {"FLY_APP_NAME" => "my-app", "FLY_REGION" => "ams", "FLY_ALLOC_ID" => "a1b2"}

  def config_from(env)
    described_class.load(env: env, yaml_path: nil, rails_env: "production")
  end

  it "listens on all interfaces and uses region-local addresses of the WebSocket app" do
    c = config_from(fly.merge("ANYCABLE_FLY_WS_APP_NAME" => "my-cable"))
    expect([c.host, c.nats_servers, c.http_broadcast_url]).to eq(
      ["0.0.0.0", "nats://ams.my-cable.internal:4222", "http://ams.my-cable.internal:8080/_broadcast"]
    )
  end

  it "never overrides explicit settings" do
    c = config_from(fly.merge("ANYCABLE_FLY_WS_APP_NAME" => "my-cable", "ANYCABLE_HOST" => "127.0.0.1",
      "ANYCABLE_NATS_SERVERS" => "nats://elsewhere:4222"))
    expect([c.host, c.nats_servers]).to eq(["127.0.0.1", "nats://elsewhere:4222"])
  end

  it "is off with ANYCABLE_PRESETS=none, and off the platform" do
    expect(config_from(fly.merge("ANYCABLE_PRESETS" => "none")).host).to eq("127.0.0.1")
    expect(config_from(fly.reject { |k, _| k == "FLY_ALLOC_ID" }).host).to eq("127.0.0.1")
  end
end
