# frozen_string_literal: true

require "spec_helper"
require "open3"


# A NATS that asks for a login and one Puma using it, for a describe group: the block
# starts the NATS and gives [nats, env]; `puma` and @env are the group's.
module NatsWithPuma
  def nats_and_puma(&start)
    before(:all) do
      require "anycable_rs"
      @nats, @env = instance_exec(&start)
      @puma = PumaServer.new(env: @env).start
    end
    after(:all) do
      @puma&.stop && @puma&.cleanup
      @nats&.stop
      @nats&.cleanup
    end
    attr_reader :puma
  end
end

# What every login spec checks first: a broadcast from the server process and one from
# a plain Ruby publisher (a process that serves no sockets) both arrive. [client, id].
module NatsLoginHelpers
  def delivers_from_both
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    wait_for(timeout: 15) { puma.log.include?("NATS connected") }
    expect(puma.http(:post, "/broadcast", stream: "all", payload: '{"n":1}').code).to eq("201")
    expect(message_for(c, id)).to eq("n" => 1)
    out, status = ruby_with_gem(@env, 'AnyCableRs.broadcast("all", {"n" => 2})')
    expect(status).to be_success, out
    expect(message_for(c, id)).to eq("n" => 2)
    [c, id]
  end

  # A Ruby publisher with `env` is refused as `refusal` says; its output.
  def publisher_refused(env, refusal)
    out, status = ruby_with_gem(env, 'AnyCableRs.broadcast("all", {"n" => 3})')
    expect(status).not_to be_success
    expect(out).to match(refusal)
    out
  end
end

