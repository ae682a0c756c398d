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

  it "takes a blank setting in config/anycable.yml as its default, and the native side takes the result" do
    c = config_from({}, yaml: "production:\n  redis_url: <%= ENV['NO_SUCH_VAR_X'] %>\n  path:\n  broker:\n  log_level:\n")
    expect([c.redis_url, c.path, c.broker, c.log_level]).to eq(["redis://localhost:6379", "/cable", "none", "info"])
    expect(AnyCableRs::Native.new(c.native_options)).to be_a(AnyCableRs::Native)
  end

  it "takes an empty key or secret as unset, and the native side agrees (an empty key would be public)" do
    c = config_from({}, yaml: "production:\n  secret: \"\"\n  broadcast_key: \" \"\n  streams_secret: \"\"\n")
    expect([c.secret, c.broadcast_key, c.streams_secret]).to eq([nil, nil, nil])
    expect(c.blank_secrets).to eq(%i[secret broadcast_key streams_secret])
    expect([c.effective_broadcast_key, c.effective_streams_secret, c.jwt_options]).to eq([nil, nil, nil])
    expect(AnyCableRs::Native.new(c.native_options).serves_broadcasts?).to be(false)
    # Past Ruby too: the extension takes an empty key or streams secret as none.
    native = AnyCableRs::Native.new(c.native_options.merge(broadcast_key: "", streams: c.streams_options.merge(secret_hex: "")))
    expect(native.serves_broadcasts?).to be(false)
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
    # Durable Streams reads are reads of the broker's history: none, no reads.
    expect { config_from({"ANYCABLE_DS" => "true"}) }.to raise_error(ArgumentError, /ANYCABLE_DS .* needs ANYCABLE_BROKER=memory or nats/)
    expect { config_from({"ANYCABLE_DS" => "true", "ANYCABLE_BROKER" => "memory", "ANYCABLE_DS_SSE_TTL" => "0"}) }
      .to raise_error(ArgumentError, /ds_sse_ttl must be positive/)
    expect(config_from({"ANYCABLE_DS" => "true", "ANYCABLE_BROKER" => "memory", "ANYCABLE_DS_PATH" => "/streams/"}).ds_path)
      .to eq("/streams")
  end

  it "refuses negative durations, and the native side refuses ones it cannot hold" do
    expect { config_from({"ANYCABLE_PONG_TIMEOUT" => "-1"}) }.to raise_error(ArgumentError, /pong_timeout must not be negative/)
    expect { config_from({"ANYCABLE_HISTORY_TTL" => "-5"}) }.to raise_error(ArgumentError, /history_ttl must not be negative/)
    options = described_class.new.native_options
    expect { AnyCableRs::Native.new(options.merge(pong_timeout: -1.0)) }
      .to raise_error(ArgumentError, /pong_timeout must be a number of seconds >= 0/)
    expect { AnyCableRs::Native.new(options.merge(broker: "memory", history_ttl: 1e300)) }
      .to raise_error(ArgumentError, /history_ttl too large/)
  end

  it "takes broker_replicas as auto or 1 to 5, and the native side agrees" do
    expect(config_from({}).native_options).to include(broker_replicas: "auto")
    expect(config_from({"ANYCABLE_BROKER_REPLICAS" => " 3 "}).native_options).to include(broker_replicas: "3")
    expect(config_from({}, yaml: "production:\n  broker_replicas: 1\n").broker_replicas).to eq(1)
    %w[0 6 three -1].each do |bad|
      expect { config_from({"ANYCABLE_BROKER_REPLICAS" => bad}) }
        .to raise_error(ArgumentError, /broker_replicas must be auto or 1 to 5, got "#{bad}"/)
    end
    options = described_class.new.native_options
    expect { AnyCableRs::Native.new(options.merge(broker_replicas: "7")) }
      .to raise_error(ArgumentError, /broker_replicas must be auto or 1 to 5, got "7"/)
    expect { AnyCableRs::Native.new(options.merge(broker_replicas: "3")) }.not_to raise_error
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

RSpec.describe AnyCableRs::Config, "AnyCable-Go's names" do
  def config_from(env, yaml: nil)
    Dir.mktmpdir do |dir|
      path = File.join(dir, "anycable.yml")
      File.write(path, yaml) if yaml
      described_class.load(env: env, yaml_path: path, rails_env: "production", cable_yaml_path: nil)
    end
  end

  it "accepts them as aliases, in env and in config/anycable.yml" do
    c = config_from({"ANYCABLE_WS_WRITE_TIMEOUT" => "7", "ANYCABLE_WS_MAX_PENDING_SIZE" => "4096",
      "ANYCABLE_HTTP_BROADCAST_PATH" => "/_bc"})
    expect([c.write_timeout, c.max_pending_bytes, c.broadcast_path]).to eq([7.0, 4096, "/_bc"])
    c = config_from({}, yaml: "production:\n  ws_write_timeout: 3\n  http_broadcast_path: /b\n")
    expect([c.write_timeout, c.broadcast_path]).to eq([3.0, "/b"])
  end

  it "lets ours win when both are set" do
    c = config_from({"ANYCABLE_WS_WRITE_TIMEOUT" => "7", "ANYCABLE_WRITE_TIMEOUT" => "1",
      "ANYCABLE_WS_MAX_PENDING_SIZE" => "4096", "ANYCABLE_MAX_PENDING_BYTES" => "8192",
      "ANYCABLE_HTTP_BROADCAST_PATH" => "/_bc", "ANYCABLE_BROADCAST_PATH" => "/ours"})
    expect([c.write_timeout, c.max_pending_bytes, c.broadcast_path]).to eq([1.0, 8192, "/ours"])
    c = config_from({}, yaml: "production:\n  ws_write_timeout: 3\n  write_timeout: 4\n")
    expect(c.write_timeout).to eq(4.0)
  end
