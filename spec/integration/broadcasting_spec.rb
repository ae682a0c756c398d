# frozen_string_literal: true

require "spec_helper"
require "open3"
require "base64"

RSpec.describe "Broadcasting in AnyCable's format (real Puma)", type: :cable do
  secret = "broadcast-test-secret"
  key = OpenSSL::HMAC.hexdigest("SHA256", secret, "broadcast-cable")
  with_puma(env: {"ANYCABLE_SECRET" => secret, "ANYCABLE_PORT" => PumaServer.free_port.to_s})

  let(:echo) { {channel: "EchoChannel"} }

  it "takes POST /_broadcast on Puma's port and on its own port, with the key derived from ANYCABLE_SECRET" do
    c = connected
    id = subscribed(c, echo)
    body = JSON.generate(stream: "all", data: JSON.generate(n: 1))
    expect(post_json("/_broadcast", body).code).to eq("401")
    expect(post_json("/_broadcast", body, auth: "Bearer nope").code).to eq("401")
    expect(post_json("/_broadcast", "{bad", auth: "Bearer #{key}").code).to eq("422")
    expect(post_json("/_broadcast", body, auth: "Bearer #{key}").code).to eq("201")
    expect(message_for(c, id)).to eq("n" => 1)
    own = Integer(puma.env["ANYCABLE_PORT"])
    expect(post_json("/_broadcast", body, port: own).code).to eq("401")
    expect(post_json("/_broadcast", JSON.generate(stream: "all", data: "2"), auth: "Bearer #{key}", port: own).code).to eq("201")
    expect(message_for(c, id)).to eq(2)
  end

  it "answers the same on both ports: one implementation (405, 413, 422)" do
    own = Integer(puma.env["ANYCABLE_PORT"])
    auth = {"Authorization" => "Bearer #{key}"}
    [puma.port, own].each do |port|
      http = Net::HTTP.new("127.0.0.1", port)
      expect(http.request(Net::HTTP::Get.new("/_broadcast", auth)).code).to eq("405"), "port #{port}"
      res = http.request(Net::HTTP::Post.new("/_broadcast", auth), JSON.generate(stream: "all"))
      expect([res.code, res.body]).to match(["422", /data/]), "port #{port}"
    end
    # Over 1 MiB: Puma reads the body first; the own port answers from the head alone
    # (a client still sending may see the socket close, so this one sends no body).
    big = JSON.generate(stream: "all", data: "x" * (1024 * 1024 + 1))
    expect(Net::HTTP.new("127.0.0.1", puma.port).request(Net::HTTP::Post.new("/_broadcast", auth), big).code).to eq("413")
    TCPSocket.open("127.0.0.1", own) do |tcp|
      tcp.write("POST /_broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer #{key}\r\n" \
        "Content-Length: #{big.bytesize}\r\n\r\n")
      expect(tcp.gets).to start_with("HTTP/1.1 413")
    end
  end

  it "delivers batches and honours meta.exclude_socket" do
    a = client(name: "alice")
    sid_a = a.welcome!["sid"]
    b = connected(name: "bob")
    ida = subscribed(a, echo)
    idb = subscribed(b, echo)
    batch = [
      {stream: "all", data: JSON.generate(n: 1)},
      {stream: "all", data: JSON.generate(n: 2), meta: {exclude_socket: sid_a}}
    ]
    expect(post_json("/_broadcast", JSON.generate(batch), auth: "Bearer #{key}").code).to eq("201")
    expect(message_for(a, ida)).to eq("n" => 1)
    expect(message_for(b, idb)).to eq("n" => 1)
    expect(message_for(b, idb)).to eq("n" => 2)
    expect(a.silent_for?(0.3)).to be(true)
  end

  it "closes a user's connections on AnyCable's disconnect command" do
    c = connected(name: "dora")
    other = connected(name: "eve")
    user_id = puma.http(:get, "/login?name=dora").body
    # As AnyCable encodes identifiers: records by their GlobalID param.
    gid_param = Base64.urlsafe_encode64("gid://dummy/User/#{user_id}", padding: false)
    identifiers = JSON.generate(current_user: gid_param, tab: "main")
    command = {command: "disconnect", payload: {identifier: identifiers, reconnect: false}}
    expect(post_json("/_broadcast", JSON.generate(command), auth: "Bearer #{key}").code).to eq("201")
    expect(c.receive).to eq("type" => "disconnect", "reason" => "remote", "reconnect" => false)
    id = subscribed(other, echo)
    expect(id).to include("EchoChannel")
  end

  def run_ruby(script, env)
    out, status = Open3.capture2e(
      {"RAILS_ENV" => "test", "DUMMY_DATABASE" => puma.env["DUMMY_DATABASE"], "DUMMY_LOG" => File::NULL}.merge(env),
      "ruby", "-I", File.expand_path("../../lib", __dir__), "-e", script,
      chdir: PumaServer::DUMMY
    )
    expect(status).to be_success, out
    out
  end

  let(:http_env) do
    {
      "ANYCABLE_BROADCAST_ADAPTER" => "http",
      "ANYCABLE_HTTP_BROADCAST_URL" => "http://127.0.0.1:#{puma.port}/_broadcast",
      "ANYCABLE_SECRET" => secret
    }
  end

  it "reaches the server's clients from a plain Ruby process using the gem" do
    c = connected
    id = subscribed(c, echo)
    run_ruby('require "anycable_rs"; AnyCableRs.broadcast("all", {"from" => "plain ruby"})', http_env)
    expect(message_for(c, id)).to eq("from" => "plain ruby")
  end

  it "reaches them from ActionCable.server.broadcast in a process that serves no sockets, starting no thread" do
    c = connected
    id = subscribed(c, echo)
    out = run_ruby(<<~RUBY, http_env.merge("ANYCABLE_EMBEDDED" => "true"))
      require "./config/environment"
      # Ruby 3.3's timeout keeps a thread of its own once Net::HTTP used it.
      ours = -> { Thread.list.count { |t| t.name != #{RunningVersions::TIMEOUT_THREAD.inspect} } }
      before = ours.call
      ActionCable.server.broadcast("all", {"from" => "console"})
      puts "threads: \#{before} -> \#{ours.call}; started: \#{AnyCableRs.runtime.started?}"
    RUBY
    expect(message_for(c, id)).to eq("from" => "console")
    expect(out).to match(/threads: (\d+) -> \1; started: false/)
  end
end
