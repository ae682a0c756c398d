# frozen_string_literal: true

require "anycable_rs/rack_env"

module AnyCableRs
  module ActionCable
    # A connection's Rack env after `connect`. Action Cable keeps the env for the
    # socket's life, and with it the request it memoizes (a merged copy of the env), the
    # cookie jar and the loaded session: most of a connection's memory, for what only
    # `connect` usually reads. `compact` swaps the env for a RackEnv snapshot; `env`,
    # `request` (so `cookies`, `session`, `params`) are rebuilt from it when app code
    # reads them later, and let go again after the job that read them (`release`).
    #
    # What it relies on of Connection::Base is in Compat.held_env.
    module ConnectionEnv
      # Prepended to ActionCable::Connection::Base.
      module Readers
        def env
          snapshot = @anycable_rs_snapshot
          return super unless snapshot

          @anycable_rs_env ||= RackEnv.restore(snapshot)
        end

        # Action Cable's reads @env directly (Compat.held_env): it gets the rebuilt env.
        def statistics
          return super unless @anycable_rs_snapshot

          begin
            @env = env
            super
          ensure
            @env = nil
          end
        end

        private

        def request
          return super unless @anycable_rs_snapshot

          # The restored env already holds the app's env_config (Action Cable merges
          # it into a copy of the env here). Memoized apart from Action Cable's @request.
          @anycable_rs_request ||= ActionDispatch::Request.new(env)
        end
      end

      module_function

      def compact(connection)
        env = Compat.held_env(connection) or return

        connection.instance_variable_set(:@anycable_rs_snapshot, RackEnv.snapshot(env))
        Compat.drop_env(connection)
      end

      # After a command: let go of an env (and request) rebuilt while it ran.
      def release(connection)
        return unless connection.instance_variable_get(:@anycable_rs_snapshot)

        connection.instance_variable_set(:@anycable_rs_env, nil)
        connection.instance_variable_set(:@anycable_rs_request, nil)
      end

      # The env's request line and headers, without rebuilding the env: for log lines.
      def light_env(connection)
        snapshot = connection.instance_variable_get(:@anycable_rs_snapshot)
        return connection.env unless snapshot

        env = RackEnv.snapshot_pairs(snapshot)
        env["action_dispatch.parameter_filter"] = ::Rails.application&.env_config&.[]("action_dispatch.parameter_filter")
        env
      end
    end
  end
end
