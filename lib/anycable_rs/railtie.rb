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

      check_puma_workers!
      # A Regexp in allowed_request_origins the server cannot check stops the boot here,
      # not the first WebSocket request.
      Native.check_origins(OriginPolicy.build(AnyCableRs.config.allowed_origins))
      PumaRestart.install
      announce_broadcast_endpoint if AnyCableRs::Broadcasting.server_process?
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

    # Puma's worker count, once Puma has read its config (nil before, or without Puma).
    def puma_workers
      return nil unless defined?(::Puma) && ::Puma.respond_to?(:cli_config) && ::Puma.cli_config

      ::Puma.cli_config.options[:workers].to_i
    end

    # Puma workers each run a server. With in-process broadcasting a broadcast would
    # reach one worker's clients only; with the http adapter a POST reaches one worker.
    # Refuse to run like that instead of losing messages:
    # - `puma` with preload_app: the master boots the app, and raises;
    # - `puma` without it: each worker boots the app; the first stops the server;
    # - `rails server`: the app boots before Puma reads its config; the first worker
    #   Puma forks checks it, and stops the server.
    def check_puma_workers!
      workers = puma_workers
      return watch_worker_forks if workers.nil?

      message = lonely_workers_message(workers)
      return unless message

      options = ::Puma.cli_config.options
      stop_server!(message, Process.ppid) if workers.positive? && !options[:preload_app]
      raise AnyCableRs::Error, message
    end

    # Logs why, stops the Puma master (TERM: a graceful stop of every worker) and exits
    # this worker: raising here would only make Puma fork it again, and again.
    def stop_server!(message, master)
      AnyCableRs.logger.error(message)
      warn(message)
      Process.kill("TERM", master)
      exit!(1)
    end

    # Under `rails server` Puma reads its config only after the app has booted, and
    # advertises it (Puma.cli_config) only when its CLI is loaded: load it, then check
    # in the first process Puma forks.
    def watch_worker_forks
      return if @watching_forks || tool_process? || !defined?(::Rails::Server)
      return unless defined?(::Puma) || defined?(::Rack::Handler::Puma)

      require "puma/cli"
      @watching_forks = true
      master = Process.pid
      ActiveSupport::ForkTracker.after_fork do
        next unless Process.ppid == master

        message = lonely_workers_message(puma_workers)
        stop_server!(message, master) if message
      end
    rescue LoadError
      nil
    end

    def lonely_workers_message(workers)
      adapter = AnyCableRs.config.broadcast_adapter
      return nil unless workers && workers > 1 && %w[local http].include?(adapter)

      reach = (adapter == "local") ? "a broadcast would reach one worker's clients only" :
        "a broadcast POST reaches one worker, so only that worker's clients would get it"
      "anycable-rs: Puma runs #{workers} workers, and each serves its own sockets, " \
        "but ANYCABLE_BROADCAST_ADAPTER is #{adapter}: #{reach}. " \
        "Set ANYCABLE_BROADCAST_ADAPTER=nats and ANYCABLE_NATS_SERVERS=nats://host:4222 " \
        "(or redis and ANYCABLE_REDIS_URL), or run Puma with one worker."
    end

    # POST /_broadcast is served on Puma's port only with a key: say so once at boot, in
    # the web server (not in consoles, job runners or scripts).
    def announce_broadcast_endpoint
      config = AnyCableRs.config
      return if config.effective_broadcast_key

      own = config.port ? " (on its own port #{config.port} the server still takes it from loopback only)" : ""
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
  # in cluster mode stop workers normally and need nothing.
  module PumaRestart
    module_function

    def install
      return unless defined?(::Puma::Launcher)
      return if ::Puma::Launcher.ancestors.include?(LauncherHook)

      ::Puma::Launcher.prepend(LauncherHook)
    end

    module LauncherHook
      private

      def restart!
        AnyCableRs.shutdown
        super
      end
    end
  end
end
