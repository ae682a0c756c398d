# frozen_string_literal: true

require "fileutils"
require "openssl"
require "securerandom"
require "socket"
require "uri"
require "anycable_rs/private_dir"

module AnyCableRs
  # Embedded NATS (AnyCable's ANYCABLE_EMBED_NATS): a real nats-server (Debian's
  # `nats-server` binary, on PATH or at ANYCABLE_NATS_SERVER_BIN) run as a supervised
  # child of one process per machine, so the app's machines need no NATS of their own
  # to share broadcasts: each runs one, and the servers form a cluster over their route
  # ports (ANYCABLE_ENATS_CLUSTER, ANYCABLE_ENATS_CLUSTER_ROUTES). Every process on the
  # machine (Puma workers, consoles, job runners) uses it through ANYCABLE_NATS_SERVERS,
  # which Config points at ANYCABLE_ENATS_ADDR.
  #
  # One per machine: the process that holds an exclusive lock on
  # $TMPDIR/anycable-rs-<uid>/enats-<client port>.lock owns the child; every other
  # process that could own it (a sibling Puma worker without preload_app, a second
  # Puma) waits on that lock once a second and takes over when the owner is gone.
  # Who owns it, by how the app runs (see Boot.after_initialize):
  # - Puma single mode, `rails server`, the standalone `anycable-rs`: that process;
  # - Puma workers with preload_app: the master (this supervisor is plain Ruby threads
  #   there, no tokio); forked workers only connect;
  # - Puma workers without preload_app (the app loads only in workers): the first
  #   worker that boots; when it dies its child goes with it and another worker
  #   (or its replacement) starts a new one within about a second: re-owned, not kept.
  #
  # The child dies with its owner even on SIGKILL: it is started through `setpriv
  # --pdeathsig TERM` (util-linux) from the supervisor thread, which lives as long as
  # the owner. It is stopped (TERM, then KILL after 5 s) last: at exit, after this
  # process's sockets have drained; in a Puma cluster master, once the workers are gone.
  # Its output goes to the app's logger, each line prefixed "[nats-server]".
  #
  # Authenticated on both ports. Clients log in with an nkey user (#nkey): derived
  # from ANYCABLE_SECRET, or without a secret (one machine) a random one this user's
  # processes share in the private directory; a client proves it holds the seed by
  # signing the server's nonce, so whatever answers on the port learns no secret, and
  # nats-server's config holds only the public key. Routes between machines (which
  # take no nkeys) log in as ROUTE_USER with a password derived from the secret (the
  # same on every machine of a cluster, which therefore needs the secret), in the
  # config file (mode 0600 in the private directory), never on a command line.
  class EmbeddedNats
    PACKAGE = "nats-server"
    # AnyCable's default cluster name. One for every machine, so that routes given by
    # hand across regions join them into one cluster.
    CLUSTER_NAME = "anycable-cluster"
    # The oldest nats-server a clustered NATS broker is run on without a warning.
    MIN_CLUSTER_VERSION = "2.10"
    STANDBY_INTERVAL = 1.0
    MIN_BACKOFF = 0.2
    MAX_BACKOFF = 5.0
    # A child that ran this long before dying is restarted after MIN_BACKOFF again.
    STABLE_AFTER = 10.0
    STOP_TIMEOUT = 5.0
    READY_TIMEOUT = 5.0
    # The user routes log in as.
    ROUTE_USER = "anycable"

    class << self
      # Set by the standalone `anycable-rs` before it loads the app: it serves sockets.
      attr_accessor :standalone

      # From Boot.after_initialize: in a process that serves sockets (Puma, `rails
      # server`, the standalone server; consoles, rake and job runners only publish to
      # it), once per process.
      def boot(config = AnyCableRs.config)
        return unless config.embed_nats && (standalone || Broadcasting.server_process?)

        start(config)
      end

      # Owns the child, or stands by to take it over; returns once something answers
      # on the client port (or after READY_TIMEOUT, with a warning).
      def start(config = AnyCableRs.config)
        current = instance
        return current if current

        install_hooks
        @instance = new(config).start
      end

      # This process's supervisor (a forked child's inherited one is not its own).
      def instance
        i = @instance
        i if i && i.process == Process.pid
      end

      def stop
        instance&.stop
      end

      # The URL a NATS client on this machine uses for ANYCABLE_ENATS_ADDR: the
      # unspecified address (0.0.0.0, ::) becomes loopback. No credentials: clients
      # log in with #nkey.
      def client_url(enats_addr)
        uri = parse_url(enats_addr, "enats_addr")
        host = %w[0.0.0.0 ::].include?(uri.hostname) ? "127.0.0.1" : uri.hostname
        "nats://#{host.include?(":") ? "[#{host}]" : host}:#{uri.port || 4222}"
      end

      # The routes' password (hex): HMAC-SHA256 of ANYCABLE_SECRET (a cluster needs
      # the secret).
      def route_password(secret)
        OpenSSL::HMAC.hexdigest("SHA256", secret.to_s, "anycable-rs embedded NATS")
      end

      NKEY_INFO = "anycable-rs embedded NATS nkey"

      # The nkey user clients log in to the client port with: [seed, public key]. With
      # a secret, from HMAC-SHA256(secret, NKEY_INFO) (the same on every machine);
      # without, 32 random bytes made once per machine, user and client port (file
      # mode 0600 in the private directory), which this user's processes share.
      def nkey(secret, enats_addr = Config::DEFAULTS[:enats_addr])
        secret = secret.to_s
        return Native.nkey_user(OpenSSL::HMAC.hexdigest("SHA256", secret, NKEY_INFO)) unless secret.strip.empty?

        path = File.join(PrivateDir.base, "enats-#{parse_url(enats_addr, "enats_addr").port || 4222}.nkey")
        begin
          File.open(path, File::WRONLY | File::CREAT | File::EXCL, 0o600) { |f| f.write(SecureRandom.hex(32)) }
        rescue Errno::EEXIST
          nil
        end
        5.times do
          bytes = File.read(path).strip
          return Native.nkey_user(bytes) if bytes.size == 64

          sleep 0.01 # its maker is still writing it
        end
        raise Error, "anycable-rs: #{path} is not 32 bytes in hex: remove it"
      end

      # The nats-server program: ANYCABLE_NATS_SERVER_BIN (a path, or a name looked up
      # on PATH), else `nats-server` on PATH. Missing: an error naming the package.
      def binary(config, path: ENV["PATH"])
        wanted = config.nats_server_bin.to_s.strip
        wanted = PACKAGE if wanted.empty?
        found = wanted.include?("/") ? wanted : lookup(wanted, path)
        return File.expand_path(found) if found && File.file?(found) && File.executable?(found)

        where = if config.nats_server_bin.to_s.strip.empty?
          "no nats-server on PATH (#{path})"
        else
          "ANYCABLE_NATS_SERVER_BIN=#{config.nats_server_bin} is not an executable file#{wanted.include?("/") ? "" : " on PATH (#{path})"}"
        end
        raise Error, "anycable-rs: ANYCABLE_EMBED_NATS is on, but #{where}. Install Debian's package " \
          "#{PACKAGE.inspect} (`apt-get install -y #{PACKAGE}`; in a Dockerfile: " \
          "RUN apt-get update -qq && apt-get install --no-install-recommends -y #{PACKAGE}), " \
          "or set ANYCABLE_NATS_SERVER_BIN to the nats-server binary."
      end

      # `nats-server --version` of `bin` (a path or a name on PATH) as [major, minor,
      # patch]; nil when it cannot be run.
      def version(bin)
        out = IO.popen([bin, "--version"], err: File::NULL, &:read)
        out[/v?(\d+)\.(\d+)\.(\d+)/] && [$1, $2, $3].map(&:to_i)
      rescue SystemCallError
        nil
      end

      def version_at_least?(bin, wanted)
        found = version(bin)
        !found.nil? && (found <=> wanted.split(".").map(&:to_i)) >= 0
      end

      def lookup(name, path)
        path.to_s.split(File::PATH_SEPARATOR).each do |dir|
          file = File.join(dir, name)
          return file if File.file?(file) && File.executable?(file)
        end
        nil
      end

      def parse_url(value, key)
        uri = URI(value.to_s.strip)
        raise URI::InvalidURIError, "no host" if uri.host.nil? || uri.host.empty?

        uri
      rescue URI::InvalidURIError => e
        raise ArgumentError, "anycable-rs: #{key} must be a URL like nats://127.0.0.1:4222, got #{value.inspect} (#{e.message})"
      end

      # util-linux's setpriv with --pdeathsig (2.33+), checked once per process.
      def setpriv
        return @setpriv if defined?(@setpriv)

        bin = lookup("setpriv", ENV["PATH"])
        @setpriv = bin && system(bin, "--pdeathsig", "TERM", "--", "true", in: File::NULL, out: File::NULL, err: File::NULL) ? bin : nil
      end

      private

      def install_hooks
        return if @hooks

        @hooks = true
        # Last at exit: this process's sockets drain first (their unsubscribed and
        # disconnect callbacks, the extended protocol's sessions stored for a restore,
        # all of which may need NATS), whichever at_exit hook was registered first.
        at_exit do
          AnyCableRs.shutdown
          EmbeddedNats.stop
        end
        # A Puma cluster master that owns the child (preload_app) serves no sockets: its
        # workers do, and they need the child until they have drained. Puma's master
        # stops them (stop_workers) and then waits for every child it has
        # (Process.waitall): ours goes right after the workers. Not at on_stopped:
        # single mode fires that *before* the server drains (Puma 5 and 6), which
        # stopped NATS under the app's shutdown callbacks.
        # (Under `rails server` Puma is not loaded yet when the app boots.)
        begin
          require "puma/cluster" unless defined?(::Puma::Cluster)
        rescue LoadError
          nil
        end
        if defined?(::Puma::Cluster) && ::Puma::Cluster.method_defined?(:stop_workers) &&
            !::Puma::Cluster.ancestors.include?(PumaWorkersStopped)
          ::Puma::Cluster.prepend(PumaWorkersStopped)
        end
        # A forked child (a Puma worker of a preloading master) owns nothing: drop its
        # copies of the lock and the log pipe.
        if defined?(::ActiveSupport::ForkTracker)
          ::ActiveSupport::ForkTracker.after_fork { @instance&.forget_after_fork }
        end
      end
    end

    # Puma::Cluster#stop_workers returns once every worker has exited (SIGTERM runs it
    # from the master's trap; SIGINT and `pumactl stop` from its main loop).
    module PumaWorkersStopped
      def stop_workers(*, **)
        super
      ensure
        EmbeddedNats.stop
      end
    end

    attr_reader :process, :client_url, :child_pid

    def initialize(config, logger: AnyCableRs.logger)
      @config = config
      @logger = logger
      @process = Process.pid
      @bin = self.class.binary(config)
      listen = self.class.parse_url(config.enats_addr, "enats_addr")
      @host = listen.hostname
      @port = listen.port || 4222
      @client_url = self.class.client_url(config.enats_addr)
      @connect_host = URI(@client_url).hostname
      @nkey_public = self.class.nkey(config.secret, config.enats_addr).last
      @route_password = self.class.route_password(config.secret)
      @args = arguments(config)
      @stopping = false
      @owner = false
      @child_pid = nil
    end

    def start
      @lock = open_lock
      @owner = lock!
      @thread = Thread.new { run }
      @thread.thread_variable_set(:fork_safe, true) # Puma's preload: no "threads started in app boot" warning
      wait_until_ready
      self
    end

    def owner?
      @owner && !@stopping
    end

    # TERM the child, KILL it after `timeout`, reap it; release the lock. Safe in a
    # signal handler (Puma's SIGTERM in cluster mode stops the workers from its trap):
    # no Mutex, no logger.
    def stop(timeout = STOP_TIMEOUT)
      return if @stopping || @process != Process.pid

      @stopping = true
      if (pid = @child_pid)
        signal(pid, "TERM")
        unless reaped_within?(pid, timeout)
          signal(pid, "KILL")
          reaped_within?(pid, 2)
        end
        # Its last lines ("Server Exiting") into the log before this process goes.
        deadline = monotonic + 0.5
        sleep 0.02 while @log_thread&.alive? && monotonic < deadline
      end
      @lock&.close
    rescue IOError, SystemCallError
      nil
    end

    def forget_after_fork
      return if @process == Process.pid

      [@lock, @reader].each { |io| io&.close rescue nil } # rubocop:disable Style/RescueModifier
    end

    # The nats-server command line (without the setpriv wrapper). Credentials are in
    # its config file (#config_text), not here: every local user can read a command line.
    def command
      [@bin, "-c", config_path, *@args]
    end

    # nats-server's config file: the client login (the nkey user's public key), and
    # the cluster with its routes' logins (the password: routes take no nkeys).
    # Written (mode 0600) before each start.
    def config_text
      lines = ["authorization {", "  users = [ { nkey: #{@nkey_public.inspect} } ]", "}"]
      return lines.join("\n") + "\n" unless @cluster

      listen = self.class.parse_url(@cluster, "enats_cluster")
      routes = @routes.map do |r|
        uri = self.class.parse_url(r, "enats_cluster_routes")
        host = uri.hostname.include?(":") ? "[#{uri.hostname}]" : uri.hostname
        "nats-route://#{ROUTE_USER}:#{@route_password}@#{host}:#{uri.port || 5222}".inspect
      end
      listen_host = listen.hostname.include?(":") ? "[#{listen.hostname}]" : listen.hostname
      lines += [
        "cluster {",
        "  name: #{CLUSTER_NAME.inspect}",
        "  listen: #{"#{listen_host}:#{listen.port || 5222}".inspect}",
        # Clients keep to this machine's server (the cluster carries the rest) instead
        # of being told of the other machines' client URLs.
        "  no_advertise: true",
        "  authorization {",
        "    user: #{ROUTE_USER.inspect}",
        "    password: #{@route_password.inspect}",
        "  }",
        "  routes: [#{routes.join(", ")}]",
        "}"
      ]
      lines.join("\n") + "\n"
    end

    def config_path
      File.join(PrivateDir.base, "enats-#{@port}.conf")
    end

    private

    def arguments(config)
      args = ["-a", @host, "-p", @port.to_s, "--logtime=false"]
      args += jetstream_arguments(config) if config.broker == "nats"
      cluster = config.enats_cluster.to_s.strip
      @routes = config.enats_cluster_routes.to_s.split(",").map(&:strip).reject(&:empty?)
      if cluster.empty?
        unless @routes.empty?
          raise ArgumentError, "anycable-rs: ANYCABLE_ENATS_CLUSTER_ROUTES is set but ANYCABLE_ENATS_CLUSTER is not: " \
            "set it to the URL this machine's nats-server listens on for routes (e.g. nats://0.0.0.0:5222)"
        end
        return args
      end
      if config.secret.to_s.strip.empty?
        raise ArgumentError, "anycable-rs: the embedded NATS cluster (ANYCABLE_ENATS_CLUSTER) needs ANYCABLE_SECRET: " \
          "every machine derives the NATS password from it, and a cluster without one would let anyone who " \
          "reaches its ports in"
      end

      self.class.parse_url(cluster, "enats_cluster")
      @routes.each { |r| self.class.parse_url(r, "enats_cluster_routes") }
      @cluster = cluster
      warn_old_cluster_version if config.broker == "nats"
      args
    end

    # JetStream's replication in nats-server 2.9 (Debian 12's package) lost a broadcast
    # its majority had stored and acknowledged when a machine was cut off and came back
    # (seen in spec/cluster's partition example); 2.10 did not.
    def warn_old_cluster_version
      return if self.class.version_at_least?(@bin, MIN_CLUSTER_VERSION)

      found = self.class.version(@bin)&.join(".") || "unknown"
      @logger.warn "anycable-rs: the embedded NATS cluster runs nats-server #{found}: use #{MIN_CLUSTER_VERSION} or " \
        "later with ANYCABLE_BROKER=nats (2.9 can lose stored broadcasts when a machine is cut off and comes back; " \
        "README, \"Clustering\")"
    end

    # ANYCABLE_BROKER=nats: JetStream on, its files in ANYCABLE_ENATS_STORE_DIR (made
    # if missing) or a private directory per port; a server name, which a JetStream
    # cluster needs unique per server.
    def jetstream_arguments(config)
      dir = config.enats_store_dir.to_s.strip
      if dir.empty?
        dir = PrivateDir.ensure!(File.join(PrivateDir.base, "jetstream-#{@port}"), "the embedded NATS JetStream store")
      else
        FileUtils.mkdir_p(dir)
      end
      ["-js", "-sd", dir, "--server_name", "#{Socket.gethostname}-#{@port}"]
    end

    def lock_path
      File.join(PrivateDir.base, "enats-#{@port}.lock")
    end

    def open_lock
      File.open(lock_path, File::RDWR | File::CREAT, 0o600)
    end

    def lock!
      @lock.flock(File::LOCK_EX | File::LOCK_NB) ? true : false
    end

    # The supervisor thread: stand by until this process holds the lock, then keep a
    # child running until stop.
    def run
      Thread.current.name = "enats"
      Thread.current.report_on_exception = false
      until @owner || @stopping
        pause(STANDBY_INTERVAL)
        next if @stopping

        if (@owner = lock!)
          log(:info, "anycable-rs: the process that ran nats-server for #{@client_url} is gone; " \
            "process #{Process.pid} takes it over")
        end
      end
      begin
        supervise
      rescue StandardError => e
        unless @stopping
          log(:error, "anycable-rs: embedded NATS: #{e.message} (#{e.class}); trying again in #{MAX_BACKOFF}s")
          pause(MAX_BACKOFF)
          retry
        end
      end
    end

    def supervise
      backoff = MIN_BACKOFF
      foreign_noted = false
      until @stopping
        if answering?
          # Not ours: a NATS someone runs on this port, or our last child still on its
          # way out. Use it; start ours when the port is free.
          unless foreign_noted
            log(:warn, "anycable-rs: something already listens on #{@client_url} (not a nats-server this " \
              "process started); using it, and starting ours once the port is free")
            foreign_noted = true
          end
          pause(STANDBY_INTERVAL)
          next
        end
        foreign_noted = false

        began = monotonic
        pid = spawn_child
        status = wait_child(pid)
        break if @stopping

        backoff = MIN_BACKOFF if monotonic - began > STABLE_AFTER
        log(:error, "anycable-rs: nats-server (pid #{pid}) exited (#{describe(status)}); restarting in #{backoff}s")
        pause(backoff)
        backoff = [backoff * 2, MAX_BACKOFF].min
      end
    end

    def spawn_child
      File.open(config_path, File::WRONLY | File::CREAT | File::TRUNC, 0o600) do |f|
        f.chmod(0o600)
        f.write(config_text)
      end
      reader, writer = IO.pipe
      wrapper = self.class.setpriv
      cmd = wrapper ? [wrapper, "--pdeathsig", "TERM", "--", *command] : command
      # Its own process group: a Ctrl-C in the terminal stops it through us, in order.
      pid = Process.spawn(*cmd, in: File::NULL, out: writer, err: writer, pgroup: true)
      @child_pid = pid
      @reader = reader
      writer.close
      relay_output(reader)
      routes = @config.enats_cluster_routes
      cluster = @config.enats_cluster ? " (cluster #{@config.enats_cluster}#{routes ? ", routes #{routes}" : ""})" : ""
      log(:info, "anycable-rs: started nats-server (pid #{pid}) on #{@host}:#{@port}#{cluster}")
      unless wrapper
        log(:warn, "anycable-rs: setpriv (util-linux) not found: if this process is killed with SIGKILL, " \
          "nats-server (pid #{pid}) outlives it")
      end
      pid
    rescue SystemCallError => e
      writer&.close unless writer&.closed?
      reader&.close
      raise Error, "anycable-rs: could not start #{@bin}: #{e.message}"
    end

    # Polls (no blocking waitpid: a master that reaps every child, as Puma 6 does,
    # must not leave this thread waiting forever). Returns the status, or nil when
    # someone else reaped it.
    def wait_child(pid)
      termed = false
      loop do
        if @stopping && !termed # spawned just as stop ran, which found no child to TERM
          signal(pid, "TERM")
          termed = true
        end
        done = begin
          Process.wait2(pid, Process::WNOHANG)
        rescue Errno::ECHILD
          [pid, nil]
        end
        if done
          @child_pid = nil if @child_pid == pid
          return done[1]
        end
        sleep 0.1
      end
    end

    def reaped_within?(pid, timeout)
      deadline = monotonic + timeout
      loop do
        return true if @child_pid != pid

        begin
          return true if Process.wait(pid, Process::WNOHANG)
        rescue Errno::ECHILD
          return true
        end
        return false if monotonic > deadline

        sleep 0.05
      end
    end

    def relay_output(reader)
      @log_thread = Thread.new do
        Thread.current.name = "enats-log"
        reader.each_line do |line|
          line = line.chomp
          log(level_of(line), "[nats-server] #{line}") unless line.empty?
        end
      rescue IOError
        nil
      ensure
        reader.close unless reader.closed?
      end
      @log_thread.thread_variable_set(:fork_safe, true)
    end

    def level_of(line)
      case line
      when /\[(ERR|FTL)\]/ then :error
      when /\[WRN\]/ then :warn
      when /\[(DBG|TRC)\]/ then :debug
      else :info
      end
    end

    def wait_until_ready
      deadline = monotonic + READY_TIMEOUT
      until answering?
        if monotonic > deadline
          log(:warn, "anycable-rs: embedded NATS does not answer on #{@client_url} after #{READY_TIMEOUT}s; " \
            "NATS clients keep retrying")
          return
        end
        sleep 0.05
      end
    end

    def answering?
      Socket.tcp(@connect_host, @port, connect_timeout: 0.5).close
      true
    rescue SystemCallError, SocketError, IOError
      false
    end

    def pause(seconds)
      deadline = monotonic + seconds
      while !@stopping && (left = deadline - monotonic) > 0
        sleep [left, 0.1].min
      end
    end

    def signal(pid, name)
      Process.kill(name, pid)
    rescue Errno::ESRCH, Errno::EPERM
      nil
    end

    def describe(status)
      # Puma 6's cluster master reaps every child and logs the status itself.
      return "reaped elsewhere: Puma's master logs its status as a reaped unknown child" unless status
      return "signal #{Signal.signame(status.termsig)}" if status.signaled?

      "status #{status.exitstatus}"
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def log(level, message)
      @logger.public_send(level, message)
    rescue ThreadError # in a trap handler: the logger's lock is not allowed there
      $stderr.write("#{message}\n")
    end
  end
end
