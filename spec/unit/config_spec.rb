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