# A NATS that requires credentials, given in ANYCABLE_NATS_SERVERS as AnyCable takes
# them (nats://user:password@host, percent-encoded): the server processes' Rust client
# and a plain Ruby publisher both authenticate, over the core subject and JetStream,
# and the password is in no log line.
[["the NATS pub/sub", {}], ["the NATS broker (JetStream)", {"ANYCABLE_BROKER" => "nats"}]].each do |what, extra|
RSpec.describe "Credentials for #{what} (real nats-server with --user/--pass, real Puma)", type: :cable do # rubocop:disable Layout/IndentationConsistency
  before(:all) do
    @nats = AuthNatsServer.new
    @nats.with_jetstream if extra.key?("ANYCABLE_BROKER")
    @nats.start
    @env = {"ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => @nats.url}.merge(extra)
    @one = PumaServer.new(env: @env).start
    @two = PumaServer.new(env: @env.merge("DUMMY_DATABASE" => @one.env["DUMMY_DATABASE"])).start
  end

  after(:all) do
    [@one, @two].each { |p| p&.stop && p&.cleanup }
    @nats&.stop
    @nats&.cleanup
  end

  def puma
    @one
  end

  let(:echo) { {channel: "EchoChannel"} }

  def on(server)
    c = connected(name: "alice", port: server.port)
    [c, subscribed(c, echo)]
  end

  def try_receive(c, timeout)
    c.receive(timeout: timeout)
  rescue WsClient::Timeout
    nil
  end

  def both_receive(a, b)
    got = [nil, nil]
    deadline = Time.now + 15
    until got.all?
      raise "no broadcast crossed NATS within 15 s:\n#{@one.log.lines.last(30).join}" if Time.now > deadline

      @one.http(:post, "/broadcast", stream: "all", payload: '{"probe":1}')
      got = [a, b].each_with_index.map { |c, i| got[i] || try_receive(c, 0.3) }
    end
    [a, b].each { |c| nil while try_receive(c, 0.5) } # the probes sent meanwhile
  end

  it "authenticates both server processes and a plain Ruby publisher, and logs no password" do
    a, ida = on(@one)
    b, idb = on(@two)
    # Broadcasts cross only once both nodes' clients got in with the credentials.
    both_receive(a, b)
    script = 'require "anycable_rs"; AnyCableRs.broadcast("all", {"from" => "outside"})'
    out, status = Open3.capture2e(@env, "ruby", "-I", File.expand_path("../../lib", __dir__), "-e", script)
    expect(status).to be_success, out
    expect(message_for(a, ida)).to eq("from" => "outside")
    expect(message_for(b, idb)).to eq("from" => "outside")
    logs = [@one.log, @two.log, @one.rails_log, @two.rails_log].join("\n")
    [AuthNatsServer::PASSWORD, ERB::Util.url_encode(AuthNatsServer::PASSWORD)].each do |secret|
      expect(logs).not_to include(secret)
    end
  end
end
end

# tls:// NATS (issue #24: "External NATS: credentials and tls:// URLs, as AnyCable
# accepts them"): Debian's nats-server with a certificate for localhost that the test
# signs. The machine trusts it through SSL_CERT_FILE (the Rust client and Ruby's
# OpenSSL both read it); someone answering for the NATS with a certificate the
# machine does not trust gets nothing.
RSpec.describe "NATS over TLS (tls://, real nats-server --tls, real Puma)", type: :cable do
  extend NatsWithPuma
  include NatsLoginHelpers

  nats_and_puma do
    nats = TlsNatsServer.new.start
    [nats, {"ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => nats.url, "SSL_CERT_FILE" => nats.ca_file}]
  end

  it "delivers through a tls:// NATS the machine trusts, from the server process and a process that serves no sockets" do
    delivers_from_both
  end

  it "refuses a NATS whose certificate the machine does not trust: no link, and a publisher's clear error" do
    untrusting = @env.merge("SSL_CERT_FILE" => @nats.other_ca_file)
    other = PumaServer.new(env: untrusting.merge("DUMMY_DATABASE" => puma.env["DUMMY_DATABASE"])).start
    c = connected(port: other.port)
    subscribed(c, channel: "EchoChannel")
    sleep 2
    expect(other.log).not_to include("NATS connected")
    publisher_refused(untrusting, /NATS TLS: .*certificate verify failed/)
    expect(c.silent_for?(0.5)).to be(true)
  ensure
    other&.stop && other&.cleanup
  end
end

# TLS and a login together (a managed NATS): the password goes only inside TLS (the
# server takes no plaintext), both clients deliver, a wrong password is refused, and
# the password is in no log line.
RSpec.describe "NATS over TLS with a login (tls://user:password@, real nats-server, real Puma)", type: :cable do
  extend NatsWithPuma
  include NatsLoginHelpers

  nats_and_puma do
    nats = TlsNatsServer.new(user: "cable", password: "tls p@ss").start
    [nats, {"ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => nats.url, "SSL_CERT_FILE" => nats.ca_file}]
  end

  it "delivers from the server process and a Ruby publisher; a wrong password is refused; no password in a log" do
    c, = delivers_from_both
    wrong = @env.merge("ANYCABLE_NATS_SERVERS" => @nats.url.sub("tls%20p%40ss", "guess"))
    expect(wrong["ANYCABLE_NATS_SERVERS"]).not_to eq(@nats.url)
    out = publisher_refused(wrong, /Authorization Violation/i)
    expect(c.silent_for?(0.3)).to be(true)
    logs = [puma.log, puma.rails_log, out].join("\n")
    expect(logs).not_to include("tls p@ss")
    expect(logs).not_to include("tls%20p%40ss")
  end
end

# Review of #24 (17): holding credentials, neither client uses a NATS that asks for no
# login (someone squatting the embedded NATS port on a machine): the server process
# publishes nothing to it and says why; a Ruby publisher refuses before it sends the
# password.
RSpec.describe "A NATS that asks for no login, with credentials set (real nats-server, real Puma)", type: :cable do
  before(:all) do
    @squatter = NatsServer.new.start
    @env = {"ANYCABLE_BROADCAST_ADAPTER" => "nats",
            "ANYCABLE_NATS_SERVERS" => "nats://anycable:s3cret-pass@127.0.0.1:#{@squatter.port}"}
    @puma = PumaServer.new(env: @env).start
  end

  after(:all) do
    @puma&.stop && @puma&.cleanup
    @squatter&.stop
  end

  attr_reader :puma

  it "is not used: no broadcast reaches it, the log says why, and a Ruby publisher refuses" do
    sniffer, seen = nats_sniffer(@squatter.port)
    c = connected
    subscribed(c, channel: "EchoChannel")
    expect(puma.http(:post, "/broadcast", stream: "all", payload: '{"n":1}').code).to eq("201")
    wait_for(timeout: 10) { puma.log.include?("asks for no login, though credentials are set") }
    out, status = ruby_with_gem(@env, 'AnyCableRs.broadcast("all", {"n" => 2})')
    expect(status).not_to be_success
    expect(out).to include("asks for no login, though credentials are set: not used")
    sleep 0.5
    seen << (sniffer.read_nonblock(65_536, exception: false).then { |x| x.is_a?(String) ? x : "" })
    expect(seen).not_to include('{"n":')
    expect(c.silent_for?(0.3)).to be(true)
  ensure
    sniffer&.close
  end
end

# An nkey user (issue #24: "External NATS: credentials (user/password, token, nkey…)"):
# ANYCABLE_NATS_NKEY_SEED logs the server processes and a plain Ruby publisher in with a
# signature of the server's nonce; the seed is in no log line and never sent.
RSpec.describe "An nkey login to NATS (real nats-server with an nkey user, real Puma)", type: :cable do
  extend NatsWithPuma
  include NatsLoginHelpers

  nats_and_puma do
    nats = NkeyNatsServer.new.start
    [nats, {"ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => nats.url,
            "ANYCABLE_NATS_NKEY_SEED" => nats.seed}]
  end

  it "delivers from the server process and a Ruby publisher; another seed is refused; the seed is in no log" do
    c, = delivers_from_both
    other_seed, = AnyCableRs::Native.nkey_user(SecureRandom.hex(32))
    out = publisher_refused(@env.merge("ANYCABLE_NATS_NKEY_SEED" => other_seed), /Authorization Violation/i)
    expect(c.silent_for?(0.3)).to be(true)
    logs = [puma.log, puma.rails_log, out].join("\n")
    expect(logs).not_to include(@nats.seed)
    expect(logs).not_to include(other_seed)
  end
end

# A credentials file (issue #24: "External NATS: credentials (… nkey or creds file)"):
# a NATS in operator mode (decentralized JWT auth: Synadia Cloud, `nsc` set-ups) takes
# ANYCABLE_NATS_CREDENTIALS — the user JWT and a signature of its nonce — from the
# server processes (core subject, and JetStream for the broker) and a plain Ruby
# publisher; a user of an account it does not know is refused; the seed is in no log.
[["the NATS pub/sub", {}], ["the NATS broker (JetStream)", {"ANYCABLE_BROKER" => "nats"}]].each do |what, extra|
RSpec.describe "A NATS credentials file for #{what} (real nats-server in operator mode, real Puma)", type: :cable do # rubocop:disable Layout/IndentationConsistency
  extend NatsWithPuma
  include NatsLoginHelpers

  nats_and_puma do
    nats = OperatorNatsServer.new(jetstream: extra.key?("ANYCABLE_BROKER")).start
    @creds, @seed = nats.creds_file("rails")
    [nats, {"ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => nats.url,
            "ANYCABLE_NATS_CREDENTIALS" => @creds}.merge(extra)]
  end

  it "delivers from the server process and a Ruby publisher; a stranger's file is refused; no seed in a log" do
    c, = delivers_from_both
    stranger, stranger_seed = @nats.creds_file("stranger", signed_by: :other_account)
    out = publisher_refused(@env.merge("ANYCABLE_NATS_CREDENTIALS" => stranger), /Authorization Violation/i)
    expect(c.silent_for?(0.3)).to be(true)
    logs = [puma.log, puma.rails_log, out].join("\n")
    expect(logs).not_to include(@seed)
    expect(logs).not_to include(stranger_seed)
  end
end
end
