# frozen_string_literal: true

require "yaml"
require "erb"

module AnyCableRs
  # The one place that reads settings: env `ANYCABLE_<KEY>` over `config/anycable.yml`
  # (its section for the current Rails env) over defaults. Names follow AnyCable's
  # where a feature matches.
  class Config
    DEFAULTS = {
      embedded: false,
      host: "127.0.0.1",
      # The server's own port; unset means only Puma's port (via Rack hijack).
      port: nil,
      path: "/cable",
      health_path: "/health",
      # Host patterns (`example.com`, `*.example.com`); unset means Rails'
      # `config.action_cable.allowed_request_origins` decides, as in Action Cable.
      allowed_origins: nil,
      ping_interval: 3.0,
      # Ruby threads that run connection and channel code; default: Puma's threads.
      rpc_pool_size: nil,
      # tokio worker threads.
      worker_threads: 2,
      max_message_size: 65_536,
      write_timeout: 2.0,
      max_pending_bytes: 1_048_576,
      queue_size: 1024,
      shutdown_timeout: 5.0,
      log_level: "info",
      # How broadcasts travel: "local" (this process's server only), "nats" (every
      # server process subscribes; any process publishes), or "http" (processes that
      # serve no sockets POST to http_broadcast_url).
      broadcast_adapter: "local",
      nats_servers: "nats://localhost:4222",
      nats_channel: "__anycable__",
      # ANYCABLE_REDIS_URL, else REDIS_URL.
      redis_url: "redis://localhost:6379",
      redis_channel: "__anycable__",
      # AnyCable's: the broadcast key defaults to HMAC-SHA256(secret, "broadcast-cable").
      secret: nil,
      broadcast_key: nil,
      http_broadcast_url: "http://localhost:8080/_broadcast",
      broadcast_path: "/_broadcast",
      # "none" turns presets (Fly.io) off.
      presets: nil,
      # Fly.io: the name of the app that runs the WebSocket servers (and NATS), for
      # region-local addresses.
      fly_ws_app_name: nil
    }.freeze

    attr_reader(*DEFAULTS.keys)

    def self.load(env: ENV, yaml_path: default_yaml_path, rails_env: default_rails_env)
      explicit = {}
      explicit.merge!(from_yaml(yaml_path, rails_env)) if yaml_path && File.exist?(yaml_path)
      explicit[:redis_url] = env["REDIS_URL"] if env["REDIS_URL"] && !env["REDIS_URL"].empty?
      DEFAULTS.each_key do |key|
        raw = env["ANYCABLE_#{key.to_s.upcase}"]
        explicit[key] = raw unless raw.nil? || raw.empty?
      end
      new(DEFAULTS.merge(presets(env, explicit)).merge(explicit))
    end

    # Defaults for the platform we run on; explicit settings always win (they are merged
    # over these). Fly.io: listen on all interfaces, and with ANYCABLE_FLY_WS_APP_NAME
    # use that app's region-local NATS and HTTP broadcast addresses.
    def self.presets(env, explicit)
      return {} if explicit[:presets].to_s.strip.downcase == "none"
      return {} unless %w[FLY_APP_NAME FLY_REGION FLY_ALLOC_ID].all? { |k| env[k].to_s != "" }

      preset = {host: "0.0.0.0"}
      ws_app = explicit[:fly_ws_app_name]
      if ws_app
        internal = "#{env["FLY_REGION"]}.#{ws_app}.internal"
        preset[:nats_servers] = "nats://#{internal}:4222"
        preset[:http_broadcast_url] = "http://#{internal}:8080/_broadcast"
      end
      preset
    end

    def self.from_yaml(path, rails_env)
      data = YAML.safe_load(ERB.new(File.read(path)).result, aliases: true) || {}
      section = data[rails_env.to_s] || data["default"] || {}
      section.each_with_object({}) do |(k, v), out|
        out[k.to_sym] = v if DEFAULTS.key?(k.to_sym)
      end
    end

    def self.default_yaml_path
      root = defined?(::Rails) && ::Rails.respond_to?(:root) && ::Rails.root
      File.join((root || Dir.pwd).to_s, "config", "anycable.yml")
    end

    def self.default_rails_env
      (defined?(::Rails) && ::Rails.respond_to?(:env) && ::Rails.env) ||
        ENV["RAILS_ENV"] || ENV["RACK_ENV"] || "development"
    end

    def initialize(values = {})
      unknown = values.keys - DEFAULTS.keys
      raise ArgumentError, "unknown anycable-rs settings: #{unknown.join(", ")}" if unknown.any?

      DEFAULTS.merge(values).each do |key, value|
        instance_variable_set(:"@#{key}", coerce(key, value))
      end
      @rpc_pool_size ||= default_pool_size
    end

    # What AnyCableRs::Native.new takes.
    def native_options
      {
        path: path, health_path: health_path, ping_interval: ping_interval.to_f,
        max_message_size: max_message_size, write_timeout: write_timeout.to_f,
        max_pending_bytes: max_pending_bytes, allowed_origins: allowed_origins,
        queue_size: queue_size, worker_threads: worker_threads, log_level: log_level,
        broadcast_path: broadcast_path, broadcast_key: effective_broadcast_key,
        broadcast_adapter: broadcast_adapter, nats_servers: nats_servers, nats_channel: nats_channel,
        redis_url: redis_url, redis_channel: redis_channel
      }
    end

    # The key broadcast requests must carry; nil when neither a key nor a secret is set.
    def effective_broadcast_key
      return broadcast_key if broadcast_key
      return nil unless secret

      require "openssl"
      OpenSSL::HMAC.hexdigest("SHA256", secret, "broadcast-cable")
    end

    private

    def coerce(key, value)
      return value if value.nil?

      case key
      when :embedded
        value.is_a?(String) ? %w[1 true yes on].include?(value.strip.downcase) : !!value
      when :port, :rpc_pool_size, :worker_threads, :max_message_size, :max_pending_bytes, :queue_size
        integer(key, value)
      when :ping_interval, :write_timeout, :shutdown_timeout
        number(key, value)
      when :broadcast_adapter
        adapter = value.to_s.strip.downcase
        adapter = "local" if adapter.empty? || adapter == "in_process"
        unless %w[local http nats redis].include?(adapter)
          raise ArgumentError, "anycable-rs: broadcast_adapter must be local, nats, redis or http, got #{value.inspect}"
        end

        adapter
      when :allowed_origins
        list = value.is_a?(Array) ? value : value.to_s.split(",")
        list = list.map { |o| o.to_s.strip }.reject(&:empty?)
        list.empty? ? nil : list
      else
        value.to_s
      end
    end

    def number(key, value)
      Float(value)
    rescue ArgumentError, TypeError
      raise ArgumentError, "anycable-rs: #{key} must be a number, got #{value.inspect}"
    end

    def integer(key, value)
      Integer(value.is_a?(String) ? value.strip : value)
    rescue ArgumentError, TypeError
      raise ArgumentError, "anycable-rs: #{key} must be an integer, got #{value.inspect}"
    end

    def default_pool_size
      if defined?(::Puma) && ::Puma.respond_to?(:cli_config) && ::Puma.cli_config
        threads = ::Puma.cli_config.options[:max_threads]
        return threads.to_i if threads.to_i.positive?
      end
      (ENV["RAILS_MAX_THREADS"] || 5).to_i.clamp(1, 256)
    end
  end
end
