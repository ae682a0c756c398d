# frozen_string_literal: true

require "spec_helper"
require "base64"
require "active_support"
require "active_support/message_verifier"

# AnyCable's JWT identification: a verified token identifies the connection without the
# app's connect (and without any Ruby job until the app's own channels are used).
# Tokens are minted by the app itself (AnyCableRs::JWT, GET /token).
RSpec.describe "JWT identification (real Puma)", type: :cable do
  own_port = PumaServer.free_port
  with_puma(env: {"ANYCABLE_JWT_SECRET" => "jwt-s3cret", "ANYCABLE_PORT" => own_port.to_s,
                  "ANYCABLE_STREAMS_SECRET" => "streams-s3cret", "ANYCABLE_METRICS_HTTP" => "/metrics"})

  let(:own_port) { Integer(puma.env["ANYCABLE_PORT"]) }

  def token(name, exp: nil)
    puma.http(:get, "/token?name=#{name}#{"&exp=#{exp}" if exp}").body
  end

  def ruby_jobs
    text = Net::HTTP.get(URI("http://127.0.0.1:#{own_port}/metrics"))
    _, samples = PrometheusText.parse(text)
    samples.select { |s| s.name == "anycable_rs_jobs_total" }.to_h { |s| [s.labels["kind"], s.value] }
  end

  def jwt_client(path: nil, **opts)
    client(port: own_port, path: path || "/cable", **opts)
  end

  it "welcomes a valid token without running connect or any Ruby job, until an app channel needs the connection" do
    puma.http(:delete, "/events")
    t = token("jill")
    before = ruby_jobs
    c = jwt_client(path: "/cable?jid=#{t}")
    expect(c.receive).to include("type" => "welcome")
    signed = ActiveSupport::MessageVerifier.new("streams-s3cret", digest: "SHA256", serializer: JSON).generate("news")
    id = c.subscribe(channel: "$pubsub", signed_stream_name: signed)
    expect(c.receive).to eq("identifier" => id, "type" => "confirm_subscription")
    expect(puma.http(:post, "/broadcast", stream: "news", payload: '{"n":1}').code).to eq("201")
    expect(c.receive).to eq("identifier" => id, "message" => {"n" => 1})
    expect(ruby_jobs).to eq(before)
    # The app's channel: the connection object is built then, identified from the token.
    state = subscribed(c, channel: "StateChannel", room: "j")
    c.perform(state, "whoami")
    expect(message_for(c, state)).to eq("user" => "jill", "tab" => "jwt")
    expect(events.map(&:first)).not_to include("connect")
    # The token is a credential: the request log shows it filtered (Rails' line and ours).
    wait_for { puma.rails_log.include?("jid=[FILTERED]") }
    expect(puma.rails_log).not_to include(t)
  end

  it "takes the token from the anycable-token subprotocol and the X-JID header too" do
    c = jwt_client(protocols: ["actioncable-v1-json", "anycable-token.#{token("sub")}"])
    expect(c.receive).to include("type" => "welcome")
    h = jwt_client(headers: {"X-JID" => token("hdr")})
    expect(h.receive).to include("type" => "welcome")
    state = subscribed(h, channel: "StateChannel", room: "h")
    h.perform(state, "whoami")
    expect(message_for(h, state)).to eq("user" => "hdr", "tab" => "jwt")
  end

  it "answers an expired token with token_expired and a forged or unsigned one with unauthorized" do
    expired = jwt_client(path: "/cable?jid=#{token("old", exp: Time.now.to_i - 10)}")
    expect(expired.receive).to eq("type" => "disconnect", "reason" => "token_expired", "reconnect" => false)
    head, body, = token("eve").split(".")
    forged = "#{head}.#{body}.#{Base64.urlsafe_encode64(OpenSSL::HMAC.digest("SHA256", "wrong", "#{head}.#{body}"), padding: false)}"
    unsigned = "#{Base64.urlsafe_encode64('{"alg":"none"}', padding: false)}.#{body}."
    [forged, unsigned, token("eve")[0, 30]].each do |bad|
      c = jwt_client(path: "/cable?jid=#{bad}")
      expect(c.receive).to eq("type" => "disconnect", "reason" => "unauthorized", "reconnect" => false)
    end
    expect(puma.log).not_to include(forged)
    # A 64 KiB token: refused at the request head, on either port, and nothing else notices.
    [own_port, puma.port].each do |port|
      sock = TCPSocket.new("127.0.0.1", port)
      sock.write("GET /cable?jid=#{"x" * 65_536} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://allowed.test\r\n\r\n")
      status = sock.gets.to_s
      sock.close
      # Ours answers HTTP/1.1; Puma its own parse errors as its version does.
      version = port == own_port ? "HTTP/1.1" : RunningVersions.puma_parse_error_version
      expect(status).to match(%r{\A#{Regexp.escape(version)} 4\d\d}), "port #{port}: #{status.inspect}"
    end
    # Without a token, the app's own connect (cookies) still decides.
    expect(connected(name: "alice", port: own_port)).to be_a(WsClient)
  end
end

RSpec.describe "JWT identification, enforced (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_JWT_SECRET" => "jwt-s3cret", "ANYCABLE_ENFORCE_JWT" => "true"})

  it "refuses a connection without a token, whatever its cookies say" do
    c = client(name: "alice")
    expect(c.receive).to eq("type" => "disconnect", "reason" => "unauthorized", "reconnect" => false)
    t = puma.http(:get, "/token?name=tok").body
    expect(client(path: "/cable?jid=#{t}").receive).to include("type" => "welcome")
    # In the X-JID header, on Puma's port: the server reads it from the hijacked request.
    expect(client(headers: {"X-JID" => t}).receive).to include("type" => "welcome")
  end
end
