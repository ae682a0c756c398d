# frozen_string_literal: true

require "spec_helper"
require "open3"

RSpec.describe "Secure defaults: no broadcast key (real Puma)", type: :cable do
  with_puma

  it "does not serve POST /_broadcast on Puma's port, and says at boot how to turn it on" do
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    res = post_json("/_broadcast", JSON.generate(stream: "all", data: JSON.generate(n: 1)))
    expect(res.code).to eq("404")
    expect(c.silent_for?(0.3)).to be(true)
    warning = log_lines("is not served on the app's port")
    expect(warning.size).to eq(1)
    expect(warning.first).to include("ANYCABLE_BROADCAST_KEY or ANYCABLE_SECRET")
    expect(id).to include("EchoChannel")
  end

  it "logs the WebSocket request path through the app's parameter filter" do
    c = connected(path: "/cable?token=tok-s3cr3t-42&room=lobby")
    c.close
    # The mounted path, as Action Cable logs it through Puma's port.
    path = /"#{Regexp.escape(RunningVersions.cable_path_on_puma)}\?token=\[FILTERED\]&room=lobby" \[WebSocket\]/
    wait_for { puma.rails_log.lines.grep(/Finished #{path}/).any? }
    expect(puma.rails_log.lines.grep(/Started GET #{path}/).size).to eq(1)
    expect(puma.rails_log.lines.grep(/Finished #{path}/).size).to eq(1)
    expect(puma.rails_log).not_to include("tok-s3cr3t-42")
  end

  it "does not call a server process's broadcasts lost before its first socket" do
    # A fresh Puma (no socket yet) broadcasting with the local adapter is a server.
    server = PumaServer.new.start
    expect(server.http(:post, "/broadcast", stream: "all", payload: "{}").code).to eq("201")
    expect(server.rails_log).not_to include("reached no client")
  ensure
    server&.stop
    server&.cleanup
  end
end

RSpec.describe "Secure defaults: no broadcast key, with the own port (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_PORT" => PumaServer.free_port.to_s})

  it "serves POST /_broadcast on neither port, not even to loopback, and says so at boot" do
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    own = Integer(puma.env["ANYCABLE_PORT"])
    body = JSON.generate(stream: "all", data: JSON.generate(n: 1))
    expect(post_json("/_broadcast", body).code).to eq("404")
    expect(post_json("/_broadcast", body, port: own).code).to eq("404")
    expect(c.silent_for?(0.3)).to be(true)
    warning = log_lines("is not served on the app's port nor on the own port #{own}")
    expect(warning.size).to eq(1)
    expect(id).to include("EchoChannel")
  end
end

RSpec.describe "POST /_broadcast with ANYCABLE_BROADCAST_KEY (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_BROADCAST_KEY" => "the-key"})

  it "answers 401 without the key and 201 with it, and says nothing at boot" do
    c = connected
    id = subscribed(c, channel: "EchoChannel")
    body = JSON.generate(stream: "all", data: JSON.generate(n: 1))
    expect(post_json("/_broadcast", body).code).to eq("401")
    expect(post_json("/_broadcast", body, auth: "Bearer the-key").code).to eq("201")
    expect(message_for(c, id)).to eq("n" => 1)
    expect(log_lines("is not served on the app's port")).to be_empty
  end
end

# Issue #24 (15): /metrics answered anyone on the own port (0.0.0.0 under the Fly
# preset). With ANYCABLE_METRICS_TOKEN, only a scraper that carries it.
RSpec.describe "ANYCABLE_METRICS_TOKEN on both ports (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_PORT" => PumaServer.free_port.to_s, "ANYCABLE_METRICS_HTTP" => "/metrics",
                  "ANYCABLE_METRICS_ON_PUMA_PORT" => "true", "ANYCABLE_METRICS_TOKEN" => "scrape-t0ken"})

  def get(path, port, headers = {})
    uri = URI("http://127.0.0.1:#{port}#{path}")
    Net::HTTP.start(uri.host, uri.port, read_timeout: 10) do |h|
      req = Net::HTTP::Get.new(uri)
      headers.each { |k, v| req[k] = v }
      h.request(req)
    end
  end

  it "answers 401 without the token or with another, and the metrics with it" do
    connected
    [puma.port, Integer(puma.env["ANYCABLE_PORT"])].each do |port|
      expect(get("/metrics", port).code).to eq("401")
      expect(get("/metrics", port, "Authorization" => "Bearer scrape-t0keN").code).to eq("401")
      expect(get("/metrics", port, "Authorization" => "scrape-t0ken").code).to eq("401")
      ok = get("/metrics", port, "Authorization" => "Bearer scrape-t0ken")
      expect(ok.code).to eq("200")
      expect(ok.body).to include("anycable_go_clients_num")
    end
  end
end

RSpec.describe "Broadcasting into the void" do
  def run_app_script(script, env = {})
    Dir.mktmpdir do |dir|
      log = File.join(dir, "rails.log")
      out, status = Open3.capture3(
        {"RAILS_ENV" => "test", "ANYCABLE_EMBEDDED" => "true", "DUMMY_DATABASE" => File.join(dir, "db.sqlite3"),
         "DUMMY_LOG" => log}.merge(env),
        "ruby", "-I", File.expand_path("../../lib", __dir__), "-e", script, chdir: PumaServer::DUMMY
      ).values_at(1, 2)
      expect(status).to be_success, out
      [out, File.read(log)]
    end
  end

  it "says so once per process, on stderr and in the log, when a process that serves no sockets broadcasts locally" do
    stderr, log = run_app_script(<<~RUBY)
      require "./config/environment"
      ActionCable.server.broadcast("all", {"n" => 1})
      ActionCable.server.broadcast("all", {"n" => 2})
      AnyCableRs.broadcast("other", {"n" => 3})
    RUBY
    line = /anycable-rs: ActionCable\.server\.broadcast\("all", …\) reached no client: ANYCABLE_BROADCAST_ADAPTER is local/
    expect(stderr.scan(line).size).to eq(1), stderr
    expect(log.lines.grep(line).size).to eq(1)
    expect(stderr).to include("Set ANYCABLE_BROADCAST_ADAPTER=redis")
    # The /_broadcast boot warning is for the web server, not for scripts.
    expect(log).not_to include("is not served on the app's port")
  end

  it "stays quiet when the broadcast has somewhere to go" do
    redis = RedisServer.new.start
    stderr, log = run_app_script(<<~RUBY, "ANYCABLE_BROADCAST_ADAPTER" => "redis", "ANYCABLE_REDIS_URL" => redis.url)
      require "./config/environment"
      ActionCable.server.broadcast("all", {"n" => 1})
    RUBY
    expect(stderr + log).not_to include("reached no client")
  ensure
    redis&.stop
  end
end
