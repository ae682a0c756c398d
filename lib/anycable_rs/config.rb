# frozen_string_literal: true

require "yaml"
require "erb"
require "anycable_rs/origin_policy"
require "anycable_rs/embedded_nats"

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
      # `config.action_cable.allowed_request_origins` decides, as in Action Cable
      # (see OriginPolicy: checked before the upgrade, on either port).
      allowed_origins: nil,
      ping_interval: 3.0,
      # AnyCable's: an extended-protocol (actioncable-v1-ext-json) client that sends
      # nothing (a pong, any command) for a ping interval plus this many seconds is
      # disconnected as no_pong. 0: off.
      pong_timeout: 0,
      # AnyCable's broker: "memory" gives every broadcast an offset in its stream and
      # keeps the last history_limit messages of each for history_ttl seconds, for the
      # history command (reliable streams), in each server process. "nats" keeps them
      # in NATS JetStream for every node (needs broadcast_adapter nats; nats-server
      # with JetStream, `-js`). "none": neither.
      broker: "none",
      # The NATS broker's copies of the history stream and the sessions bucket, each on
      # another JetStream server (1 to 5). "auto": three once the cluster has three
      # servers (grown as machines join), else one.
      broker_replicas: "auto",
      history_limit: 100,
      history_ttl: 300,
      # Bytes the history may hold in all (payloads plus ~100 bytes each); past that
      # the oldest messages of any stream go first, with a warning.
      history_max_bytes: 64 * 1024 * 1024,
      # With a broker, an extended-protocol session is kept this many seconds after its
      # socket closed: a client that comes back with its sid in time gets its
      # identifiers and subscriptions back without `connect` or `subscribed`. 0: off.
      sessions_ttl: 300,
      # What the closed sessions kept for a restore may cost together (the memory
      # broker's cache; the NATS broker's bucket); past it the oldest go first.
      sessions_max_bytes: 64 * 1024 * 1024,
      # With a broker, clients may join a subscription's presence set (AnyCable's
      # presence); a record outlives its closed socket this many seconds.
      presence_ttl: 15,
      # Ruby threads that run connection and channel code; default: Puma's threads.
      rpc_pool_size: nil,
      # tokio worker threads.
      worker_threads: 2,
      max_message_size: 65_536,
      # What one connection may hold: subscriptions (the app's and $pubsub/Turbo ones;
      # more are rejected, 0: no limit), the longest channel identifier in bytes (a
      # command with a longer one is refused), and whispers per second (more are
      # dropped with a log line; 0: no limit).
      max_subscriptions: 256,
      max_identifier_size: 4096,
      whispers_per_second: 30,
      write_timeout: 2.0,
      max_pending_bytes: 1_048_576,
      queue_size: 1024,
      # Broadcasts queued for the app's stream_from blocks and coders (one job per
      # block a broadcast reaches); past it they are dropped, counted and logged
      # (0: no limit).
      max_callback_jobs: 100_000,
      shutdown_timeout: 5.0,
      # AnyCable's JWT identification: on whenever a secret resolves (jwt_secret, else
      # secret); the token in X-JID, the anycable-token.<t> subprotocol or ?jid=.
      jwt_secret: nil,
      jwt_param: "jid",
      enforce_jwt: false,
      # Lifetime of tokens AnyCableRs::JWT.encode makes without expires_at (seconds).
      jwt_ttl: 3600,
      # AnyCable's signed/public streams ($pubsub) and Turbo Streams, served without
      # Ruby. The streams secret falls back to `secret`.
      streams_secret: nil,
      public_streams: false,
      streams_whisper: false,
      # Presence on signed $pubsub streams (public ones always allow it), with a broker.
      # Unset: as streams_whisper (a join sends client-made JSON to every subscriber,
      # as a whisper does; AnyCable has it on by default).
      streams_presence: nil,
      turbo_streams: false,
      # Unset: turbo-rails' own key (Turbo.signed_stream_verifier_key) when it is
      # loaded, else the streams secret.
      turbo_streams_secret: nil,
      # AnyCable's: skip the disconnect/unsubscribed callbacks (apps that need none).
      disable_disconnect: false,
      # Keep each connection's whole Rack env (and the request, cookie jar and session
      # Action Cable memoizes from it) for the socket's life. Off: after `connect`, a
      # compact snapshot (request line, headers, client address) from which `env`,
      # `request`, `cookies` and `session` are rebuilt when a channel reads them.
      retain_env: false,
      # Connections served at once by this process; more are refused before the
      # upgrade (503). 0: no limit.
      max_conn: 0,
      # Seconds after which a connection is told server_restart (reconnect: true), with
      # up to 10% jitter, so clients spread over machines added since. 0: never.
      max_conn_age: 0,
      # Prometheus text format at this path (e.g. "/metrics"), AnyCable's metric names.
      metrics_http: nil,
      # Serve the metrics on Puma's port too (the own port serves them when set).
      metrics_on_puma_port: false,
      # Labels on every sample: "k:v,k2:v2".
      metrics_tags: nil,
      # The metrics answer only `Authorization: Bearer <token>` (401 otherwise), on
      # either port. Unset: anyone who reaches them.
      metrics_token: nil,
      # Embedded NATS (AnyCable's names): run a nats-server child on this machine.
      embed_nats: false,
      enats_addr: "nats://127.0.0.1:4222",
      enats_cluster: nil,
      enats_cluster_routes: nil,
      # With ANYCABLE_BROKER=nats the embedded nats-server runs JetStream and keeps its
      # files here (default: a directory of this user's under $TMPDIR, per port). On
      # Fly.io, a volume keeps the history across machine replacements.
      enats_store_dir: nil,
      nats_server_bin: nil,
      log_level: "info",
      # How broadcasts travel: "local" (this process's server only), "nats" or "redis"
      # (every server process subscribes; any process publishes), or "http" (processes
      # that serve no sockets POST to http_broadcast_url). Unset: what config/cable.yml
      # implies (see cable_defaults), else local.
      broadcast_adapter: "local",
      nats_servers: "nats://localhost:4222",
      nats_channel: "__anycable__",
      # An nkey user seed (SU…) to log in to NATS with instead of URL credentials: the
      # server never learns a secret from us (it gets a signature of its nonce).
      nats_nkey_seed: nil,
      # The path of a NATS credentials file (a user JWT and its seed, as `nsc` writes
      # them) for a NATS in operator (decentralized JWT) mode, such as Synadia Cloud.
      nats_credentials: nil,
      # ANYCABLE_REDIS_URL, else config/cable.yml's url (redis adapter), else REDIS_URL.
      redis_url: "redis://localhost:6379",
      # Unset: "<channel_prefix>:__anycable__" when config/cable.yml sets a prefix.
      redis_channel: "__anycable__",
      # AnyCable's: the broadcast key defaults to HMAC-SHA256(secret, "broadcast-cable").
      secret: nil,
      broadcast_key: nil,
      http_broadcast_url: "http://localhost:8080/_broadcast",
      broadcast_path: "/_broadcast",
      # AnyCable's Server-Sent Events (GET/POST <sse_path>, on Puma's port and the own
      # port): the same channels and streams as the WebSocket, for clients that cannot
      # hold one (EventSource, curl, Turbo's <turbo-stream-source>).
      sse: false,
      sse_path: "/events",
      # AnyCable Pro's long polling (POST <poll_path>, on Puma's port and the own port),
      # the protocol of the @anycable/long-polling JS transport: a poll is held for
      # poll_interval seconds, what is to be sent gathered for poll_flush_interval
      # milliseconds, and a session outlives its last request by poll_keepalive_timeout.
      poll: false,
      poll_path: "/lp",
      poll_interval: 15,
      poll_flush_interval: 500,
      poll_keepalive_timeout: 5,
      poll_max_request_size: 65_536,
      # Durable Streams reads (GET/HEAD <ds_path>/<stream>, on Puma's port and the own
      # port; AnyCable's /ds): a stream's history from an offset, at once, held for
      # ds_poll_interval seconds (long-poll) or followed as SSE for ds_sse_ttl seconds.
      # Needs a broker. The stream's signed name (?signed= or X-Signed) authorizes a
      # read; with ds_skip_auth the reader is not identified (no JWT, no connect).
      ds: false,
      ds_path: "/ds",
      ds_skip_auth: false,
      ds_poll_interval: 10,
      ds_sse_ttl: 60,
      # "none" turns presets (Fly.io) off.
      presets: nil,
      # Fly.io: the name of the app that runs the WebSocket servers (and NATS), for
      # region-local addresses.
      fly_ws_app_name: nil
    }.freeze

    attr_reader(*DEFAULTS.keys)
    # SECRET_KEYS given empty, and so unset.
    attr_reader :blank_secrets

    # Keys and secrets: one given but empty (`secret: ""`, a quoted ERB variable that is
    # unset) is unset, and boot says so. Taken as a key it would be public: the HMAC of
    # "" is anyone's to compute, and an empty broadcast key matches a missing header.
    SECRET_KEYS = %i[secret broadcast_key jwt_secret streams_secret turbo_streams_secret metrics_token nats_nkey_seed].freeze

    # AnyCable-Go's names for the same settings (env `ANYCABLE_<ALIAS>`, or the alias as a
    # key in config/anycable.yml). Ours win when both are set.
    ALIASES = {
      write_timeout: %w[ws_write_timeout],
      max_pending_bytes: %w[ws_max_pending_size],
      broadcast_path: %w[http_broadcast_path]
    }.freeze

    # Action Cable adapters (config/cable.yml) whose broadcasts stay in one process.
    IN_PROCESS_CABLE_ADAPTERS = %w[async inline test].freeze

    def self.load(env: ENV, yaml_path: default_yaml_path, rails_env: default_rails_env,
      cable_yaml_path: default_cable_yaml_path)
      explicit = {}
      explicit.merge!(from_yaml(yaml_path, rails_env)) if yaml_path && File.exist?(yaml_path)
      DEFAULTS.each_key do |key|
        [key, *ALIASES[key]].reverse_each do |name|
          raw = env["ANYCABLE_#{name.to_s.upcase}"]
          explicit[key] = raw unless raw.nil? || raw.empty?
        end
      end
      explicit = embedded_nats_defaults(env, explicit).merge(explicit)
      implicit = {}
      implicit[:redis_url] = env["REDIS_URL"] if env["REDIS_URL"] && !env["REDIS_URL"].empty?
      cable = begin
        from_cable_yaml(cable_yaml_path, rails_env)
      rescue StandardError, SyntaxError => e
        # E.g. ERB that needs the Rails app, read by a plain Ruby publisher. Harmless
        # when the settings say everything cable.yml could have.
        adapter = explicit[:broadcast_adapter].to_s.strip.downcase
        unless !adapter.empty? && (adapter != "redis" || explicit.key?(:redis_channel))
          raise ArgumentError, "anycable-rs: could not read #{cable_yaml_path} (#{e.class}: #{e.message}), " \
            "which says how broadcasts travel. Set ANYCABLE_BROADCAST_ADAPTER (and, for redis, ANYCABLE_REDIS_CHANNEL)."
        end

        {}
      end
      implicit.merge!(cable_defaults(cable, explicit, cable_yaml_path, rails_env))
      unsupported = implicit.delete(:unsupported)
      config = new(DEFAULTS.merge(presets(env, explicit)).merge(implicit).merge(explicit))
      raise ArgumentError, unsupported if unsupported && config.embedded

      config
    end

    # What the app's Action Cable configuration (config/cable.yml, the section for the
    # Rails env) implies for settings not set explicitly, so that broadcasts travel the
    # way the app already configured them:
    # - redis: broadcast_adapter redis, redis_url from its `url`, and its
    #   `channel_prefix` (which Action Cable puts before every channel name to keep apps
    #   sharing one Redis apart) before the pub/sub channel: "<prefix>:__anycable__";
    # - async, inline, test (one process) or no cable.yml: local;
    # - anything else (postgresql, solid_cable, any_cable…): anycable-rs cannot carry
    #   broadcasts through it, so an embedded server refuses to boot until
    #   ANYCABLE_BROADCAST_ADAPTER says how (rather than losing them quietly).
    def self.cable_defaults(cable, explicit, path, rails_env)
      adapter = cable["adapter"].to_s.strip
      return {} if adapter.empty?

      out = {}
      if adapter == "redis"
        out[:broadcast_adapter] = "redis" unless explicit.key?(:broadcast_adapter)
        url = cable["url"].to_s
        out[:redis_url] = url unless url.empty? || explicit.key?(:redis_url)
        prefix = cable["channel_prefix"].to_s
        out[:redis_channel] = "#{prefix}:#{DEFAULTS[:redis_channel]}" unless prefix.empty? || explicit.key?(:redis_channel)
      elsif IN_PROCESS_CABLE_ADAPTERS.include?(adapter)
        out[:broadcast_adapter] = "local" unless explicit.key?(:broadcast_adapter)
      elsif !explicit.key?(:broadcast_adapter)
        out[:unsupported] = "anycable-rs: #{path} sets Action Cable's adapter to #{adapter.inspect} for #{rails_env}, " \
          "which anycable-rs cannot carry broadcasts through. Set ANYCABLE_BROADCAST_ADAPTER " \
          "(redis with ANYCABLE_REDIS_URL, nats with ANYCABLE_NATS_SERVERS, http, or local for a single process)."
      end
      out
    end

    # Action Cable's reading of config/cable.yml (Rails' config_for): ERB, then the
    # `shared` section under the one for the Rails env.
    def self.from_cable_yaml(path, rails_env)
      return {} unless path && File.exist?(path.to_s)

      data = YAML.safe_load(ERB.new(File.read(path.to_s)).result, aliases: true) || {}
      return {} unless data.is_a?(Hash)

      shared = data["shared"].is_a?(Hash) ? data["shared"] : {}
      section = data[rails_env.to_s].is_a?(Hash) ? data[rails_env.to_s] : {}
      shared.merge(section).transform_keys(&:to_s)
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
      # Embedded NATS (AnyCable's Fly preset): client and route ports on the machine's
      # private (6PN) address, FLY_PRIVATE_IP, so only the organisation's private network
      # reaches them (every interface on machines without it); routes to this app's
      # machines in the region (internal DNS).
      private_ip = env["FLY_PRIVATE_IP"].to_s.strip
      bind = private_ip.empty? ? "0.0.0.0" : (private_ip.include?(":") ? "[#{private_ip}]" : private_ip)
      cluster = explicit[:enats_cluster] || "nats://#{bind}:5222"
      cluster_port = (URI(cluster.to_s).port rescue nil) || 5222 # rubocop:disable Style/RescueModifier
      preset[:enats_addr] = "nats://#{bind}:4222"
      preset[:enats_cluster] = cluster
      preset[:enats_cluster_routes] = "nats://#{env["FLY_REGION"]}.#{env["FLY_APP_NAME"]}.internal:#{cluster_port}"
      preset
    end

    # ANYCABLE_EMBED_NATS: unless set otherwise, broadcasts go through NATS, and NATS
    # clients (this process's server, and publishers with no server of their own) use
    # the machine's embedded nats-server (EmbeddedNats). Settings given explicitly
    # win; these beat what config/cable.yml implies and the Fly.io presets.
    def self.embedded_nats_defaults(env, explicit)
      on = explicit[:embed_nats]
      return {} unless on == true || %w[1 true yes on].include?(on.to_s.strip.downcase)

      addr = explicit[:enats_addr] || presets(env, explicit)[:enats_addr] || DEFAULTS[:enats_addr]
      {broadcast_adapter: "nats", nats_servers: EmbeddedNats.client_url(addr),
       nats_nkey_seed: EmbeddedNats.nkey(explicit[:secret], addr).first}
    end

    def self.from_yaml(path, rails_env)
      data = YAML.safe_load(ERB.new(File.read(path)).result, aliases: true) || {}
      section = data[rails_env.to_s] || data["default"] || {}
      return {} unless section.is_a?(Hash)

      aliases = ALIASES.flat_map { |key, names| names.map { |name| [name, key] } }.to_h
      out = {}
      section.each do |k, v|
        key = aliases[k.to_s]
        out[key] = v if key && !section.key?(key.to_s)
      end
      section.each do |k, v|
        out[k.to_sym] = v if DEFAULTS.key?(k.to_sym)
      end
      out
    end

    def self.default_yaml_path
      root = defined?(::Rails) && ::Rails.respond_to?(:root) && ::Rails.root
      File.join((root || Dir.pwd).to_s, "config", "anycable.yml")
    end

    # Where Action Cable reads its config (the app's paths["config/cable"]).
    def self.default_cable_yaml_path
      app = defined?(::Rails) && ::Rails.respond_to?(:application) && ::Rails.application
      path = app && app.paths["config/cable"]&.first
      return path.to_s if path

      root = defined?(::Rails) && ::Rails.respond_to?(:root) && ::Rails.root
      File.join((root || Dir.pwd).to_s, "config", "cable.yml")
    end

    def self.default_rails_env
      (defined?(::Rails) && ::Rails.respond_to?(:env) && ::Rails.env) ||
        ENV["RAILS_ENV"] || ENV["RACK_ENV"] || "development"
    end

    def initialize(values = {})
      unknown = values.keys - DEFAULTS.keys
      raise ArgumentError, "unknown anycable-rs settings: #{unknown.join(", ")}" if unknown.any?

      # A setting given as nil (a blank in config/anycable.yml, e.g. an ERB variable
      # that is unset) has its default: this is the one place defaults live.
      DEFAULTS.merge(values.compact).each do |key, value|
        instance_variable_set(:"@#{key}", coerce(key, value))
      end
      @blank_secrets = SECRET_KEYS.select { |key| (v = public_send(key)).is_a?(String) && v.strip.empty? }
      @blank_secrets.each { |key| instance_variable_set(:"@#{key}", nil) }
      @rpc_pool_size ||= default_pool_size
      if ds && broker == "none"
        raise ArgumentError, "anycable-rs: ANYCABLE_DS reads streams from the broker's history and needs " \
          "ANYCABLE_BROKER=memory or nats"
      end
      if broker == "nats" && broadcast_adapter != "nats"
        raise ArgumentError, "anycable-rs: ANYCABLE_BROKER=nats keeps stream history in NATS JetStream and needs " \
          "ANYCABLE_BROADCAST_ADAPTER=nats (or ANYCABLE_EMBED_NATS=true); broadcast_adapter is #{broadcast_adapter.inspect}"
      end
    end

    # What AnyCableRs::Native.new takes.
    def native_options
      {
        path: path, health_path: health_path, ping_interval: ping_interval.to_f,
        max_message_size: max_message_size, write_timeout: write_timeout.to_f,
        max_pending_bytes: max_pending_bytes, origins: OriginPolicy.build(allowed_origins),
        queue_size: queue_size, max_callback_jobs: max_callback_jobs, worker_threads: worker_threads, log_level: log_level,
        broadcast_path: broadcast_path, broadcast_key: effective_broadcast_key,
        sse_path: sse ? sse_path : nil,
        poll_path: poll ? poll_path : nil, poll_interval: poll_interval.to_f, poll_flush_interval: poll_flush_interval,
        poll_keepalive_timeout: poll_keepalive_timeout.to_f, poll_max_request_size: poll_max_request_size,
        ds_path: ds ? ds_path : nil, ds_skip_auth: ds_skip_auth, ds_poll_interval: ds_poll_interval.to_f,
        ds_sse_ttl: ds_sse_ttl.to_f,
        broadcast_adapter: broadcast_adapter, nats_servers: nats_servers, nats_channel: nats_channel,
        nats_nkey_seed: nats_nkey_seed, nats_credentials: nats_credentials,
        redis_url: redis_url, redis_channel: redis_channel,
        metrics_path: metrics_http, metrics_tags: metrics_tags, metrics_token: metrics_token, max_conn: max_conn,
        max_conn_age: max_conn_age.to_f, rpc_pool_size: rpc_pool_size,
        streams: streams_options, jwt: jwt_options,
        pong_timeout: pong_timeout.to_f, broker: broker, broker_replicas: broker_replicas.to_s,
        history_limit: history_limit, history_ttl: history_ttl.to_f,
        history_max_bytes: history_max_bytes,
        sessions_ttl: sessions_ttl.to_f, presence_ttl: presence_ttl.to_f, sessions_max_bytes: sessions_max_bytes,
        max_subscriptions: max_subscriptions, max_identifier_size: max_identifier_size,
        whispers_per_second: whispers_per_second,
        sessions_key_hex: broker == "nats" ? sessions_key&.unpack1("H*") : nil
      }
    end

    SESSIONS_KEY_INFO = "anycable-rs sessions"

    # What the NATS broker seals the sessions it stores in NATS with (AES-256-GCM):
    # HMAC-SHA256 of ANYCABLE_SECRET, else of the app's secret_key_base (the same on
    # every machine of a deployment), so whoever reaches NATS can neither read a
    # session nor forge one. Nil without either (then the broker refuses to keep
    # sessions, and says what to set).
    def sessions_key
      base = secret || self.class.app_secret_key_base
      return nil if base.nil? || base.to_s.empty?

      require "openssl"
      OpenSSL::HMAC.digest("SHA256", base.to_s, SESSIONS_KEY_INFO)
    end

    def self.app_secret_key_base
      # (Rails without an application, say only rails/railtie loaded: nil, not false.)
      app = ::Rails.application if defined?(::Rails) && ::Rails.respond_to?(:application)
      app&.secret_key_base
    rescue ArgumentError # Rails: "Missing secret_key_base"
      nil
    end

    def effective_jwt_secret
      jwt_secret || secret
    end

    # What Native.new takes as `jwt:`; nil (JWT off) without a secret.
    def jwt_options
      key = effective_jwt_secret
      if key.to_s.empty?
        raise ArgumentError, "anycable-rs: enforce_jwt needs ANYCABLE_JWT_SECRET (or ANYCABLE_SECRET)" if enforce_jwt

        return nil
      end

      {secret_hex: key.to_s.unpack1("H*"), param: jwt_param, enforce: enforce_jwt}
    end

    def effective_streams_secret
      streams_secret || secret
    end

    # The key Turbo Streams' signed names are checked with: ANYCABLE_TURBO_STREAMS_SECRET,
    # else the one the app signs them with (turbo-rails' verifier key), else the streams
    # secret. Nil when turbo_streams is off.
    def turbo_streams_key
      return nil unless turbo_streams

      key = turbo_streams_secret
      if key.nil? && defined?(::Turbo) && ::Turbo.respond_to?(:signed_stream_verifier_key)
        key = ::Turbo.signed_stream_verifier_key
      end
      key ||= effective_streams_secret
      raise ArgumentError, "anycable-rs: ANYCABLE_TURBO_STREAMS needs a key: set ANYCABLE_TURBO_STREAMS_SECRET " \
        "(or ANYCABLE_STREAMS_SECRET / ANYCABLE_SECRET), or load turbo-rails" if key.nil? || key.to_s.empty?

      key.to_s
    end

    # What Native.new takes as `streams:` (keys as hex: they may be binary).
    def streams_options
      secret = effective_streams_secret
      turbo = turbo_streams_key
      {
        secret_hex: secret && secret.to_s.unpack1("H*"), public: public_streams, whisper: streams_whisper,
        presence: streams_presence.nil? ? streams_whisper : streams_presence,
        turbo_key_hex: turbo&.unpack1("H*")
      }
    end

    # Metrics on Puma's port: when asked, or when there is no own port to serve them.
    def metrics_on_puma_port?
      !metrics_http.nil? && (metrics_on_puma_port || port.nil?)
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
      when :embedded, :disable_disconnect, :retain_env, :metrics_on_puma_port, :embed_nats, :public_streams, :sse, :poll,
        :ds, :ds_skip_auth, :streams_whisper, :streams_presence, :turbo_streams, :enforce_jwt
        value.is_a?(String) ? %w[1 true yes on].include?(value.strip.downcase) : !!value
      when :port, :rpc_pool_size, :worker_threads, :max_message_size, :max_pending_bytes, :queue_size, :max_conn,
        :jwt_ttl, :history_limit, :history_max_bytes, :sessions_max_bytes, :max_subscriptions, :max_identifier_size,
        :whispers_per_second, :max_callback_jobs, :poll_flush_interval, :poll_max_request_size
        integer(key, value)
      when :ping_interval, :write_timeout, :shutdown_timeout, :max_conn_age, :pong_timeout, :history_ttl, :sessions_ttl,
        :presence_ttl, :poll_interval, :poll_keepalive_timeout, :ds_poll_interval, :ds_sse_ttl
        number(key, value)
      when :broker
        coerce_broker(value)
      when :broker_replicas
        replicas = value.to_s.strip.downcase
        return "auto" if replicas.empty? || replicas == "auto"
        unless replicas.match?(/\A[1-5]\z/)
          raise ArgumentError, "anycable-rs: broker_replicas must be auto or 1 to 5, got #{value.inspect}"
        end

        replicas.to_i
      when :sse_path, :poll_path, :ds_path
        path = value.to_s.strip.chomp("/")
        raise ArgumentError, "anycable-rs: #{key} must be a path such as /events, got #{value.inspect}" unless path.start_with?("/")

        path
      when :metrics_http
        path = value.to_s.strip
        return nil if path.empty?
        raise ArgumentError, "anycable-rs: metrics_http must be a path such as /metrics, got #{value.inspect}" unless path.start_with?("/")

        path
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

    # Refused, never ignored: a broker that is not there must not look as if it were.
    def coerce_broker(value)
      broker = value.to_s.strip.downcase
      broker = "none" if broker.empty?
      raise ArgumentError, "anycable-rs: broker must be none, memory or nats, got #{value.inspect}" unless %w[none memory nats].include?(broker)

      broker
    end

    def number(key, value)
      n = Float(value)
    rescue ArgumentError, TypeError
      raise ArgumentError, "anycable-rs: #{key} must be a number, got #{value.inspect}"
    else
      if n.negative? && %i[pong_timeout history_ttl sessions_ttl presence_ttl poll_interval poll_keepalive_timeout].include?(key)
        raise ArgumentError, "anycable-rs: #{key} must not be negative, got #{value.inspect}"
      end
      raise ArgumentError, "anycable-rs: #{key} must be positive, got #{value.inspect}" if !n.positive? && %i[ds_poll_interval ds_sse_ttl].include?(key)

      n
    end

    def integer(key, value)
      n = Integer(value.is_a?(String) ? value.strip : value)
    rescue ArgumentError, TypeError
      raise ArgumentError, "anycable-rs: #{key} must be an integer, got #{value.inspect}"
    else
      raise ArgumentError, "anycable-rs: #{key} must not be negative, got #{value.inspect}" if n.negative?
      raise ArgumentError, "anycable-rs: #{key} must be positive, got #{value.inspect}" if n.zero? && key == :sessions_max_bytes

      n
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
