# frozen_string_literal: true

require "base64"
require "digest"
require "json"
require "securerandom"
require "socket"
require "io/wait"
require "net/http"
require "uri"
require "anycable_rs/bounded_log"

module AnyCableRs
  # Broadcasting in AnyCable's payload format, by adapter:
  # - local: to this process's clients;
  # - nats: a server process publishes through its Rust NATS client (and, like every
  #   node, delivers when the message comes back); any other process publishes with a
  #   one-shot NATS connection from Ruby;
  # - http: a server process delivers to its clients; any other POSTs to
  #   http_broadcast_url.
  # A process that serves no sockets (console, job runner, rake, a plain script)
  # starts no thread and no runtime to broadcast.
  module Broadcasting
    module_function

    SID_DIGEST_PREFIX = "sha256:"

    # data: a JSON string (what ActionCable.server.broadcast passes) or any object.
    def broadcast(stream, data, exclude_socket: nil)
      data = JSON.generate(data) unless data.is_a?(String)
      exclude_socket = exclude_digest(exclude_socket.to_s) if exclude_socket
      config = AnyCableRs.config
      check_size!(data, config)
      if serving? && AnyCableRs.runtime.publishes?
        return AnyCableRs.runtime.native.publish(stream.to_s, data, exclude_socket)
      end
      if config.broadcast_adapter == "local" || serving?
        into_the_void!(stream) unless serving?
        return AnyCableRs.runtime.native.broadcast(stream.to_s, data, exclude_socket)
      end

      message = {stream: stream.to_s, data: data}
      message[:meta] = {exclude_socket: exclude_socket} if exclude_socket
      deliver(JSON.generate(message))
    end

    # A raw AnyCable payload (one message, a batch, or a command).
    def deliver(payload)
      config = AnyCableRs.config
      case config.broadcast_adapter
      when "nats"
        return AnyCableRs.runtime.native.publish_payload(payload) if serving?

        payload = digest_excludes(payload)
        stored, rest = config.broker == "nats" ? JetStream.split(payload) : [[], payload]
        NatsPublisher.publish(config.nats_servers, config.nats_channel, rest, stored: stored,
          nkey_seed: config.nats_nkey_seed, credentials: config.nats_credentials)
      when "redis"
        return AnyCableRs.runtime.native.publish_payload(payload) if serving?

        payload = digest_excludes(payload)
        RedisPublisher.publish(config.redis_url, config.redis_channel, payload)
      when "http"
        return apply_here(payload) if serving?

        post(config, digest_excludes(payload))
      else
        into_the_void!(nil) unless serving?
        apply_here(payload)
      end
    end

    # How a broadcast names the socket it skips when it leaves the process: by its
    # sid's digest (anycable_core's protocol::broadcast::exclude_digest makes the same).
    # A sid restores its session (a credential): it never travels on a pub/sub subject
    # nor is stored. Receivers match a raw sid or its digest.
    def exclude_digest(sid)
      return sid if sid.start_with?(SID_DIGEST_PREFIX)

      "#{SID_DIGEST_PREFIX}#{Digest::SHA256.hexdigest(sid)}"
    end

    # A raw payload with each exclude_socket as its digest (unchanged when it has none).
    def digest_excludes(payload)
      return payload unless payload.include?("exclude_socket")

      parsed = JSON.parse(payload)
      changed = false
      (parsed.is_a?(Array) ? parsed : [parsed]).each do |m|
        meta = m.is_a?(Hash) && m["meta"]
        next unless meta.is_a?(Hash) && meta["exclude_socket"].is_a?(String)

        digest = exclude_digest(meta["exclude_socket"])
        changed ||= digest != meta["exclude_socket"]
        meta["exclude_socket"] = digest
      end
      changed ? JSON.generate(parsed) : payload
    rescue JSON::ParserError
      payload
    end

    # In a server process: to this process's clients, and with Puma workers to the
    # other workers' too.
    def apply_here(payload)
      runtime = AnyCableRs.runtime
      runtime.publishes? ? runtime.native.publish_payload(payload) : runtime.native.apply_broadcast(payload)
    end

    # A broadcast whose frame would not fit in a client's pending-bytes cap can reach
    # no one (every subscriber would be dropped as too_slow): refused where it enters,
    # in every process, by the server's own rule.
    def check_size!(data, config)
      Native.check_broadcast_size(data.bytesize, config.max_pending_bytes)
    rescue ArgumentError => e
      raise ArgumentError, "anycable-rs: #{e.message}"
    end

    def serving?
      AnyCableRs.runtime? && AnyCableRs.runtime.started?
    end

    # Whether this process serves (or will serve) sockets: a Puma server (its config is
    # set, also under `rails server`, before it takes requests), `rails server`, the
    # standalone server (started), or any process a Rack request reached us in.
    def server_process?
      return true if @web_pid == Process.pid
      return true if defined?(::Rails::Server)

      defined?(::Puma) && ::Puma.respond_to?(:cli_config) && !::Puma.cli_config.nil?
    end

    # Called by the Rack middleware on each request: this process is a web server.
    def web_process!
      @web_pid = Process.pid unless @web_pid == Process.pid
    end

    # A local broadcast from a process that serves no sockets (a console, a job runner,
    # `rails runner`, rake) reaches no client anywhere. Say so, loudly, once per process.
    def into_the_void!(stream)
      return if @void_pid == Process.pid || server_process?

      @void_pid = Process.pid
      what = stream ? "ActionCable.server.broadcast(#{stream.to_s.inspect}, …)" : "a broadcast"
      message = "anycable-rs: #{what} reached no client: ANYCABLE_BROADCAST_ADAPTER is local (in-process) " \
        "and this process (#{File.basename($PROGRAM_NAME)}, pid #{Process.pid}) serves no WebSockets. " \
        "Set ANYCABLE_BROADCAST_ADAPTER=redis (or nats, or http) for every process, so that broadcasts from " \
        "consoles, job runners and scripts reach the servers. (Said once per process.)"
      logger = AnyCableRs.logger
      logger.error(message)
      return if defined?(::ActiveSupport::Logger) && logger.is_a?(::Logger) &&
        ::ActiveSupport::Logger.logger_outputs_to?(logger, $stderr, $stdout)

      warn(message)
    end

    def post(config, payload)
      uri = URI(config.http_broadcast_url)
      request = Net::HTTP::Post.new(uri)
      request["Content-Type"] = "application/json"
      key = config.effective_broadcast_key
      request["Authorization"] = "Bearer #{key}" if key
      request.body = payload
      response = Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == "https",
        open_timeout: 5, read_timeout: 5) { |http| http.request(request) }
      return true if response.code == "201"

      raise Error, "broadcast to #{uri} failed: #{response.code} #{response.body.to_s[0, 200]}"
    end
  end

  # Publishes to NATS from a process that runs no NATS client: connect, PUB, PING,
  # wait for PONG (so the server has it), close. Plain TCP (or TLS), no thread.
  module NatsPublisher
    module_function

    # `payload` (or nil) goes to the core subject; each [subject, body] of `stored` to
    # JetStream, acknowledged before this returns (ANYCABLE_BROKER=nats). `tls://`
    # (or a server that requires TLS) upgrades after its INFO, as NATS clients do, and
    # checks the certificate against the system's roots (SSL_CERT_FILE, as the Rust
    # client) and the host name.
    def publish(servers, subject, payload, stored: [], timeout: 5, nkey_seed: nil, credentials: nil)
      uri = URI(servers.split(",").first.to_s.strip)
      nkey_seed = nil if nkey_seed.to_s.empty?
      credentials = nil if credentials.to_s.empty?
      raise Error, "both ANYCABLE_NATS_NKEY_SEED and ANYCABLE_NATS_CREDENTIALS are set: give one" if nkey_seed && credentials

      jwt, nkey_seed = read_credentials(credentials) if credentials
      raw = Socket.tcp(uri.host, uri.port || 4222, connect_timeout: timeout)
      socket = Reader.new(raw, timeout)
      info = JSON.parse(socket.line[/\AINFO (.*)/, 1] || "{}")
      # Holding credentials, a server that asks for no login is not the one they are
      # for (someone squatting the port): neither the password nor the broadcast go.
      if (uri.user || nkey_seed) && !info["auth_required"]
        raise Error, "NATS at #{uri.host}:#{uri.port} asks for no login, though credentials are set: not used"
      end
      socket = Reader.new(tls(raw, uri.host, timeout), timeout) if uri.scheme == "tls" || info["tls_required"]
      options = {verbose: false, pedantic: false, lang: "ruby", version: AnyCableRs::VERSION, protocol: 1,
                 headers: true, no_responders: true, tls_required: socket.tls?}
      options.merge!(nkey_seed ? nkey_login(nkey_seed, info["nonce"], jwt) : url_login(uri))
      out = +"CONNECT #{JSON.generate(options)}\r\n"
      inbox = "_INBOX.#{SecureRandom.hex(12)}"
      out << "SUB #{inbox}.* 1\r\n" unless stored.empty?
      stored.each_with_index do |(stored_subject, body), i|
        out << "PUB #{stored_subject} #{inbox}.#{i} #{body.bytesize}\r\n#{body}\r\n"
      end
      out << "PUB #{subject} #{payload.bytesize}\r\n#{payload}\r\n" if payload
      out << "PING\r\n"
      socket.write(out)
      await_acks(socket, stored.size)
      true
    ensure
      socket&.close
      raw&.close
    end

    # A URL's user and password (nats://user:password@host), or token (nats://token@host),
    # percent-decoded.
    def url_login(uri)
      return {} unless uri.user

      user = URI::DEFAULT_PARSER.unescape(uri.user)
      uri.password ? {user: user, pass: URI::DEFAULT_PARSER.unescape(uri.password)} : {auth_token: user}
    end

    # CONNECT's nkey login: the public key (or, from a credentials file, the user JWT
    # that names it), and the server's nonce signed with the seed (the seed itself
    # never leaves the process).
    def nkey_login(seed, nonce, jwt = nil)
      raise Error, "NATS sent no nonce to sign (does it take nkey logins?)" if nonce.to_s.empty?

      signature = Native.nkey_sign(seed, nonce.to_s)
      jwt ? {jwt: jwt, sig: signature} : {nkey: Native.nkey_public(seed), sig: signature}
    end

    # A NATS credentials file's user JWT and seed (the format `nsc` writes: each in a
    # dashed BEGIN/END block). Neither is quoted in an error.
    def read_credentials(path)
      text = File.read(path)
      blocks = text.scan(/-{3,}[^\n]*-{3,}\r?\n([\w\-.=]+)\r?\n-{3,}[^\n]*-{3,}/).flatten
      jwt = blocks.find { |b| b.count(".") == 2 }
      seed = blocks.find { |b| b.start_with?("SU") }
      raise Error, "ANYCABLE_NATS_CREDENTIALS (#{path}) holds no user JWT and seed" unless jwt && seed

      [jwt, seed]
    rescue SystemCallError => e
      raise Error, "ANYCABLE_NATS_CREDENTIALS (#{path}): #{e.message}"
    end

    def tls(raw, host, timeout, what = "NATS")
      require "openssl"
      context = OpenSSL::SSL::SSLContext.new
      context.set_params(verify_mode: OpenSSL::SSL::VERIFY_PEER, verify_hostname: true)
      ssl = OpenSSL::SSL::SSLSocket.new(raw, context)
      ssl.hostname = host
      ssl.sync_close = true
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      loop do
        state = ssl.connect_nonblock(exception: false)
        break unless %i[wait_readable wait_writable].include?(state)

        left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        ready = left.positive? && (state == :wait_readable ? raw.wait_readable(left) : raw.wait_writable(left))
        raise Error, "#{what} TLS handshake timed out" unless ready
      end
      ssl
    rescue OpenSSL::SSL::SSLError => e
      raise Error, "#{what} TLS: #{e.message}"
    end

    # Reads until the PONG and one JetStream ack per stored message have come.
    def await_acks(socket, expected)
      acks = 0
      pong = false
      until pong && acks == expected
        line = socket.line
        case line
        when /\APONG/ then pong = true
        when /\APING/ then socket.write("PONG\r\n")
        when /\A-ERR/ then raise Error, "NATS refused the broadcast: #{line.strip}"
        when /\AMSG /
          # MSG <subject> <sid> [reply-to] <bytes> (the server may leave two spaces)
          ack = JSON.parse(socket.bytes(line.split.last.to_i))
          raise Error, "NATS JetStream did not store the broadcast: #{ack["error"]}" if ack["error"]

          acks += 1
        when /\AHMSG /
          # HMSG <subject> <sid> [reply-to] <header bytes> <total bytes>: a status
          status = socket.bytes(line.split.last.to_i)[%r{\ANATS/1\.0 (\d+)}, 1]
          raise Error, "NATS JetStream did not store the broadcast (status #{status}): is the history stream " \
            "#{JetStream::STREAM} there? A server with ANYCABLE_BROKER=nats makes it when it starts."
        end
      end
    end

    # Lines and counted bytes from a plain or TLS socket, each read bounded by the
    # timeout. Its own buffer: a TLS socket may hold decrypted bytes the raw socket's
    # readiness does not show.
    class Reader
      MAX_LINE = 64 * 1024

      def initialize(socket, timeout, what = "NATS")
        @socket = socket
        @timeout = timeout
        @what = what
        @buffer = +""
      end

      def tls?
        defined?(OpenSSL::SSL::SSLSocket) ? @socket.is_a?(OpenSSL::SSL::SSLSocket) : false
      end

      def write(data)
        @socket.write(data)
      end

      def close
        @socket.close
      end

      def line
        until (i = @buffer.index("\r\n"))
          raise Error, "#{@what} sent a line over #{MAX_LINE} bytes" if @buffer.bytesize > MAX_LINE

          fill
        end
        @buffer.slice!(0, i + 2)
      end

      # `count` bytes and the CRLF after them (the CRLF dropped).
      def bytes(count)
        fill while @buffer.bytesize < count + 2
        @buffer.slice!(0, count + 2).byteslice(0, count)
      end

      private

      def fill
        chunk = @socket.read_nonblock(65_536, exception: false)
        case chunk
        when nil then raise Error, "#{@what} closed the connection"
        when :wait_readable
          raise Error, "#{@what} did not answer within #{@timeout}s" unless io.wait_readable(@timeout)
        when :wait_writable
          raise Error, "#{@what} did not answer within #{@timeout}s" unless io.wait_writable(@timeout)
        else @buffer << chunk
        end
      end

      def io
        @socket.respond_to?(:to_io) ? @socket.to_io : @socket
      end
    end
  end

  # ANYCABLE_BROKER=nats: each stream's history is a subject of one JetStream stream;
  # the Rust side (anycable_core::jetstream::subject_for) names them the same way.
  module JetStream
    STREAM = "anycable_history"
    PREFIX = "anycable_history."
    MAX_TOKEN = 1024

    module_function

    # The name's UTF-8 bytes, as the stored JSON body (and the Rust side) have them.
    def subject_for(stream)
      name = stream.to_s
      name = name.encode(Encoding::UTF_8) unless name.encoding == Encoding::UTF_8 || name.encoding == Encoding::BINARY
      encoded = Base64.urlsafe_encode64(name.b, padding: false)
      return "#{PREFIX}s#{encoded}" if encoded.bytesize <= MAX_TOKEN

      "#{PREFIX}h#{Digest::SHA256.hexdigest(name.b)}"
    end

    # [[subject, body] for each message to store, the rest as a payload or nil]:
    # transient messages and commands are not stored.
    def split(payload)
      parsed = JSON.parse(payload)
      messages = parsed.is_a?(Array) ? parsed : [parsed]
      stored, rest = messages.partition do |m|
        m.is_a?(Hash) && m.key?("stream") && !(m["meta"].is_a?(Hash) && m["meta"]["transient"])
      end
      bodies = stored.map do |m|
        body = {"stream" => m["stream"].to_s, "data" => m["data"]}
        exclude = m["meta"].is_a?(Hash) && m["meta"]["exclude_socket"]
        body["meta"] = {"exclude_socket" => Broadcasting.exclude_digest(exclude.to_s)} if exclude
        [subject_for(m["stream"].to_s), JSON.generate(body)]
      end
      rest_payload = if rest.empty? then nil
      elsif parsed.is_a?(Array) then JSON.generate(rest)
      else payload
      end
      [bodies, rest_payload]
    end
  end

  # PUBLISH from a process that runs no Redis client: plain RESP over TCP, no thread.
  module RedisPublisher
    module_function

    # PUBLISH over one short connection: redis:// or rediss:// (TLS, the certificate
    # checked against the system's roots and the host name, as the Rust client does),
    # AUTH with the URL's user and password (percent-decoded); replies read bounded.
    def publish(url, channel, payload, timeout: 5)
      uri = URI(url)
      raw = Socket.tcp(uri.host, uri.port || 6379, connect_timeout: timeout)
      io = uri.scheme == "rediss" ? NatsPublisher.tls(raw, uri.host, timeout, "Redis") : raw
      socket = NatsPublisher::Reader.new(io, timeout, "Redis")
      if uri.password
        password = URI::DEFAULT_PARSER.unescape(uri.password)
        user = URI::DEFAULT_PARSER.unescape(uri.user.to_s)
        call(socket, user.empty? ? ["AUTH", password] : ["AUTH", user, password])
      end
      reply = call(socket, ["PUBLISH", channel, payload])
      raise Error, "Redis refused the broadcast: #{reply}" unless reply.start_with?(":")

      true
    ensure
      socket&.close
      raw&.close
    end

    def call(socket, args)
      socket.write("*#{args.size}\r\n" + args.map { |a| "$#{a.bytesize}\r\n#{a}\r\n" }.join)
      line = socket.line
      raise Error, "Redis: #{BoundedLog.clip(line.strip)}" if line.start_with?("-")

      line.strip
    end
  end

  # AnyCable's HTTP broadcast endpoint on Puma's port (POST /_broadcast), for
  # publishers that reach the app but not ANYCABLE_PORT. 201, 401, 422; only when a
  # broadcast key is configured (otherwise the request goes on to the app: 404).
  class BroadcastEndpoint
    def initialize(app)
      @app = app
    end

    # AnyCable's POST /_broadcast on Puma's port. The rules (the key, methods, sizes,
    # statuses) are the server's, one implementation for both ports
    # (anycable-core's http::endpoints): this only hands it the request. Without a key
    # it is not served, and the app answers (404).
    def call(env)
      Broadcasting.web_process!
      config = AnyCableRs.config
      return @app.call(env) unless config.embedded && env["PATH_INFO"] == config.broadcast_path

      runtime = AnyCableRs.runtime
      return @app.call(env) unless runtime.native.serves_broadcasts?

      peer = env["REMOTE_ADDR"].to_s
      refusal = runtime.native.admit_broadcast(env["REQUEST_METHOD"], env["HTTP_AUTHORIZATION"], peer)
      return text(*refusal) if refusal

      # Published through the pub/sub when there is one: the server runs here from now.
      begin
        runtime.start!
      rescue RuntimeError => e
        return text(503, "Not serving: #{e.message}")
      end
      body = env["rack.input"].read(Native::MAX_BROADCAST_BODY + 1).to_s
      text(*runtime.native.take_broadcast(body, peer))
    end

    private

    def text(status, body)
      [status, {"Content-Type" => "text/plain"}, [body]]
    end
  end
end
