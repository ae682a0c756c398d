# frozen_string_literal: true

require "stringio"

module AnyCableRs
  # Rack env helpers: reading a hijacked request, and building an env for a socket
  # accepted on the server's own port (no Rack server saw that request).
  module RackEnv
    module_function

    def websocket?(env)
      env["REQUEST_METHOD"] == "GET" &&
        env["HTTP_UPGRADE"].to_s.casecmp?("websocket") &&
        env["HTTP_CONNECTION"].to_s.downcase.include?("upgrade")
    end

    # Why an upgrade request breaks RFC 6455 (version 13, a key of 16 bytes in
    # base64), or nil.
    def upgrade_problem(env)
      return "unsupported Sec-WebSocket-Version" unless env["HTTP_SEC_WEBSOCKET_VERSION"].to_s.strip == "13"

      key = env["HTTP_SEC_WEBSOCKET_KEY"].to_s.strip
      return "invalid Sec-WebSocket-Key" unless key.match?(%r{\A[A-Za-z0-9+/]{22}==\z})

      nil
    end

    # Memoized parses that Rack and Rails rebuild on demand from the headers. A socket's
    # env lives as long as the socket, so it keeps only what cannot be rebuilt.
    REBUILDABLE = %w[
      action_dispatch.cookies rack.request.cookie_hash rack.request.cookie_string
      rack.request.query_hash rack.request.query_string rack.request.form_hash
      action_dispatch.request.query_parameters action_dispatch.request.request_parameters
      action_dispatch.request.parameters action_dispatch.request.formats
      action_dispatch.request.content_type rack.after_reply
    ].freeze

    def compact!(env)
      REBUILDABLE.each { |key| env.delete(key) }
      # Resolved once, as a String: the resolver object holds the whole request.
      ip = env["action_dispatch.remote_ip"]
      env["action_dispatch.remote_ip"] = ip.to_s if ip && !ip.is_a?(String)
      env
    end

    # What a connection keeps of its env after `connect` (unless retain_env): the
    # request line, every header, the client's address — as one frozen String of
    # "key\0value" pairs, about the size of the headers. `restore` builds an env
    # from it as a socket on the server's own port gets one (the app's env_config, a
    # lazily loaded session), for a channel that reads `request`, `cookies`, `session`,
    # `params` or `env` later. What middleware put in the env is not in it.
    SNAPSHOT_KEYS = %w[
      REQUEST_METHOD SCRIPT_NAME PATH_INFO QUERY_STRING SERVER_NAME SERVER_PORT SERVER_PROTOCOL
      REMOTE_ADDR HTTPS rack.url_scheme action_dispatch.remote_ip action_dispatch.request_id
      CONTENT_TYPE CONTENT_LENGTH ORIGINAL_FULLPATH ORIGINAL_SCRIPT_NAME REQUEST_URI REQUEST_PATH
    ].freeze

    # Left out: the handshake's own headers, which only the upgrade needed.
    SNAPSHOT_SKIP = %w[
      HTTP_UPGRADE HTTP_CONNECTION HTTP_SEC_WEBSOCKET_KEY HTTP_SEC_WEBSOCKET_VERSION HTTP_SEC_WEBSOCKET_EXTENSIONS
    ].freeze

    def snapshot(env)
      parts = []
      env.each do |key, value|
        next unless value.is_a?(String) && (key.start_with?("HTTP_") || SNAPSHOT_KEYS.include?(key))
        next if SNAPSHOT_SKIP.include?(key) || key.include?("\0") || value.include?("\0")

        parts << key << value
      end
      ip = env["action_dispatch.remote_ip"]
      parts << "action_dispatch.remote_ip" << ip.to_s if ip && !ip.is_a?(String)
      parts.join("\0").freeze
    end

    # The pairs of a snapshot, as a Hash (no Rack or Rails keys added).
    def snapshot_pairs(snapshot)
      snapshot.split("\0", -1).each_slice(2).to_h { |key, value| [key, value.to_s] }
    end

    def restore(snapshot)
      railsify(add_rack_keys(snapshot_pairs(snapshot)))
    end

    # What Rack's spec requires of an env that no Rack server built (the scheme only
    # where the env does not say it).
    def add_rack_keys(env)
      env["rack.version"] = [1, 3]
      env["rack.url_scheme"] ||= "http"
      env["rack.input"] = StringIO.new(+"")
      env["rack.errors"] = $stderr
      env["rack.multithread"] = true
      env["rack.multiprocess"] = false
      env["rack.run_once"] = false
      env
    end

    def fullpath(env)
      path = "#{env["SCRIPT_NAME"]}#{env["PATH_INFO"]}"
      query = env["QUERY_STRING"].to_s
      query.empty? ? path : "#{path}?#{query}"
    end

    # The path as Rails logs it (ActionDispatch::Request#filtered_path, which Action
    # Cable's own "Started GET" lines use): query values of the app's filtered parameters
    # (`config.filter_parameters`, in env["action_dispatch.parameter_filter"]) replaced
    # by [FILTERED]. Without building a request; the compiled filter is kept while the
    # app's filter list stays the same object.
    def filtered_fullpath(env)
      path = "#{env["SCRIPT_NAME"]}#{env["PATH_INFO"]}"
      query = env["QUERY_STRING"].to_s
      return path if query.empty?

      filter = parameter_filter(env["action_dispatch.parameter_filter"])
      return "#{path}?#{query}" unless filter

      filtered = query.split(/([&;])/).map do |part|
        next part unless part.include?("=")

        key, value = part.split("=", 2)
        filter.filter(key => value).first.join("=")
      end
      "#{path}?#{filtered.join}"
    end

    def parameter_filter(filters)
      return nil if filters.nil? || (filters.respond_to?(:empty?) && filters.empty?)

      cached = @parameter_filter
      return cached.last if cached && cached.first.equal?(filters)

      require "active_support/parameter_filter"
      filter = ActiveSupport::ParameterFilter.new(filters)
      @parameter_filter = [filters, filter]
      filter
    end

    # What the Rust side reads of a hijacked request: the upgrade itself, what the
    # origin check needs (Origin, Host, and whether a proxy says the request came over
    # TLS), and the HTTP transports' own headers. The app's code gets the whole env.
    HANDSHAKE_HEADERS = %w[
      upgrade connection sec-websocket-key sec-websocket-version sec-websocket-protocol
      sec-websocket-extensions origin host x-forwarded-ssl x-forwarded-scheme x-forwarded-proto
      x-anycable-restore-sid last-event-id sec-fetch-site x-anycable-poll-id x-signed if-none-match
      access-control-request-headers
    ].to_h { |name| [name, "HTTP_#{name.upcase.tr("-", "_")}"] }.freeze

    # The request reached this server over TLS (Puma terminating it).
    def tls?(env)
      env["HTTPS"] == "on" || env["rack.url_scheme"] == "https"
    end

    # [[name, value], …] with lower-case, dash-separated names; `extra`: more header
    # names the server reads (the JWT's X-<param>).
    def handshake_headers(env, extra = [])
      pairs = HANDSHAKE_HEADERS.filter_map do |name, key|
        value = env[key]
        [name, value] if value.is_a?(String)
      end
      extra.each do |name|
        value = env["HTTP_#{name.upcase.tr("-", "_")}"]
        pairs << [name, value] if value.is_a?(String)
      end
      pairs
    end

    def build(method, target, headers, remote_ip)
      path, query = target.split("?", 2)
      env = {
        "REQUEST_METHOD" => method,
        "SCRIPT_NAME" => "",
        "PATH_INFO" => path,
        "QUERY_STRING" => query.to_s,
        "SERVER_PROTOCOL" => "HTTP/1.1",
        "REMOTE_ADDR" => remote_ip || "127.0.0.1"
      }
      add_rack_keys(env)
      headers.each do |name, value|
        key = name.upcase.tr("-", "_")
        key = "HTTP_#{key}" unless %w[CONTENT_TYPE CONTENT_LENGTH].include?(key)
        env[key] = value
      end
      host, port = env["HTTP_HOST"].to_s.split(":", 2)
      env["SERVER_NAME"] = host.to_s.empty? ? "localhost" : host
      env["SERVER_PORT"] = port || "80"
      env
    end

    # What Rails' middleware would have added to an env: the app's env_config (cookie
    # key generator, secrets) and a lazily loaded session from the app's session store.
    def railsify(env)
      app = defined?(::Rails.application) && ::Rails.application
      return env unless app

      env.merge!(app.env_config)
      store = session_store(app)
      store&.send(:prepare_session, ActionDispatch::Request.new(env))
      env
    end

    def session_store(app)
      @session_store = nil unless @session_store_app.equal?(app)
      @session_store_app = app
      @session_store ||= begin
        klass = app.config.session_store
        klass.is_a?(Class) ? klass.new(nil, app.config.session_options || {}) : nil
      end
    end
  end
end
