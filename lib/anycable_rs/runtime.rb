# frozen_string_literal: true

require "anycable_rs/dispatcher"
require "anycable_rs/rack_env"

module AnyCableRs
  # One process's embedded server: the native server, the Ruby threads that run the
  # app's Action Cable code for it, and the registries those threads share.
  class Runtime
    HIJACK_KEYS = %w[rack.hijack rack.hijack_io puma.socket].freeze

    attr_reader :config, :native, :dispatcher, :pid

    def initialize(config)
      @config = config
      @pid = Process.pid
      # local/http with Puma workers: broadcasts relayed among the workers.
      @relay_dir = WorkersRelay.needed?(config) ? WorkersRelay.dir : nil
      @native = Native.new(config.native_options.merge(siblings_dir: @relay_dir))
      @dispatcher = Dispatcher.new(self)
      @threads = []
      @lock = Mutex.new
      @envs = {}
      @env_seq = 0
      @started = false
      @port = nil
    end

    def started?
      @started
    end

    # Whether broadcasts are published (to NATS, Redis, or the sibling workers) rather
    # than delivered here only.
    def publishes?
      %w[nats redis].include?(config.broadcast_adapter) || !@relay_dir.nil?
    end

    # The port of the server's own listener, when ANYCABLE_PORT is set.
    attr_reader :port

    # Starts tokio, the own-port listener (if configured) and the Ruby worker threads.
    def start!
      return self if @started

      @lock.synchronize do
        return self if @started

        @port = native.start(config.host, config.port)
        @threads = Array.new(config.rpc_pool_size) { |i| spawn_worker(i) }
        @started = true
        install_exit_hook
        logger.info "anycable-rs: serving WebSockets in process #{pid} " \
          "(#{config.rpc_pool_size} Ruby threads#{@port ? ", port #{@port}" : ""})"
      end
      self
    end

    def shutdown(timeout = config.shutdown_timeout)
      return unless @started && Process.pid == pid

      @started = false
      native.shutdown(timeout.to_f)
      @threads.each { |t| t.join(2) }
      @threads.clear
      report_lost_callbacks(timeout)
    end

    # Connections whose disconnect job never ran (still registered once the threads
    # are done): said in one error line, so a shutdown never loses callbacks quietly.
    def report_lost_callbacks(timeout)
      lost = dispatcher.callbacks_owed
      return if lost.zero? || config.disable_disconnect

      logger.error "anycable-rs: shutdown: the unsubscribed/disconnect callbacks of #{lost} connections never ran or did not finish " \
        "(ANYCABLE_SHUTDOWN_TIMEOUT is #{timeout} s: raise it, and keep the platform's kill timeout above it)"
    end

    # In a forked child: forget the parent's server without touching its threads.
    def abandon!
      native.abandon
      @started = false
      @threads = []
    end

    def pubsub
      dispatcher.pubsub
    end

    # A Rack env kept for a hijacked socket until its connect job runs. The Rust side
    # releases the env of a socket that will never get that far (refused handshake,
    # client gone) with a :release_env job; entries older than ENV_TTL are dropped
    # anyway, on the next stash or when a worker thread is idle.
    ENV_TTL = 60

    def stash_env(env)
      now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      @lock.synchronize do
        expire_envs(now)
        @env_seq += 1
        @envs[@env_seq] = [env, now]
        @env_seq
      end
    end

    def take_env(token)
      return nil if token.nil? || token.zero?

      @lock.synchronize { @envs.delete(token) }&.first
    end

    # Called by idle worker threads too, so expiry does not wait for the next stash.
    def expire_stale_envs
      now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      @lock.synchronize { expire_envs(now) }
    end

    # Headers beyond RackEnv::HANDSHAKE_HEADERS the Rust server reads: a JWT's.
    def native_read_headers
      @native_read_headers ||= config.jwt_options ? ["x-#{config.jwt_param.downcase}"].freeze : [].freeze
    end

    def stats
      native.stats.merge(rpc_pool_size: config.rpc_pool_size, sessions: dispatcher.session_count)
    end

    def stashed_env_count
      @lock.synchronize { @envs.size }
    end

    # Serves an Action Cable request arriving through Rack (Puma's own port): checks it
    # as Action Cable would, then hands the socket to the Rust server.
    def handoff(env)
      return not_found unless RackEnv.websocket?(env)

      # Refused before the env is kept: a bad upgrade must not hold a Rack env (and
      # its cookies) until expiry.
      if (problem = RackEnv.upgrade_problem(env))
        return [400, {"Content-Type" => "text/plain"}, [problem]]
      end

      hand_over(env)
    end

    # The most of a POST's body read for the events endpoint (AnyCable's 64 KiB): one
    # byte more, and the server answers 413.
    EVENTS_MAX_BODY = 64 * 1024

    # A Server-Sent Events request (ANYCABLE_SSE_PATH): the socket, and a POST's body,
    # to the Rust server, which checks it and streams its events.
    def handoff_events(env)
      body = read_body(env, EVENTS_MAX_BODY) if env["REQUEST_METHOD"] == "POST"
      return body if body.is_a?(Array)

      hand_over(env, transport: "events", body: body)
    end

    # A long-polling request (ANYCABLE_POLL_PATH): the socket and its body (commands)
    # to the Rust server, which finds its session or opens one.
    def handoff_poll(env)
      body = read_body(env, config.poll_max_request_size) if env["REQUEST_METHOD"] == "POST"
      return body if body.is_a?(Array)

      hand_over(env, transport: "poll", body: body)
    end

    # A Durable Streams read (below ANYCABLE_DS_PATH): the socket to the Rust server,
    # which authorizes and serves it. Its target is the path the middleware matched
    # (PATH_INFO: an app mounted below a SCRIPT_NAME names the stream the same way).
    def handoff_ds(env)
      query = env["QUERY_STRING"].to_s
      hand_over(env, transport: "ds", target: query.empty? ? env["PATH_INFO"] : "#{env["PATH_INFO"]}?#{query}")
    end

    def logger
      AnyCableRs.logger
    end

    private

    # A POST's body, at most `max` bytes (more: a 413 response, as the server would
    # answer). Read: the env kept with the session holds no copy (the app's connect
    # sees an empty body, as AnyCable's connect sees none).
    def read_body(env, max)
      return [413, {"Content-Type" => "text/plain"}, ["the body is over #{max} bytes"]] if env["CONTENT_LENGTH"].to_i > max

      input = env["rack.input"]
      # A middleware may have read it already (Rails 7.2 on Rack 3 does, for a POST).
      input.rewind if input.respond_to?(:rewind)
      body = input&.read(max + 1) || "".b
      env["rack.input"] = StringIO.new("".b)
      body
    end

    def hand_over(env, transport: nil, body: nil, target: nil)
      hijack = env["rack.hijack"]
      return [501, {"Content-Type" => "text/plain"}, ["This server does not support Rack hijack"]] unless hijack

      start!
      io = hijack.call
      io = env["rack.hijack_io"] unless io.respond_to?(:fileno)
      # The env lives as long as the socket: drop what would keep Puma's client object
      # (its buffers and parser) and rebuildable parses alive with it.
      HIJACK_KEYS.each { |key| env.delete(key) }
      env["rack.hijack?"] = false
      RackEnv.compact!(env)
      token = stash_env(env)
      begin
        native.handoff(io, {method: env["REQUEST_METHOD"], target: target || RackEnv.fullpath(env), transport: transport, body: body,
                            headers: RackEnv.handshake_headers(env, native_read_headers), tls: RackEnv.tls?(env), env_token: token})
      rescue Exception # rubocop:disable Lint/RescueException
        take_env(token)
        raise
      ensure
        io.close unless io.closed?
      end
      [-1, {}, []]
    end

    def expire_envs(now)
      @envs.shift while (oldest = @envs.first) && now - oldest.last.last > ENV_TTL
    end

    def not_found
      [404, {"Content-Type" => "text/plain"}, ["Page not found"]]
    end

    def spawn_worker(index)
      Thread.new do
        Thread.current.name = "anycable-rs-#{index}"
        loop do
          job = native.next_job(100)
          break if job == false
          next expire_stale_envs if job.nil?

          dispatcher.dispatch(job)
        end
      end
    end

    def install_exit_hook
      return if @exit_hook

      @exit_hook = true
      runtime = self
      at_exit { runtime.shutdown }
    end
  end
end
