# frozen_string_literal: true

require "spec_helper"
require "anycable_rs/rack_env"

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
end
