# frozen_string_literal: true

# Starts one Puma for an example group and offers Action Cable client helpers.
module CableHelpers
  def self.included(base)
    base.extend(ClassMethods)
  end

  module ClassMethods
    def with_puma(env: {}, threads: 4, **opts)
      before(:all) { @puma = PumaServer.new(env: env, threads: threads, **opts).start }
      after(:all) do
        @puma&.stop
        @puma&.cleanup
      end
      after do |example|
        if example.exception && @puma
          warn "--- puma log ---\n#{@puma.log[-4000..] || @puma.log}"
          warn "--- rails log (tail) ---\n#{@puma.rails_log.lines.last(60).join}"
        end
      end
    end
  end

  attr_reader :puma

  # The node's own port (ANYCABLE_PORT, beside Puma's).
  def own_port
    Integer(puma.env["ANYCABLE_PORT"])
  end

  # A stream name signed as the app's helpers sign it (Rails' MessageVerifier, SHA256,
  # JSON), with the specs' usual streams secret.
  def signed(name, secret = "streams-s3cret")
    require "active_support"
    require "active_support/message_verifier"
    ActiveSupport::MessageVerifier.new(secret, digest: "SHA256", serializer: JSON).generate(name)
  end

  def cookies_for(name)
    res = puma.http(:get, "/login?name=#{name}")
    res.get_fields("set-cookie").map { |c| c.split(";").first }.join("; ")
  end

  def client(name: nil, path: "/cable", headers: {}, port: puma.port, **opts)
    headers = {"Origin" => "http://allowed.test"}.merge(headers)
    headers["Cookie"] = cookies_for(name) if name
    c = WsClient.new("ws://127.0.0.1:#{port}#{path}", headers: headers, **opts)
    (@clients ||= []) << c
    c
  end

  def connected(name: "alice", **opts)
    c = client(name: name, **opts)
    c.welcome!
    c
  end

  def subscribed(c, identifier)
    id = c.subscribe(identifier)
    msg = c.receive
    expect(msg).to eq("identifier" => id, "type" => "confirm_subscription")
    id
  end

  def message_for(c, id)
    msg = c.receive
    expect(msg["identifier"]).to eq(id)
    msg["message"]
  end

  def broadcast(stream, payload)
    expect(puma.http(:post, "/broadcast", stream: stream, payload: JSON.generate(payload)).code).to eq("201")
  end

  def events
    JSON.parse(puma.http(:get, "/events").body)
  end

  # A plain Ruby process with the gem loaded (a job runner, a console): [output, status].
  def ruby_with_gem(env, script)
    require "open3"
    Open3.capture2e(env, "ruby", "-I", File.expand_path("../../lib", __dir__), "-e", "require 'anycable_rs'; #{script}")
  end

  # Someone on the network reading every NATS subject on `port`: a socket subscribed to
  # `>`, and what it read so far. `nats_sniffed` reads what came since.
  def nats_sniffer(port)
    sniffer = TCPSocket.new("127.0.0.1", port)
    sniffer.gets
    sniffer.write("CONNECT {\"verbose\":false}\r\nSUB > 1\r\nPING\r\n")
    seen = +""
    seen << sniffer.readpartial(4096) until seen.include?("PONG")
    [sniffer, seen]
  end

  def wait_for(timeout: 5)
    deadline = Time.now + timeout
    loop do
      result = yield
      return result if result
      raise "condition not met within #{timeout}s" if Time.now > deadline

      sleep 0.05
    end
  end

  # Lines of the Rails log that mention `text`.
  # A JSON POST (AnyCable's HTTP broadcast and the like), with an Authorization header
  # when given.
  def post_json(path, body, auth: nil, port: puma.port)
    uri = URI("http://127.0.0.1:#{port}#{path}")
    req = Net::HTTP::Post.new(uri)
    req["Content-Type"] = "application/json"
    req["Authorization"] = auth if auth
    req.body = body
    Net::HTTP.start(uri.host, uri.port) { |h| h.request(req) }
  end

  # {worker pid => its sessions}, from /stats answered by each worker of a cluster.
  def sessions_per_worker(workers: 2, tries: 60)
    seen = {}
    tries.times do
      stats = JSON.parse(puma.http(:get, "/stats").body)
      seen[stats["pid"]] = stats.dig("server", "sessions") || 0
      break if seen.size == workers
    end
    expect(seen.size).to eq(workers), "only #{seen.size} worker(s) answered /stats"
    seen
  end

  # The Action Cable version the app under test runs (Debian's 6.1 in CI; others by
  # hand, from Rails' sources on RUBYLIB).
  def action_cable_at_least?(version)
    require "action_cable/gem_version"
    ActionCable.gem_version >= Gem::Version.new(version)
  end

  def log_lines(text)
    puma.rails_log.lines.grep(/#{Regexp.escape(text)}/)
  end

  def close_clients
    (@clients || []).each { |c| c.close rescue nil } # rubocop:disable Style/RescueModifier
    @clients = []
  end
end

RSpec.configure do |config|
  config.include CableHelpers, type: :cable
  config.after(type: :cable) { close_clients }
end
