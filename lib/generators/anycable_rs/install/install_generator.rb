# frozen_string_literal: true

require "rails/generators"
require "anycable_rs/config"

module AnyCableRs
  module Generators
    # `rails g anycable_rs:install`: writes config/anycable.yml (every setting, commented
    # out, with its default), adds to fly.toml's [env] what it can, and prints the steps
    # left. The file's text is built here rather than from a template file, so the gem
    # ships it with its Ruby files and it lists exactly the settings Config knows.
    class InstallGenerator < ::Rails::Generators::Base
      namespace "anycable_rs:install"
      desc "Configure anycable-rs: config/anycable.yml, fly.toml [env], next steps."

      class_option :fly, type: :boolean, default: true, desc: "Add ANYCABLE_* lines to fly.toml's [env] (when fly.toml exists)"

      # [setting, example value for a commented line (nil: the default), what it does]
      SETTINGS = [
        ["Serving", nil, nil],
        [:embedded, nil, "Serve Action Cable's mount path (/cable) from the embedded server, in this process. Off: plain Action Cable."],
        [:port, 8080, "Also listen on a port of the server's own (no Rack middleware before the socket). Unset: only the app's port."],
        [:host, nil, "Interface of that port (the Fly.io preset listens on 0.0.0.0)."],
        [:path, nil, "WebSocket path on that port."],
        [:health_path, nil, "Health check on that port: 200, or 503 while the broadcast pub/sub is down."],
        [:allowed_origins, "example.com,*.example.com", "Origins (host patterns) allowed to connect. Unset: Rails' config.action_cable.allowed_request_origins decide."],
        [:rpc_pool_size, 5, "Ruby threads that run connection and channel code. Unset: Puma's max threads (else RAILS_MAX_THREADS, else 5)."],
        [:worker_threads, nil, "tokio threads of the embedded server."],
        [:queue_size, nil, "Calls into Ruby (connects, commands) queued for the Ruby threads at once; more wait, without blocking the server, for room."],
        [:max_callback_jobs, nil, "Broadcasts queued for stream_from blocks and coders; past it they are dropped, counted and logged."],
        ["Clients", nil, nil],
        [:ping_interval, nil, "Seconds between pings to clients."],
        [:pong_timeout, 6, "Seconds an extended-protocol (actioncable-v1-ext-json) client may stay silent after a ping interval before it is disconnected as no_pong. Unset or 0: off."],
        [:max_message_size, nil, "Bytes; bigger client messages are dropped (past 1 MiB the socket is closed, 1009)."],
        [:write_timeout, nil, "Seconds a write to a client may take before it is disconnected as too_slow (AnyCable-Go: ws_write_timeout)."],
        [:max_pending_bytes, nil, "Bytes queued for a client before it is disconnected as too_slow (AnyCable-Go: ws_max_pending_size)."],
        [:max_subscriptions, nil, "Subscriptions one connection may hold (the app's channels and $pubsub/Turbo streams); more get reject_subscription. 0: no limit."],
        [:max_identifier_size, nil, "Bytes of the longest channel identifier a client command may carry; a longer one is refused (a subscribe gets reject_subscription)."],
        [:whispers_per_second, nil, "Whispers one connection may send each second; more are dropped, with a log line. 0: no limit."],
        [:shutdown_timeout, nil, "Seconds to wait at shutdown; clients get server_restart and reconnect."],
        [:log_level, nil, "The Rust side's stderr log: error, warn, info, debug."],
        [:retain_env, nil, "Keep each connection's whole Rack env after connect (apps that read env keys set by middleware from channels)."],
        [:disable_disconnect, nil, "Run no unsubscribed/disconnect callbacks when a connection ends (AnyCable's)."],
        [:max_conn, 10_000, "Connections open at once in this process; more get 503 before the upgrade. Unset or 0: no limit."],
        [:max_conn_age, 3600, "Seconds after which a connection (plus up to 10% jitter) is told server_restart, so clients spread over new machines. Unset or 0: never."],
        ["JWT identification", nil, nil],
        [:jwt_secret, "a-long-random-string", "Key of AnyCable JWTs (AnyCableRs::JWT.encode); JWT identification is on when this or secret is set."],
        [:jwt_param, nil, "Query parameter of the token (its header: X-<param>)."],
        [:enforce_jwt, nil, "Refuse connections without a token."],
        [:jwt_ttl, nil, "Seconds a token made without expires_at lives."],
        ["Streams without Ruby", nil, nil],
        [:streams_secret, "a-long-random-string", "Key of $pubsub signed stream names (AnyCableRs::Streams.signed). Unset: secret."],
        [:public_streams, nil, "Allow $pubsub subscriptions with a plain stream_name."],
        [:streams_whisper, nil, "Allow whisper on signed $pubsub streams (public ones always do)."],
        [:streams_presence, nil, "Allow presence on signed $pubsub streams (public ones always do; broker memory). Unset: as streams_whisper."],
        [:turbo_streams, nil, "Serve Turbo::StreamsChannel subscriptions in Rust (signed names checked there)."],
        [:turbo_streams_secret, nil, "Key of Turbo's signed stream names. Unset: turbo-rails' own key when loaded, else streams_secret."],
        ["Server-Sent Events", nil, nil],
        [:sse, true, "AnyCable's Server-Sent Events: GET <sse_path>?channel=... (or stream, signed_stream, turbo_signed_stream_name) streams to an EventSource, curl or Turbo's <turbo-stream-source>; POST takes subscribe commands in the body. On the app's port and the own port, identified as a WebSocket is (cookies, JWT)."],
        [:sse_path, nil, "Where the events are served."],
        ["Long polling", nil, nil],
        [:poll, true, "AnyCable Pro's long polling: POST <poll_path>, the protocol of the @anycable/long-polling JS transport (as the transport, or a fallback when WebSockets cannot open). On the app's port and the own port, identified as a WebSocket is. A session lives in one process: behind several machines (or Puma workers), route a client's polls to the same one (sticky sessions)."],
        [:poll_path, nil, "Where polls are taken."],
        [:poll_interval, nil, "Seconds a poll with nothing to send is held (then 204)."],
        [:poll_flush_interval, nil, "Milliseconds what is to be sent is gathered before a held poll is answered."],
        [:poll_keepalive_timeout, nil, "Seconds a session outlives its last request (then the app's disconnect runs)."],
        [:poll_max_request_size, nil, "Bytes of the largest poll body (413 past it)."],
        ["Durable Streams reads", nil, nil],
        [:ds, true, "Durable Streams reads (AnyCable's /ds): GET <ds_path>/<stream>?offset=...&signed=... reads a stream's history from an offset, at once, as a long-poll (live=long-poll) or as SSE (live=sse), for @durable-streams/client. Needs a broker. The signed name authorizes the read, and the reader is identified as a WebSocket is (cookies, JWT)."],
        [:ds_path, nil, "Where streams are read (below it)."],
        [:ds_skip_auth, nil, "Do not identify readers (no connect, no JWT): the signed name (or a public stream) is all a read needs."],
        [:ds_poll_interval, nil, "Seconds a long-poll with nothing new is held (then 204)."],
        [:ds_sse_ttl, nil, "Seconds an SSE read lasts (the client reads on from its offset)."],
        ["Reliable streams", nil, nil],
        [:broker, "memory", "memory: broadcasts get offsets and the last ones are kept per stream for the history command (each server process keeps its own; a client that reconnects to another Puma worker or machine gets reject_history). nats: kept in NATS JetStream, shared by every node (needs broadcast_adapter nats). none: neither."],
        [:broker_replicas, 3, "broker nats: copies of the history stream and the sessions bucket, each on another JetStream server (1 to 5; each machine stores its copy). auto: 3 once the cluster has 3 servers, else 1."],
        [:history_limit, nil, "Messages kept per stream (with a broker)."],
        [:history_ttl, nil, "Seconds a message is kept (with a broker)."],
        [:history_max_bytes, nil, "Bytes the history may hold in all (memory: per process; nats: the JetStream stream); past that the oldest messages go first."],
        [:presence_ttl, nil, "Seconds a presence record outlives its closed socket (broker memory)."],
        [:sessions_ttl, nil, "Seconds a closed extended-protocol session can be restored by its sid, without connect (with a broker). 0: off."],
        [:sessions_max_bytes, nil, "Bytes the sessions kept for a restore may hold in all (memory: per process; nats: the KV bucket); past that the oldest go first (nats: new ones are not kept until old ones expire)."],
        ["Metrics", nil, nil],
        [:metrics_http, "/metrics", "Prometheus metrics (AnyCable's names) at this path: on the own port, and on the app's port when there is no own port."],
        [:metrics_on_puma_port, nil, "Serve the metrics on the app's port too, beside the own port."],
        [:metrics_tags, "region:ams", "Labels on every sample, k:v,k2:v2."],
        [:metrics_token, "a-long-random-string", "The metrics answer only Authorization: Bearer <token> (401 otherwise), on either port. Unset: anyone who reaches them. Prefer the env var (fly secrets set)."],
        ["Broadcasting", nil, nil],
        [:broadcast_adapter, "nats", "How broadcasts reach every server process: local (this process only), redis, nats, or http (processes that serve no sockets POST to http_broadcast_url). Unset: what config/cable.yml says (redis: its url and channel_prefix; async/test: local); other cable.yml adapters need this set. Puma workers on one machine relay local/http broadcasts among themselves; several machines need redis or nats."],
        [:redis_url, nil, "Redis for the redis adapter. Unset: config/cable.yml's url, else REDIS_URL."],
        [:redis_channel, nil, "Redis pub/sub channel. Unset: \"<cable.yml channel_prefix>:__anycable__\" when cable.yml sets a prefix."],
        [:nats_servers, nil, "NATS servers for the nats adapter (comma-separated)."],
        [:nats_channel, nil, "NATS subject."],
        [:nats_nkey_seed, nil, "An nkey user seed (SU...) to log in to NATS with, instead of credentials in the URL. Prefer the env var (fly secrets set)."],
        [:nats_credentials, nil, "The path of a NATS credentials file (.creds: user JWT and seed) for a NATS on JWT auth (operator mode, Synadia Cloud)."],
        [:http_broadcast_url, nil, "Where processes that serve no sockets POST broadcasts with the http adapter."],
        [:broadcast_path, nil, "AnyCable's HTTP broadcast endpoint, on the app's port only when a key is set (AnyCable-Go: http_broadcast_path)."],
        [:secret, "a-long-random-string", "Base secret; the broadcast key defaults to hex HMAC-SHA256(secret, \"broadcast-cable\"). Prefer the env var (fly secrets set)."],
        [:broadcast_key, nil, "Bearer key POST /_broadcast requires. Without it (or a secret) the endpoint is not served, on either port."],
        ["Embedded NATS", nil, nil],
        [:embed_nats, nil, "Run a nats-server (Debian's nats-server package) on this machine, one per machine, clustered with the app's other machines; broadcasts then go through it."],
        [:enats_addr, nil, "The embedded nats-server's client URL."],
        [:enats_cluster, "nats://0.0.0.0:5222", "Its cluster (route) listen URL. Unset: no cluster (Fly.io preset: nats://0.0.0.0:5222)."],
        [:enats_cluster_routes, "nats://other-host:5222", "Route seeds, comma-separated (Fly.io preset: the app's machines in the region by internal DNS)."],
        [:enats_store_dir, "/data/nats", "With broker nats: the embedded nats-server's JetStream files. Unset: a private directory under $TMPDIR (lost with the machine)."],
        [:nats_server_bin, "/usr/local/bin/nats-server", "The nats-server binary. Unset: nats-server on PATH."],
        ["Platform", nil, nil],
        [:presets, "none", "none: no platform presets (Fly.io: listen on 0.0.0.0, region-local addresses)."],
        [:fly_ws_app_name, "my-cable", "Fly.io: the app that runs the WebSocket servers (and NATS), for region-local NATS and HTTP broadcast addresses."]
      ].freeze

      def create_config
        create_file "config/anycable.yml", self.class.config_yaml
      end

      def configure_fly
        return unless options[:fly]

        path = File.join(destination_root, "fly.toml")
        return unless File.exist?(path)

        lines = {"ANYCABLE_EMBEDDED" => '"true"'}
        toml = File.read(path)
        missing = lines.reject { |key, _| toml.match?(/^\s*#{key}\s*=/) }
        if missing.empty?
          say_status :identical, "fly.toml [env]", :blue
          return
        end

        added = missing.map { |key, value| "  #{key} = #{value}\n" }.join
        if toml.match?(/^\[env\]\s*$/)
          inject_into_file "fly.toml", added, after: /^\[env\]\s*\n/
        else
          append_to_file "fly.toml", "#{"\n" unless toml.end_with?("\n\n")}[env]\n#{added}"
        end
      end

      def show_next_steps
        say "\n#{self.class.next_steps(destination_root)}"
      end

      def self.config_yaml
        defaults = AnyCableRs::Config::DEFAULTS
        body = SETTINGS.map do |key, example, text|
          next "\n  # --- #{key} ---\n" if key.is_a?(String)

          default = defaults.fetch(key)
          line = if example.nil?
            "#{key}: #{default}"
          else
            "#{key}: #{example}  # #{default.nil? ? "unset" : default} by default"
          end
          wrap(text).map { |l| "  # #{l}\n" }.join + "  # #{line}\n"
        end.join
        <<~YAML
          # anycable-rs settings: an env var ANYCABLE_<KEY> wins over this file, and this file
          # over the defaults. The section for the current Rails env is read. Every setting is
          # listed below, commented out, with its default; uncomment to change one (under
          # `default` for every env, or in one env's section).
          default: &default
          #{body.chomp}

          development:
            <<: *default

          test:
            <<: *default

          production:
            <<: *default
        YAML
      end

      def self.wrap(text, width = 84)
        text.split.each_with_object([+""]) do |word, lines|
          lines << +"" if !lines.last.empty? && lines.last.size + word.size + 1 > width
          lines.last << " " unless lines.last.empty?
          lines.last << word
        end
      end

      def self.next_steps(root)
        cable = AnyCableRs::Config.from_cable_yaml(File.join(root, "config", "cable.yml"), "production")
        adapter = cable["adapter"].to_s
        broadcasting =
          case adapter
          when "redis"
            "Broadcasts go through Redis, as config/cable.yml says for production (its url and channel_prefix)."
          when "async", "inline", "test", ""
            "config/cable.yml says #{adapter.empty? ? "nothing" : adapter} for production: broadcasts stay on this machine " \
              "(Puma workers relay them among themselves). With several machines, or to broadcast from consoles and " \
              "job runners, set ANYCABLE_BROADCAST_ADAPTER=nats (ANYCABLE_NATS_SERVERS) or redis (ANYCABLE_REDIS_URL) for every process."
          else
            "config/cable.yml says #{adapter} for production, which anycable-rs cannot broadcast through: " \
              "set ANYCABLE_BROADCAST_ADAPTER (redis, nats, http or local) or the server will not boot."
          end
        <<~TEXT
          anycable-rs is installed. Next:
            1. Turn it on where it should serve /cable: ANYCABLE_EMBEDDED=true (fly.toml [env], if you have one, has it now).
            2. #{broadcasting}
            3. To take AnyCable HTTP broadcasts (POST /_broadcast) on the app's port, set a key:
               fly secrets set ANYCABLE_SECRET=$(openssl rand -hex 32)   (or ANYCABLE_BROADCAST_KEY)
            4. On Fly.io, let a machine hold many sockets: [http_service.concurrency] type = "connections",
               hard_limit = 10000, soft_limit = 10000.
          Settings: config/anycable.yml (all listed there, with defaults).
        TEXT
      end
    end
  end
end
