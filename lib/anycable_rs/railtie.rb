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
      ActiveSupport.on_load(:action_cable_connection) do
        require "anycable_rs/action_cable/patches"
        AnyCableRs::ActionCable::Compat.install_remote_disconnect_frame
        prepend AnyCableRs::ActionCable::ConnectionEnv::Readers
        # anycable-rails' own, when an app has it, stays.
        extend AnyCableRs::State::Accessors unless respond_to?(:state_attr_accessor)
      end
      ActiveSupport.on_load(:action_cable_channel) do
        require "anycable_rs/action_cable/patches"
        prepend AnyCableRs::ActionCable::ChannelPatch
        singleton_class.prepend AnyCableRs::ActionCable::ChannelBroadcastPatch
        extend AnyCableRs::State::Accessors unless respond_to?(:state_attr_accessor)
      end
    end

    # A restore sid (`/cable?sid=…`) restores a session without `connect`, a JWT
    # (`/cable?jid=…`, ANYCABLE_JWT_PARAM) identifies one, a signed stream name reads a
    # stream: request log lines (Rails' and ours) show them filtered, as passwords.
    initializer "anycable_rs.filter_sid" do |app|
      app.config.filter_parameters << /\Asid\z/
      # A reading of its own: AnyCableRs.config is read once, after the app's
      # initializers set its paths (config/cable.yml's among them), not here.
      param = begin
        Config.load.jwt_param
      rescue StandardError
        Config::DEFAULTS[:jwt_param] # the config is refused later, with its message
      end
      app.config.filter_parameters << /\A#{Regexp.escape(param.to_s)}\z/
      # A signed stream name in a URL (/ds?signed=, /events?signed_stream= or
      # turbo_signed_stream_name=) is what lets its holder read the stream.
      app.config.filter_parameters << /\A(signed|signed_stream|turbo_signed_stream_name)\z/
    end

    initializer "anycable_rs.helpers" do
      ActiveSupport.on_load(:action_view) do
        require "anycable_rs/helper"
        include AnyCableRs::Helper
      end
    end

    initializer "anycable_rs.broadcast_endpoint" do |app|
      app.middleware.insert_before 0, AnyCableRs::BroadcastEndpoint
      app.middleware.insert_after AnyCableRs::BroadcastEndpoint, AnyCableRs::MetricsEndpoint
      app.middleware.insert_after AnyCableRs::MetricsEndpoint, AnyCableRs::HttpTransports::Early
      app.middleware.use AnyCableRs::SocketId::Middleware
      app.middleware.use AnyCableRs::HttpTransports
    end

    config.after_initialize do
      AnyCableRs::Boot.after_initialize
    end
  end

  # When the server starts. On Puma's port it starts with the first WebSocket request,
  # in whichever process gets it. It starts at boot when it must listen (ANYCABLE_PORT)
  # or relay broadcasts among Puma workers (local/http adapter, workers > 1): in the
  # serving process, after Puma forks its workers, never in a console, a rake task or a
  # cluster master.
  module Boot
    module_function

    def after_initialize
      return unless AnyCableRs.embedded?

      # A Regexp in allowed_request_origins the server cannot check stops the boot here,
      # not the first WebSocket request.
      Native.check_origins(OriginPolicy.build(AnyCableRs.config.allowed_origins))
      # Likewise ANYCABLE_TURBO_STREAMS or ANYCABLE_ENFORCE_JWT without a key.
      AnyCableRs.config.streams_options
      AnyCableRs.config.jwt_options
      PumaRestart.install
      announce_broadcast_endpoint if AnyCableRs::Broadcasting.server_process?
      return if tool_process?

      # Embedded NATS (ANYCABLE_EMBED_NATS): the machine's nats-server child, run by this
      # process or by a sibling, before anything here connects to it (embedded_nats.rb).
      EmbeddedNats.boot

      if puma_workers.nil? && defined?(::Rails::Server)
        defer_to_puma
      elsif forking_master?
        after_worker_fork { start_serving }
      else
        start_serving
      end
    end

    # At boot when something needs the runtime before the first socket: its own
    # port, the workers' relay, or, in a web server, the NATS broker (JetStream ready
    # before the clients of a restarted node come back asking for their history). A
    # job runner (Sidekiq, `rails runner`) starts nothing: its broadcasts go out from
    # Ruby, each acknowledged before it returns.
    def start_serving
      config = AnyCableRs.config
      warn_polls_across_workers(config)
      nats_broker = config.broker == "nats" && Broadcasting.server_process?
      AnyCableRs.runtime.start! if config.port || nats_broker || WorkersRelay.needed?
    end

    # A long-polling session lives in the process that opened it, and each poll is a
    # new request that Puma gives to any worker: say so where it will bite.
    def warn_polls_across_workers(config)
      workers = puma_workers.to_i
      return unless config.poll && workers > 1

      AnyCableRs.logger.warn "anycable-rs: long polling (ANYCABLE_POLL) with #{workers} Puma workers: a session " \
        "lives in the worker that opened it, and a poll that Puma gives another worker is told session_expired " \
        "(the client starts over). Run one worker per machine (scale with threads and machines; polls across " \
        "machines need sticky sessions too)."
    end

    def tool_process?
      defined?(::Rails::Console) ||
        (defined?(::Rake) && ::Rake.respond_to?(:application) && ::Rake.application.top_level_tasks.any?)
    end

    def puma_workers
      WorkersRelay.puma_workers
    end

    # Runs the block in each process this one forks directly (Puma's workers), not in
    # processes those fork.
    def after_worker_fork(&block)
      master = Process.pid
      ActiveSupport::ForkTracker.after_fork { block.call if Process.ppid == master }
    end

    # `rails server`: the app boots before Puma reads its config, so whether this
    # process serves (single mode) or its workers do is known only later. Puma's
    # single-mode runner starts the server as it runs; each forked worker starts its own.
    # (Loading Puma's CLI makes it advertise its config, Puma.cli_config.)
    def defer_to_puma
      return start_serving unless defined?(::Puma) || defined?(::Rack::Handler::Puma)

      require "puma/cli"
      require "puma/single"
      ::Puma::Single.prepend(PumaSingleHook) unless ::Puma::Single.ancestors.include?(PumaSingleHook)
      after_worker_fork { start_serving }
    rescue LoadError
      start_serving
    end

    module PumaSingleHook
      def run(*)
        AnyCableRs::Boot.start_serving
        super
      end
    end

    # POST /_broadcast is served only with a key: say so once at boot, in the web server
    # (not in consoles, job runners or scripts).
    def announce_broadcast_endpoint
      config = AnyCableRs.config
      unless config.blank_secrets.empty?
        names = config.blank_secrets.map { |key| "ANYCABLE_#{key.upcase}" }.join(", ")
        AnyCableRs.logger.warn "anycable-rs: #{names} set but empty: treated as unset " \
          "(an empty key would be public)"
      end
      return if config.effective_broadcast_key

      own = config.port ? " nor on the own port #{config.port}" : ""
      AnyCableRs.logger.warn "anycable-rs: POST #{config.broadcast_path} (AnyCable's HTTP broadcast) is not served " \
        "on the app's port#{own}: no ANYCABLE_BROADCAST_KEY or ANYCABLE_SECRET is set. To take HTTP broadcasts, " \
        "set one; publishers then send `Authorization: Bearer <key>` (the key defaults to " \
        "hex HMAC-SHA256(secret, \"broadcast-cable\"), as AnyCable's)."
    end

    def forking_master?
      return false unless defined?(::Puma) && ::Puma.respond_to?(:cli_config) && ::Puma.cli_config

      options = ::Puma.cli_config.options
      options[:workers].to_i.positive? && options[:preload_app]
    end
  end

  # Puma's hot restart (SIGUSR2, `pumactl restart`) in single mode re-executes the
  # process: at_exit hooks never run, so without this clients would get a bare 1006
  # instead of `server_restart`, and no disconnect callback would run. Phased restarts
  # in cluster mode stop workers normally and need nothing. Puma's handlers that stop
  # or restart a server (USR2; a cluster worker's TERM) run off the trap (off_the_trap).
  module PumaRestart
    module_function

    def install
      # `rails server` boots the app before it loads Puma.
      if defined?(::Rails::Server) && !defined?(::Puma::Launcher)
        begin
          require "puma"
          require "puma/cli"
        rescue LoadError # another server
          nil
        end
      end
      return unless defined?(::Puma::Launcher)
      return if ::Puma::Launcher.ancestors.include?(LauncherHook)

      ::Puma::Launcher.prepend(LauncherHook)
      # Booted by a running Puma (its traps are set): move its USR2 handler now;
      # booted before Puma sets them (`rails server`), LauncherHook#setup_signals does.
      off_the_trap("SIGUSR2")
      # A cluster worker's SIGTERM handler stops its server from the trap the same way
      # (Puma issue #3677: the worker never exits); Puma sets it just before the
      # worker runs its server.
      require "puma/server"
      ::Puma::Server.prepend(WorkerServerHook)
      master = Process.pid
      ::ActiveSupport::ForkTracker.after_fork { @worker = Process.ppid == master } if defined?(::ActiveSupport::ForkTracker)
    end

    # This process is a worker the booting process forked (Puma's cluster mode).
    def worker?
      @worker == true
    end

    module WorkerServerHook
      def run(*, **)
        PumaRestart.off_the_trap("SIGTERM") if PumaRestart.worker?
        super
      end
    end

    module LauncherHook
      private

      def restart!
        AnyCableRs.shutdown
        super
      end

      # Puma's USR2 handler asks for the restart from the trap itself: a write to the
      # server's wake-up pipe that can race the server thread closing that pipe. On
      # Ruby 3.3/3.4 the close then waits forever for a waiter the trap could not
      # unregister (it cannot take the mutex that does it; ruby/ruby#13684, fixed in
      # Ruby 4.0): the restart hung in ~1 of 80 under load (issue #21). The same
      # handler runs on a thread of its own instead, outside trap context.
      def setup_signals
        super
        PumaRestart.off_the_trap("SIGUSR2")
      end
    end

    # Re-installs `signal`'s handler, when it is a Proc (Puma's), so that it runs on a
    # new thread; leaves any other (the default, or ours already) as it is.
    def off_the_trap(signal)
      handler = Signal.trap(signal, "IGNORE")
      if handler.respond_to?(:call) && !handler.instance_variable_defined?(:@anycable_rs_off_the_trap)
        ours = proc { |signo| Thread.new { handler.call(signo) } }
        ours.instance_variable_set(:@anycable_rs_off_the_trap, true)
        Signal.trap(signal, &ours)
      else
        Signal.trap(signal, handler || "DEFAULT")
      end
    rescue ArgumentError # no such signal here
      nil
    end
  end
end
