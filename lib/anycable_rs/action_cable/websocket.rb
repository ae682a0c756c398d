# frozen_string_literal: true

module AnyCableRs
  module ActionCable
    # Stands where Action Cable's `ActionCable::Connection::WebSocket` would: the
    # connection object transmits and closes through it, and the bytes go out through
    # the Rust server's session (an AnyCableRs::Native::Session).
    class WebSocket
      attr_reader :session, :protocol

      def initialize(session, protocol)
        @session = session
        @protocol = protocol
      end

      def possible?
        true
      end

      def alive?
        !session.closed?
      end

      def transmit(data)
        session.transmit(data.to_s)
      end

      # Connection#close has already transmitted its disconnect message.
      def close(*)
        session.close_quietly
      end

      def rack_response
        raise NotImplementedError, "anycable-rs sockets are upgraded by the Rust server"
      end
    end

    # Stands where Action Cable's `ActionCable::Server::Socket` would, on an Action
    # Cable whose connections are built as `new(server, socket)` (Rails main; see
    # Compat.build_connection): the connection reads its env, request, protocol and
    # logger here, transmits through it (encoded here), closes it, and runs stream and
    # timer callbacks through `perform_work`.
    class ServerSocket
      attr_reader :server, :env, :websocket
      attr_accessor :logger, :connection

      def initialize(server, env, websocket, coder)
        @server = server
        @env = env
        @websocket = websocket
        @coder = coder
        @request = nil
      end

      def protocol
        websocket.protocol
      end

      # The request the socket was opened with, built on first use, with the app's
      # env_config (secrets for signed and encrypted cookies) under it.
      def request
        @request ||= begin
          app = defined?(::Rails.application) && ::Rails.application
          ActionDispatch::Request.new(app ? app.env_config.merge(env) : env)
        end
      end

      def transmit(cable_message)
        websocket.transmit(@coder.encode(cable_message)) if websocket.alive?
      end

      def close(*)
        websocket.close
      end

      def perform_work(receiver, method, *args)
        server.worker_pool.async_invoke(receiver, method, *args, connection: self)
      end
    end

    # The "callback" a plain `stream_from` registers: tells the pub/sub adapter to let
    # the Rust hub deliver that stream to this session without entering Ruby.
    DirectStream = Struct.new(:session, :identifier)
  end
end
