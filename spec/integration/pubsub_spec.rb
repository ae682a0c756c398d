# frozen_string_literal: true

require "spec_helper"
require "open3"

# Two server processes (real Puma) sharing one real nats-server, then one real
# redis-server: every broadcast reaches every client exactly once.
{
  "nats" => [NatsServer, "ANYCABLE_NATS_SERVERS"],
  "redis" => [RedisServer, "ANYCABLE_REDIS_URL"]
}.each do |adapter, (broker_class, url_key)|
RSpec.describe "Broadcasting across processes over #{adapter}", type: :cable do # rubocop:disable Layout/IndentationConsistency
  before(:all) do
    @nats = broker_class.new.start
    @env = {"ANYCABLE_BROADCAST_ADAPTER" => adapter, url_key => @nats.url, "ANYCABLE_BROADCAST_KEY" => "relay-key"}
    @one = PumaServer.new(env: @env.merge("ANYCABLE_PORT" => PumaServer.free_port.to_s)).start
    @two = PumaServer.new(env: @env.merge("DUMMY_DATABASE" => @one.env["DUMMY_DATABASE"])).start
  end

  after(:all) do
    [@one, @two].each { |p| p&.stop && p&.cleanup }
    @nats&.stop
  end

  after do |example|
    if example.exception
      warn "--- one ---\n#{@one.log[-3000..] || @one.log}\n--- two ---\n#{@two.log[-3000..] || @two.log}"
    end
  end

  def puma
    @one
  end

  let(:echo) { {channel: "EchoChannel"} }

  def on(server, name: "alice")
    c = connected(name: name, port: server.port)
    [c, subscribed(c, echo)]
  end

  def exactly_once(c, id, expected)
    expect(message_for(c, id)).to eq(expected)
    expect(c.silent_for?(0.4)).to be(true)
  end

  it "delivers a broadcast made in one server process to the clients of both, each exactly once" do
    a, ida = on(@one)
    b, idb = on(@two)
    sleep 0.3 # both NATS subscriptions are up
    expect(@one.http(:post, "/broadcast", stream: "all", payload: '{"n":1}').code).to eq("201")
    exactly_once(a, ida, "n" => 1)
    exactly_once(b, idb, "n" => 1)
  end

  it "delivers broadcasts from a channel action to the other node" do
    a, ida = on(@one)
    b, idb = on(@two)
    a.perform(ida, "broadcast", {"from" => "a"})
    got = [a.receive, a.receive].map { |m| m["message"] }
    expect(got).to all(eq("from" => "a", "action" => "broadcast"))
    exactly_once(b, idb, "from" => "a", "action" => "broadcast")
  end

  it "delivers from a third, plain Ruby process to both, each exactly once" do
    a, ida = on(@one)
    b, idb = on(@two)
    script = 'require "anycable_rs"; n = Thread.list.size; AnyCableRs.broadcast("all", {"from" => "outside"}); ' \
      'puts "threads #{n} -> #{Thread.list.size}"'
    out, status = Open3.capture2e(@env,
      "ruby", "-I", File.expand_path("../../lib", __dir__), "-e", script)
    expect(status).to be_success, out
    expect(out).to match(/threads (\d+) -> \1$/)
    exactly_once(a, ida, "from" => "outside")
    exactly_once(b, idb, "from" => "outside")
  end

  it "relays POST /_broadcast to every node" do
    a, ida = on(@one)
    b, idb = on(@two)
    auth = {"Content-Type" => "application/json", "Authorization" => "Bearer relay-key"}
    res = @two.http(:post, "/_broadcast", {}, auth) { nil }
    expect(res.code).to eq("422")
    uri = URI("http://127.0.0.1:#{@two.port}/_broadcast")
    res = Net::HTTP.post(uri, JSON.generate(stream: "all", data: '{"via":"http"}'), auth)
    expect(res.code).to eq("201")
    exactly_once(a, ida, "via" => "http")
    exactly_once(b, idb, "via" => "http")
  end

  it "disconnects a user's socket on the other node (remote_connections)" do
    c = connected(name: "zed", port: @two.port)
    user_id = @one.http(:get, "/login?name=zed").body
    expect(@one.http(:post, "/remote_disconnect", user_id: user_id).code).to eq("201")
    expect(c.receive).to eq("type" => "disconnect", "reason" => "remote", "reconnect" => true)
    expect(c.receive).to eq(:closed)
  end

  it "survives a broker restart: processes stay up, /health says degraded, broadcasts resume" do
    a, ida = on(@one)
    b, idb = on(@two)
    health = URI("http://127.0.0.1:#{@one.env["ANYCABLE_PORT"]}/health")
    expect(Net::HTTP.get_response(health).code).to eq("200")
    @nats.stop
    wait_for { Net::HTTP.get_response(health).code == "503" }
    expect(Net::HTTP.get_response(health).body).to eq("#{adapter} pub/sub disconnected")
    expect(@one.http(:get, "/stats").code).to eq("200")
    @nats.start
    started = Time.now
    got_a = got_b = nil
    until got_a && got_b
      raise "broadcasts did not resume within 20s" if Time.now - started > 20

      @one.http(:post, "/broadcast", stream: "all", payload: JSON.generate(probe: true))
      begin
        got_a ||= a.receive(timeout: 0.3)
        got_b ||= b.receive(timeout: 0.3)
      rescue WsClient::Timeout
        nil
      end
    end
    warn "#{adapter}: broadcasts resumed #{(Time.now - started).round(2)}s after the server came back"
    expect(got_a["message"]).to eq("probe" => true)
    expect(got_b["message"]).to eq("probe" => true)
    expect(@one.alive? && @two.alive?).to be(true)
    expect(@one.log).to match(/#{adapter} disconnected/i)
    wait_for { Net::HTTP.get_response(health).code == "200" }
  end
end
end
