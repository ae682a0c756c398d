# frozen_string_literal: true

module AnyCableRs
  # The socket a broadcast should skip with `to_others: true` (AnyCable's): in a
  # channel action, the connection's own; in a controller action, the `X-Socket-ID`
  # header the client sent (@anycable/web: its `cable.sessionId`); elsewhere (a job)
  # what `AnyCableRs.with_socket_id(id) { … }` sets.
  module SocketId
    KEY = :anycable_rs_socket_id

    module_function

    def current
      Thread.current[KEY]
    end

    def with(id)
      previous = Thread.current[KEY]
      id = id.to_s unless id.nil? || id.is_a?(String)
      Thread.current[KEY] = id.nil? || id.empty? ? nil : id
      yield
    ensure
      Thread.current[KEY] = previous
    end

    # Sets the current socket id from X-Socket-ID for the request.
    class Middleware
      def initialize(app)
        @app = app
      end

      def call(env)
        id = env["HTTP_X_SOCKET_ID"]
        return @app.call(env) if id.nil? || id.empty?

        SocketId.with(id) { @app.call(env) }
      end
    end
  end

  class << self
    def current_socket_id
      SocketId.current
    end

    def with_socket_id(id, &block)
      SocketId.with(id, &block)
    end
  end
end
