# frozen_string_literal: true

module AnyCableRs
  # The HTTP transports on Puma's port, handed to the Rust server with their Rack env
  # (for the app's `connect`: its cookies, and what middleware put there, such as
  # Warden's user): AnyCable's Server-Sent Events (ANYCABLE_SSE, GET/POST at
  # ANYCABLE_SSE_PATH, default /events), long polling (ANYCABLE_POLL, POST at
  # ANYCABLE_POLL_PATH, default /lp) and Durable Streams reads (ANYCABLE_DS, GET/HEAD
  # below ANYCABLE_DS_PATH, default /ds). It sits at the end of the app's middleware, as the
  # mounted Action Cable server does. The rules (Origin, methods, sizes, statuses) are
  # the server's, one implementation for both ports; other methods at these paths stay
  # the app's.
  class HttpTransports
    EVENTS_METHODS = %w[GET POST OPTIONS].freeze
    POLL_METHODS = %w[POST OPTIONS].freeze
    DS_METHODS = %w[GET HEAD OPTIONS].freeze

    def initialize(app)
      @app = app
    end

    def call(env)
      config = AnyCableRs.config
      return @app.call(env) unless config.embedded

      path = env["PATH_INFO"]
      method = env["REQUEST_METHOD"]
      if config.sse && path == config.sse_path && EVENTS_METHODS.include?(method)
        AnyCableRs.runtime.handoff_events(env)
      elsif config.poll && path == config.poll_path && POLL_METHODS.include?(method)
        AnyCableRs.runtime.handoff_poll(env)
      elsif config.ds && DS_METHODS.include?(method) && path.start_with?("#{config.ds_path}/")
        AnyCableRs.runtime.handoff_ds(env)
      else
        @app.call(env)
      end
    end

    # The requests that run none of the app's code and need none of what its
    # middleware puts in the env, handed over ahead of that middleware (first in the
    # stack, as the broadcast endpoint): a long-polling session's next polls (the
    # session id is their credential) and, with ANYCABLE_DS_SKIP_AUTH, Durable Streams
    # reads (the signed name is theirs). Each skips about 1.7 ms of middleware CPU
    # (bench/idle.rb) and writes no "Started POST /lp" line per poll to the app's log.
    # The rest (a new session, whose `connect` may read what middleware set) go on to
    # the end of the stack.
    class Early < HttpTransports
      # A session id as the server makes them (128 random bits and more, in hex): a
      # request with anything else (none, blank) may open a session, and goes on.
      POLL_ID = /\A\h{32,}\z/
      def call(env)
        config = AnyCableRs.config
        return @app.call(env) unless config.embedded

        path = env["PATH_INFO"]
        method = env["REQUEST_METHOD"]
        if config.poll && path == config.poll_path && method == "POST" && POLL_ID.match?(env["HTTP_X_ANYCABLE_POLL_ID"].to_s)
          AnyCableRs.runtime.handoff_poll(env)
        elsif config.ds && config.ds_skip_auth && DS_METHODS.include?(method) && path.start_with?("#{config.ds_path}/")
          AnyCableRs.runtime.handoff_ds(env)
        else
          @app.call(env)
        end
      end
    end
  end
end
