# frozen_string_literal: true

module AnyCableRs
  module ActionCable
    # Prepended to ActionCable::Server::Base. Each method falls through to Action Cable
    # unless anycable-rs is embedded, so without the toggle the app is plain Rails.
    module ServerPatch
      # The mounted `/cable` endpoint: hand the socket to the Rust server.
      def call(env)
        AnyCableRs.embedded? ? AnyCableRs.runtime.handoff(env) : super
      end

      def pubsub
        AnyCableRs.embedded? ? AnyCableRs.runtime.pubsub : super
      end

      # Code reloading in development restarts the cable server: close our sockets too
      # (clients reconnect and get the reloaded classes), as Action Cable does.
      def restart
        AnyCableRs.runtime.dispatcher.close_all if AnyCableRs.embedded? && AnyCableRs.runtime?
        super
      end
    end

    # Prepended to ActionCable::Channel::Base: a plain `stream_from` (no block, no
    # coder) is delivered by Rust without entering Ruby.
    module ChannelPatch
      def stream_from(broadcasting, callback = nil, coder: nil, &block)
        socket = connection.send(:websocket)
        return super unless callback.nil? && block.nil? && coder.nil? && socket.is_a?(Socket)

        broadcasting = String(broadcasting)
        token = DirectStream.new(socket.native, identifier)
        streams[broadcasting] = token
        pubsub.subscribe(broadcasting, token)
        logger.info "#{self.class.name} is streaming from #{broadcasting}"
      end

      # Action Cable builds `data.inspect` for a debug line on every transmit, and an
      # action signature for an info line on every action, whether or not the logger
      # keeps them (~12 % of an echo's Ruby time; bench/results/2026-11-26-targets.md).
      # When our connection's logger would drop the line, the same work runs without
      # building it; otherwise Rails' own method runs.
      def transmit(data, via: nil)
        return super if logged?(:debug)

        payload = {channel_class: self.class.name, data: data, via: via}
        ActiveSupport::Notifications.instrument("transmit.action_cable", payload) do
          connection.transmit identifier: @identifier, message: data
        end
      end

      private

      def dispatch_action(action, data)
        return super if logged?(:info)

        if method(action).arity == 1
          public_send action, data
        else
          public_send action
        end
      rescue Exception => e # rubocop:disable Lint/RescueException
        rescue_with_handler(e) || raise
      end

      # True unless this is an anycable-rs connection whose logger drops `severity`.
      def logged?(severity)
        log = logger
        !log.is_a?(LoggerProxy) || log.logs?(severity)
      end
    end
  end
end
