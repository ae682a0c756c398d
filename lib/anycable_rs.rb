# frozen_string_literal: true

require "anycable_rs/version"
require "anycable_rs/config"

# anycable-rs: an AnyCable-compatible WebSocket server inside the Rails process.
#
# The server itself is Rust (AnyCableRs::Native); this module decides per process
# whether and when it runs, and connects it to Action Cable.
module AnyCableRs
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

    # Broadcasts outside Action Cable (e.g. from a plain Ruby process).
    def broadcast(stream, data, exclude_socket: nil)
      Broadcasting.broadcast(stream, data, exclude_socket: exclude_socket)
    end

    private

    def runtime_lock
      @runtime_lock ||= Mutex.new
    end
  end
end

begin
  require "anycable_rs/anycable_rs"
rescue LoadError => e
  raise LoadError, "anycable-rs: the native extension is not built (#{e.message}). " \
    "Run `rake compile` in the gem's directory, or reinstall the gem."
end

require "anycable_rs/runtime"
require "anycable_rs/broadcasting"
require "anycable_rs/railtie" if defined?(::Rails::Railtie)
