# frozen_string_literal: true

require "anycable_rs/version"
require "anycable_rs/config"
require "anycable_rs/embedded_nats"

# anycable-rs: an AnyCable-compatible WebSocket server inside the Rails process.
#
# The server itself is Rust (AnyCableRs::Native); this module decides per process
# whether and when it runs, and connects it to Action Cable.
module AnyCableRs
  # Where public `$pubsub` names live (anycable_core's auth::streams::PUBLIC_STREAM_PREFIX).
  PUBLIC_STREAM_PREFIX = "$public:"

  class Error < StandardError; end

  class << self
    def config
      @config ||= Config.load
    end

    attr_writer :config

    def embedded?
      config.embedded
    end

    def logger
      @logger ||= if defined?(::Rails) && ::Rails.respond_to?(:logger) && ::Rails.logger
        ::Rails.logger
      else
        require "logger"
        ::Logger.new($stderr, progname: "anycable-rs")
      end
    end

    attr_writer :logger

    # The server of this process. Created on first use, and created anew in a forked
    # child: threads do not survive fork, so a child never uses its parent's.
    def runtime
      rt = @runtime
      return rt if rt && rt.pid == Process.pid

      runtime_lock.synchronize do
        rt = @runtime
        return rt if rt && rt.pid == Process.pid

        rt&.abandon!
        @runtime = Runtime.new(config)
      end
    end

    def runtime?
      !@runtime.nil? && @runtime.pid == Process.pid
    end

    def shutdown
      @runtime.shutdown if runtime?
    end

    # The embedded server's load in this process, {} where it does not run: Ruby job
    # queue (jobs_queued, jobs_waiting_for_room, oldest_job_wait in seconds),
    # busy_threads of rpc_pool_size, sessions.
    def stats
      runtime? ? @runtime.stats : {}
    end

    # Broadcasts outside Action Cable (e.g. from a plain Ruby process).
    def broadcast(stream, data, exclude_socket: nil)
      Broadcasting.broadcast(stream, data, exclude_socket: exclude_socket)
    end

    # A session restored by its sid (ANYCABLE_SESSIONS_TTL) does not run `connect`
    # again: a `connect` that checks a credential which expires (the app's own token)
    # says until when, and a restore past it gets token_expired (reconnect: false), as
    # one opened by an AnyCable JWT does. False where there is no session to restore
    # (plain Action Cable).
    def restorable_until(connection, time)
      return false unless defined?(AnyCableRs::ActionCable::Compat)

      session = AnyCableRs::ActionCable::Compat.websocket(connection)&.session
      return false unless session

      session.set_expires_at(time.to_i)
      true
    end

    # The stream a public `$pubsub` subscription to `name` listens to (with
    # ANYCABLE_PUBLIC_STREAMS): public names live apart from the app's streams, so a
    # client can never subscribe to another user's stream_for or Action Cable's own
    # channels by naming them. Broadcast to it:
    #   ActionCable.server.broadcast(AnyCableRs.public_stream("lobby"), data)
    def public_stream(name)
      "#{PUBLIC_STREAM_PREFIX}#{name}"
    end

    private

    def runtime_lock
      @runtime_lock ||= Mutex.new
    end
  end
end

# The native extension (AnyCableRs::Native). A precompiled platform gem carries one per
# Ruby version, lib/anycable_rs/<major.minor>/anycable_rs.so; a gem built from source
# (`gem install`, Bundler for `git:` gems, `rake compile` in a checkout) has
# anycable_rs/anycable_rs.so on the load path. Bundler builds nothing for a `path:` gem:
# the error then names the command to run.
module AnyCableRs
  module NativeLoader
    module_function

    def load!
      abi = RUBY_VERSION[/\A\d+\.\d+/]
      precompiled = File.join(__dir__, "anycable_rs", abi, "anycable_rs.#{RbConfig::CONFIG["DLEXT"]}")
      if File.exist?(precompiled)
        require precompiled
      else
        require "anycable_rs/anycable_rs"
      end
    rescue LoadError => e
      raise LoadError, explain(e, abi)
    end

    def explain(error, abi)
      dlext = RbConfig::CONFIG["DLEXT"]
      root = File.expand_path("..", __dir__)
      carried = Dir[File.join(__dir__, "anycable_rs", "*", "anycable_rs.#{dlext}")]
        .map { |f| File.basename(File.dirname(f)) }.sort
      built = File.join(__dir__, "anycable_rs", "anycable_rs.#{dlext}")
      build = "(needs Rust: cargo and rustc 1.85+, and libclang)"
      if carried.any? && !carried.include?(abi)
        "anycable-rs: this precompiled gem carries the native extension for Ruby #{carried.join(", ")}, " \
          "not #{abi} (#{error.message}). Install the source gem instead, which compiles it #{build}: " \
          "gem install anycable-rs --platform ruby"
      elsif File.exist?(File.join(root, "Rakefile")) # a checkout: a `path:` (or `git:`) gem
        what = File.exist?(built) ? "the native extension failed to load" : "the native extension is not built"
        "anycable-rs: #{what} (#{error.message}). Bundler does not build extensions of `path:` gems; " \
          "build it once #{build}:\n\n    cd #{root} && rake compile\n"
      else
        "anycable-rs: the native extension failed to load (#{error.message}). " \
          "Rebuild it #{build}: gem pristine anycable-rs"
      end
    end
  end
end
AnyCableRs::NativeLoader.load!

require "anycable_rs/runtime"
require "anycable_rs/broadcasting"
require "anycable_rs/workers_relay"
require "anycable_rs/metrics_endpoint"
require "anycable_rs/http_transports"
require "anycable_rs/streams"
require "anycable_rs/jwt"
require "anycable_rs/socket_id"
require "anycable_rs/railtie" if defined?(::Rails::Railtie)
