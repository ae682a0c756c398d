# frozen_string_literal: true

module AnyCableRs
  module ActionCable
    # Stands where Action Cable's `ActionCable::Connection::WebSocket` would: the
    # connection object transmits and closes through it, and the bytes go out through
    # the Rust server.
    class Socket
      attr_reader :native, :protocol

      def initialize(native, protocol)
        @native = native
        @protocol = protocol
      end

      def possible?
        true
      end

      def alive?
        !native.closed?
      end

      def transmit(data)
        native.transmit(data.to_s)
      end

      # Connection#close has already transmitted its disconnect message.
      def close(*)
        native.close_quietly
      end

      def rack_response
        raise NotImplementedError, "anycable-rs sockets are upgraded by the Rust server"
      end
    end

    # The "callback" a plain `stream_from` registers: tells the pub/sub adapter to let
    # the Rust hub deliver that stream to this socket without entering Ruby.
    DirectStream = Struct.new(:socket, :identifier)
  end
end
