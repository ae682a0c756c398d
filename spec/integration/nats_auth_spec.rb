# frozen_string_literal: true

require "spec_helper"
require "open3"

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
