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
    end
  end
end
