# frozen_string_literal: true

module AnyCableRs
  # AnyCable's Server-Sent Events (ANYCABLE_SSE) on Puma's port: a request at
  # ANYCABLE_SSE_PATH (default /events) is handed to the Rust server with its Rack env
  # (for the app's `connect`: its cookies, and what middleware put there, such as
  # Warden's user), which streams its events from then on. It sits at the end of the
  # app's middleware, as the mounted Action Cable server does. The rules (Origin,
  # methods, sizes, statuses) are the server's, one implementation for both ports.
  class EventsEndpoint
    def initialize(app)
      @app = app
    end

    # What the events endpoint answers; other methods at its path stay the app's.
    METHODS = %w[GET POST OPTIONS].freeze

    def call(env)
      config = AnyCableRs.config
      unless config.embedded && config.sse && env["PATH_INFO"] == config.sse_path && METHODS.include?(env["REQUEST_METHOD"])
        return @app.call(env)
      end

      AnyCableRs.runtime.handoff_events(env)
    end
  end
end
