# frozen_string_literal: true

module AnyCableRs
  module ActionCable
    # The subscription adapter Action Cable uses while anycable-rs is embedded
    # (`ActionCable.server.pubsub`, and every connection's `pubsub`): broadcasts go to
    # the Rust hub; subscriptions with a Ruby callback are registered there by id.
    class PubSub
      def initialize(runtime)
        @runtime = runtime
        @ids = {}
        @lock = Mutex.new
      end

      def broadcast(channel, payload)
        Broadcasting.broadcast(channel, payload.to_s, exclude_socket: Thread.current[EXCLUDE])
      end

      EXCLUDE = :anycable_rs_exclude_socket

      # Broadcasts made in the block skip socket `sid` (ServerPatch#broadcast, to_others).
      def self.excluding(sid)
        previous = Thread.current[EXCLUDE]
        Thread.current[EXCLUDE] = sid
        yield
      ensure
        Thread.current[EXCLUDE] = previous
      end

      def subscribe(channel, callback, success_callback = nil)
        channel = channel.to_s
        if callback.is_a?(DirectStream)
          callback.session.stream(channel, callback.identifier)
        else
          id = @runtime.dispatcher.register_callback(callback)
          @lock.synchronize { @ids[[channel, callback]] = id }
          @runtime.native.subscribe_callback(channel, id)
        end
        success_callback&.call
      end

      def unsubscribe(channel, callback)
        channel = channel.to_s
        if callback.is_a?(DirectStream)
          callback.session.unstream(channel, callback.identifier)
        else
          id = @lock.synchronize { @ids.delete([channel, callback]) }
          return unless id

          @runtime.native.unsubscribe_callback(channel, id)
          @runtime.dispatcher.unregister_callback(id)
        end
      end

      def shutdown
      end
    end
  end
end
