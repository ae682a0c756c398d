# frozen_string_literal: true

require "spec_helper"
require "open3"

# rediss:// (issue #24: "an app whose cable.yml points at a managed Redis that requires
# TLS cannot use it at all"): Debian's redis-server speaking only TLS, with a
# certificate the test signs and an ACL user (the default user off). The machine trusts
# the certificate through SSL_CERT_FILE (the Rust client and Ruby's OpenSSL both read
# it); someone answering for the Redis with a certificate the machine does not trust
# gets nothing, nor does a wrong password.
RSpec.describe "Redis over TLS with an ACL user (rediss://, real redis-server --tls-port, real Puma)", type: :cable do
  before(:all) do
    @redis = TlsRedisServer.new.start
    @env = {"ANYCABLE_BROADCAST_ADAPTER" => "redis", "ANYCABLE_REDIS_URL" => @redis.url,
            "SSL_CERT_FILE" => @redis.certs.ca_file}
    @puma = PumaServer.new(env: @env).start
  end

  after(:all) do
    @puma&.stop && @puma&.cleanup
    @redis&.stop
    @redis&.cleanup
  end

  attr_reader :puma

  it "delivers from the server process and from a process that serves no sockets; no password in a log line" do
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    wait_for(timeout: 15) { puma.log.include?("Redis connected") }
    expect(puma.http(:post, "/broadcast", stream: "all", payload: '{"n":1}').code).to eq("201")
    expect(message_for(c, id)).to eq("n" => 1)
    out, status = ruby_with_gem(@env, 'AnyCableRs.broadcast("all", {"n" => 2})')
    expect(status).to be_success, out
    expect(message_for(c, id)).to eq("n" => 2)
    logs = [puma.log, puma.rails_log].join("\n")
    [TlsRedisServer::PASSWORD, ERB::Util.url_encode(TlsRedisServer::PASSWORD)].each do |secret|
      expect(logs).not_to include(secret)
    end
  end

  it "gets nothing through with a certificate the machine does not trust, or with a wrong password" do
    untrusting = @env.merge("SSL_CERT_FILE" => @redis.certs.other_ca_file)
    other = PumaServer.new(env: untrusting.merge("DUMMY_DATABASE" => puma.env["DUMMY_DATABASE"])).start
    c = connected(port: other.port)
    subscribed(c, channel: "EchoChannel")
    wait_for(timeout: 10) { other.log.include?("Redis connect failed") }
    expect(other.log).to match(/Redis connect failed \(TLS: .*(certificate|Unknown|issuer)/i)
    expect(other.log).not_to include("Redis connected")
    out, status = ruby_with_gem(untrusting, 'AnyCableRs.broadcast("all", {"n" => 3})')
    expect(status).not_to be_success
    expect(out).to match(/Redis TLS: .*certificate verify failed/)
    wrong = @env.merge("ANYCABLE_REDIS_URL" => @redis.url(password: "guess"))
    out, status = ruby_with_gem(wrong, 'AnyCableRs.broadcast("all", {"n" => 4})')
    expect(status).not_to be_success
    expect(out).to match(/Redis: -?WRONGPASS/)
    expect(out).not_to include("guess")
    expect(c.silent_for?(0.5)).to be(true)
  ensure
    other&.stop && other&.cleanup
  end
end
