# frozen_string_literal: true

require "spec_helper"
require "anycable_rs/rack_env"
require "rack"

RSpec.describe AnyCableRs::RackEnv do
  describe ".handshake_headers" do
    it "hands the Rust side the upgrade and origin-check headers, and nothing else" do
      env = {
        "HTTP_UPGRADE" => "websocket", "HTTP_CONNECTION" => "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY" => "dGhlIHNhbXBsZSBub25jZQ==", "HTTP_SEC_WEBSOCKET_VERSION" => "13",
        "HTTP_SEC_WEBSOCKET_PROTOCOL" => "actioncable-v1-json, actioncable-unsupported",
        "HTTP_ORIGIN" => "http://a.test", "HTTP_HOST" => "a.test", "HTTP_X_REQUEST_ID" => "r-1",
        "HTTP_X_FORWARDED_PROTO" => "https",
        "HTTP_COOKIE" => "secret=1", "HTTP_AUTHORIZATION" => "Bearer t", "rack.input" => StringIO.new
      }
      expect(described_class.handshake_headers(env)).to eq([
        ["upgrade", "websocket"], ["connection", "Upgrade"],
        ["sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="], ["sec-websocket-version", "13"],
        ["sec-websocket-protocol", "actioncable-v1-json, actioncable-unsupported"],
        ["origin", "http://a.test"], ["host", "a.test"], ["x-forwarded-proto", "https"]
      ])
    end

    it "leaves out headers the request does not have" do
      expect(described_class.handshake_headers("HTTP_UPGRADE" => "websocket", "HTTP_ORIGIN" => nil))
        .to eq([["upgrade", "websocket"]])
    end
  end

  describe ".snapshot" do
    let(:env) do
      {
        "REQUEST_METHOD" => "GET", "SCRIPT_NAME" => "/cable", "PATH_INFO" => "/", "QUERY_STRING" => "a=1&b=",
        "SERVER_NAME" => "a.test", "SERVER_PORT" => "443", "REMOTE_ADDR" => "10.0.0.1", "HTTPS" => "on",
        "rack.url_scheme" => "https", "HTTP_HOST" => "a.test", "HTTP_COOKIE" => "k=v; x=", "HTTP_X_EMPTY" => "",
        "HTTP_UPGRADE" => "websocket", "HTTP_SEC_WEBSOCKET_KEY" => "dGhlIHNhbXBsZSBub25jZQ==",
        "action_dispatch.remote_ip" => Struct.new(:ip) { def to_s = ip }.new("203.0.113.9"),
        "rack.session" => {"user_id" => 1}, "warden" => Object.new, "rack.input" => StringIO.new,
        "HTTP_X_NUL" => "a\0b"
      }
    end

    it "keeps the request line, the headers (not the handshake's) and the client address, as one frozen String" do
      snapshot = described_class.snapshot(env)
      expect(snapshot).to be_frozen
      expect(described_class.snapshot_pairs(snapshot)).to eq(
        "REQUEST_METHOD" => "GET", "SCRIPT_NAME" => "/cable", "PATH_INFO" => "/", "QUERY_STRING" => "a=1&b=",
        "SERVER_NAME" => "a.test", "SERVER_PORT" => "443", "REMOTE_ADDR" => "10.0.0.1", "HTTPS" => "on",
        "rack.url_scheme" => "https", "HTTP_HOST" => "a.test", "HTTP_COOKIE" => "k=v; x=", "HTTP_X_EMPTY" => "",
        "action_dispatch.remote_ip" => "203.0.113.9"
      )
    end

    it "restores a Rack env a request reads as the original (no Rails app: no env_config, no session)" do
      restored = described_class.restore(described_class.snapshot(env))
      request = Rack::Request.new(restored)
      expect([request.url, request.cookies, request.ip, request.ssl?])
        .to eq(["https://a.test/cable/?a=1&b=", {"k" => "v", "x" => ""}, "10.0.0.1", true])
      expect(restored["warden"]).to be_nil
    end
  end
end