end

RSpec.describe AnyCableRs::Config, "defaults from config/cable.yml" do
  def config_from(env = {}, cable: nil, anycable: nil, rails_env: "production")
    Dir.mktmpdir do |dir|
      cable_path = File.join(dir, "cable.yml")
      File.write(cable_path, cable) if cable
      yaml_path = File.join(dir, "anycable.yml")
      File.write(yaml_path, anycable) if anycable
      described_class.load(env: env, yaml_path: yaml_path, rails_env: rails_env, cable_yaml_path: cable_path)
    end
  end

  redis_yaml = <<~YAML
    development:
      adapter: async
    test:
      adapter: test
    production:
      adapter: redis
      url: <%= "redis://cable-redis:6380/1" %>
      channel_prefix: myapp_production
  YAML

  it "uses the app's Redis, its url, and its channel_prefix before the pub/sub channel" do
    c = config_from(cable: redis_yaml)
    expect([c.broadcast_adapter, c.redis_url, c.redis_channel])
      .to eq(["redis", "redis://cable-redis:6380/1", "myapp_production:__anycable__"])
  end

  it "reads the section for the Rails env, under `shared`" do
    cable = "shared:\n  url: redis://shared:6379\nproduction:\n  adapter: redis\n"
    c = config_from(cable: cable)
    expect([c.broadcast_adapter, c.redis_url, c.redis_channel]).to eq(["redis", "redis://shared:6379", "__anycable__"])
  end

  it "maps in-process adapters (async, test) to local" do
    expect(config_from(cable: redis_yaml, rails_env: "development").broadcast_adapter).to eq("local")
    expect(config_from(cable: redis_yaml, rails_env: "test").broadcast_adapter).to eq("local")
    expect(config_from.broadcast_adapter).to eq("local") # no cable.yml
  end

  it "lets explicit settings win" do
    c = config_from({"ANYCABLE_BROADCAST_ADAPTER" => "nats"}, cable: redis_yaml)
    expect(c.broadcast_adapter).to eq("nats")
    c = config_from({"ANYCABLE_REDIS_URL" => "redis://mine:1", "ANYCABLE_REDIS_CHANNEL" => "chan"}, cable: redis_yaml)
    expect([c.broadcast_adapter, c.redis_url, c.redis_channel]).to eq(["redis", "redis://mine:1", "chan"])
    c = config_from({}, cable: redis_yaml, anycable: "production:\n  broadcast_adapter: http\n")
    expect(c.broadcast_adapter).to eq("http")
    c = config_from({"ANYCABLE_BROADCAST_ADAPTER" => "local"}, cable: redis_yaml)
    expect(c.broadcast_adapter).to eq("local")
  end

  it "prefers cable.yml's url to a bare REDIS_URL, and uses REDIS_URL when cable.yml names none" do
    expect(config_from({"REDIS_URL" => "redis://env:1"}, cable: redis_yaml).redis_url).to eq("redis://cable-redis:6380/1")
    expect(config_from({"REDIS_URL" => "redis://env:1"}, cable: "production:\n  adapter: redis\n").redis_url).to eq("redis://env:1")
  end

  it "refuses to boot an embedded server on an adapter it cannot carry broadcasts through, naming the setting" do
    cable = "production:\n  adapter: postgresql\n"
    expect { config_from({"ANYCABLE_EMBEDDED" => "true"}, cable: cable) }
      .to raise_error(ArgumentError, /"postgresql".*ANYCABLE_BROADCAST_ADAPTER/)
    expect { config_from({"ANYCABLE_EMBEDDED" => "true"}, cable: "production:\n  adapter: solid_cable\n") }
      .to raise_error(ArgumentError, /ANYCABLE_BROADCAST_ADAPTER/)
    # Not embedded: plain Action Cable serves the app, nothing to refuse.
    expect(config_from({}, cable: cable).broadcast_adapter).to eq("local")
    c = config_from({"ANYCABLE_EMBEDDED" => "true", "ANYCABLE_BROADCAST_ADAPTER" => "nats"}, cable: cable)
    expect(c.broadcast_adapter).to eq("nats")
  end
end

RSpec.describe AnyCableRs::Config, "an unreadable config/cable.yml" do
  def config_from(env)
    Dir.mktmpdir do |dir|
      path = File.join(dir, "cable.yml")
      File.write(path, "production:\n  adapter: redis\n  url: <%= Rails.application.credentials.redis_url %>\n")
      described_class.load(env: env, yaml_path: nil, rails_env: "production", cable_yaml_path: path)
    end
  end

  it "is ignored when the settings say everything it could have" do
    expect(config_from({"ANYCABLE_BROADCAST_ADAPTER" => "http"}).broadcast_adapter).to eq("http")
    c = config_from({"ANYCABLE_BROADCAST_ADAPTER" => "redis", "ANYCABLE_REDIS_CHANNEL" => "app:__anycable__"})
    expect([c.broadcast_adapter, c.redis_channel]).to eq(["redis", "app:__anycable__"])
  end

  it "is an error otherwise, naming the file and the setting" do
    expect { config_from({}) }.to raise_error(ArgumentError, /could not read .*cable\.yml.*ANYCABLE_BROADCAST_ADAPTER/)
    expect { config_from({"ANYCABLE_BROADCAST_ADAPTER" => "redis"}) }.to raise_error(ArgumentError, /ANYCABLE_REDIS_CHANNEL/)
  end
end
