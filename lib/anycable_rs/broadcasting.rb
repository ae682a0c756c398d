# frozen_string_literal: true

require "json"
require "net/http"
require "uri"

module AnyCableRs
  # Broadcasting in AnyCable's payload format. A process that serves sockets delivers
  # to its own clients; with the "http" adapter, a process that serves none (console,
  # job runner, rake, a plain Ruby script) POSTs to the server's /_broadcast — no
  # thread, no runtime.
  module Broadcasting
    module_function

    # data: a JSON string (what ActionCable.server.broadcast passes) or any object.
    def broadcast(stream, data, exclude_socket: nil)
      data = JSON.generate(data) unless data.is_a?(String)
      message = {stream: stream.to_s, data: data}
      message[:meta] = {exclude_socket: exclude_socket} if exclude_socket
      deliver(JSON.generate(message))
    end

    def deliver(payload)
      config = AnyCableRs.config
      if config.broadcast_adapter == "http" && !(AnyCableRs.runtime? && AnyCableRs.runtime.started?)
        post(config, payload)
      else
        AnyCableRs.runtime.native.apply_broadcast(payload)
      end
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

  # AnyCable's HTTP broadcast endpoint on Puma's port (POST /_broadcast), for
  # publishers that reach the app but not ANYCABLE_PORT. 201, 401, 422.
  class BroadcastEndpoint
    def initialize(app)
      @app = app
    end

    def call(env)
      config = AnyCableRs.config
      return @app.call(env) unless config.embedded && env["PATH_INFO"] == config.broadcast_path
      return text(405, "POST only") unless env["REQUEST_METHOD"] == "POST"

      key = config.effective_broadcast_key
      if key && !Rack::Utils.secure_compare(env["HTTP_AUTHORIZATION"].to_s, "Bearer #{key}")
        AnyCableRs.logger.warn "anycable-rs: broadcast request refused: bad or missing key"
        return text(401, "Unauthorized")
      end
      body = env["rack.input"].read(1024 * 1024 + 1).to_s
      return text(413, "Payload too large") if body.bytesize > 1024 * 1024

      AnyCableRs.runtime.native.apply_broadcast(body)
      text(201, "")
    rescue ArgumentError => e
      AnyCableRs.logger.warn "anycable-rs: broadcast request refused: #{e.message}"
      text(422, e.message)
    end

    private

    def text(status, body)
      [status, {"Content-Type" => "text/plain"}, [body]]
    end
  end
end
