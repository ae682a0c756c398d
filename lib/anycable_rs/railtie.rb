# frozen_string_literal: true

require "rails/railtie"

module AnyCableRs
  # Wires anycable-rs into a Rails app. Nothing changes unless ANYCABLE_EMBEDDED is on.
  class Railtie < ::Rails::Railtie
    initializer "anycable_rs.action_cable" do
      ActiveSupport.on_load(:action_cable) do
        require "anycable_rs/action_cable/patches"
        ::ActionCable::Server::Base.prepend(AnyCableRs::ActionCable::ServerPatch)
      end
      ActiveSupport.on_load(:action_cable_channel) do
        require "anycable_rs/action_cable/patches"
        prepend AnyCableRs::ActionCable::ChannelPatch
      end
    end

    initializer "anycable_rs.broadcast_endpoint" do |app|
      app.middleware.insert_before 0, AnyCableRs::BroadcastEndpoint
    end

    config.after_initialize do
      AnyCableRs::Boot.after_initialize
    end
  end

  # When the server starts. On Puma's port it starts with the first WebSocket request,
  # in whichever process gets it. The server's own port (ANYCABLE_PORT) has to listen
  # from boot: in the serving process, after Puma forks its workers, never in a console,
  # a rake task or a preloading cluster master.
  module Boot
    module_function

    def after_initialize
      return unless AnyCableRs.embedded?

      refuse_lonely_workers!
      return unless AnyCableRs.config.port
      return if tool_process?

      if forking_master?
        ActiveSupport::ForkTracker.after_fork { AnyCableRs.runtime.start! }
      else
        AnyCableRs.runtime.start!
      end
    end

    def tool_process?
      defined?(::Rails::Console) ||
        (defined?(::Rake) && ::Rake.respond_to?(:application) && ::Rake.application.top_level_tasks.any?)
    end

    # Puma workers each run a server; with in-process broadcasting a broadcast would
    # reach one worker's clients only. Say so at boot instead of losing messages.
    def refuse_lonely_workers!
      return unless AnyCableRs.config.broadcast_adapter == "local"
      return unless defined?(::Puma) && ::Puma.respond_to?(:cli_config) && ::Puma.cli_config

      workers = ::Puma.cli_config.options[:workers].to_i
      return unless workers > 1

      raise AnyCableRs::Error, "anycable-rs: Puma runs #{workers} workers, and each serves its own sockets, " \
        "but ANYCABLE_BROADCAST_ADAPTER is local (in-process): a broadcast would reach one worker's clients only. " \
        "Set ANYCABLE_BROADCAST_ADAPTER=nats and ANYCABLE_NATS_SERVERS=nats://host:4222, or run Puma with one worker."
    end

    def forking_master?
      return false unless defined?(::Puma) && ::Puma.respond_to?(:cli_config) && ::Puma.cli_config

      options = ::Puma.cli_config.options
      options[:workers].to_i.positive? && options[:preload_app]
    end
  end
end
