# frozen_string_literal: true

require "anycable_rs/action_cable/compat"

module AnyCableRs
  module ActionCable
    # Runs Action Cable's worker-pool work on the calling thread: the bridge's Ruby
    # threads already are the pool. `work` keeps Action Cable's callbacks (the Rails
    # executor around every call, ActiveRecord connection handling).
    class InlineWorker < Compat.worker_class
      def initialize # rubocop:disable Lint/MissingSuper -- no thread pool of its own
      end

      def stopping?
        false
      end

      def halt
      end

      def async_invoke(receiver, method, *args, connection: receiver, &block)
        invoke(receiver, method, *args, connection: connection, &block)
      end
    end

    # Action Cable's tagged logger proxy, minus the tagging work for lines the logger
    # would drop anyway (Action Cable logs at info and debug on every action).
    class LoggerProxy < Compat.tagged_logger_proxy_class
      def self.from(proxy)
        new(Compat.wrapped_logger(proxy), tags: proxy.tags)
      end

      LEVEL_CHECKS = %i[debug info warn error fatal unknown].to_h { |s| [s, :"#{s}?"] }.freeze

      # Would a line of this severity be written? (`:info`, `:debug`, …) Asked on every
      # action and transmit: whether the logger has the check is looked up once.
      def logs?(severity)
        check = LEVEL_CHECKS.fetch(severity)
        !LoggerProxy.responds?(@logger, check) || @logger.__send__(check)
      end

      # Per logger object (connections share the server's), which level checks it has.
      RESPONDS = {}.compare_by_identity # rubocop:disable Style/MutableConstant

      def self.responds?(logger, check)
        checks = RESPONDS[logger] || begin
          RESPONDS.clear if RESPONDS.size > 16
          RESPONDS[logger] = LEVEL_CHECKS.values.to_h { |c| [c, logger.respond_to?(c)] }.freeze
        end
        checks[check]
      end

      LEVEL_CHECKS.each { |severity, check| define_method(check) { logs?(severity) } }

      private

      # 7.1+ pass a block (`logger.debug { … }`), built only when the line is kept.
      def log(type, message = nil, &block)
        return unless logs?(type)

        super
      end
    end

    # Action Cable's event loop (6.1–8.1: `server.event_loop`) and executor (main:
    # `server.executor`), as connections and channels use them: `post` runs at once,
    # `timer` runs in the Rust runtime and calls back into a Ruby thread.
    class EventLoop
      Timer = Struct.new(:runtime, :id) do
        def shutdown
          runtime.dispatcher.cancel_timer(id)
        end
      end

      def initialize(runtime)
        @runtime = runtime
      end

      def post(task = nil, &block)
        (task || block).call
      end

      def timer(interval, &block)
        Timer.new(@runtime, @runtime.dispatcher.add_timer(interval, block))
      end

      def attach(*)
      end

      def detach(*)
      end

      def writes_pending(*)
      end

      def stop
      end

      def shutdown
      end
    end

    # What connections get as their `server`: Action Cable's server for configuration
    # and broadcasting, with the worker pool, event loop and pub/sub of anycable-rs.
    class CableServer
      attr_reader :worker_pool, :event_loop, :pubsub

      # main: periodic timers and subscription adapters take `server.executor`.
      alias_method :executor, :event_loop

      def initialize(runtime, pubsub)
        @worker_pool = InlineWorker.new
        @event_loop = EventLoop.new(runtime)
        @pubsub = pubsub
      end

      def config
        ::ActionCable.server.config
      end

      def logger
        ::ActionCable.server.logger
      end

      def add_connection(_connection)
      end

      def remove_connection(_connection)
      end

      def respond_to_missing?(name, include_private = false)
        ::ActionCable.server.respond_to?(name) || super
      end

      def method_missing(name, *args, **kwargs, &block)
        if ::ActionCable.server.respond_to?(name)
          ::ActionCable.server.public_send(name, *args, **kwargs, &block)
        else
          super
        end
      end
    end
  end
end
