# frozen_string_literal: true

require "spec_helper"

RSpec.describe "Connections on the embedded server (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_PORT" => PumaServer.free_port.to_s})

  it "upgrades on Puma's own port, negotiates the subprotocol and welcomes with a sid" do
    c = client(name: "alice", headers: {"X-Request-ID" => "req-123"})
    # The sid is the server's own, never the client's X-Request-ID (which another
    # client could send too, and be excluded with it).
    welcome = c.welcome!
    expect(welcome["type"]).to eq("welcome")
    expect(welcome["sid"]).to match(/\A\h{17,}\z/)
    expect(c.protocol).to eq("actioncable-v1-json")
  end

  it "generates a sid when the request has no X-Request-ID" do
    ids = [client(name: "alice").welcome!["sid"], client(name: "alice").welcome!["sid"]]
    expect(ids.uniq.size).to eq(2)
    expect(ids).to all(match(/\A[0-9a-f]{16,}\z/))
  end

  it "gives connect the request: signed and encrypted cookies, session, headers, params, remote_ip" do
    c = connected(name: "alice", path: "/cable?tab=t1", headers: {"X-Custom" => "custom-header"})
    id = subscribed(c, channel: "StateChannel", room: "r1")
    c.perform(id, "facts")
    expect(message_for(c, id)).to eq(
      "secret" => "s3cret-alice", "plain" => "plain-alice", "session_user" => "alice",
      "header" => "custom-header", "remote_ip" => "127.0.0.1", "param" => "t1",
      "user" => "alice", "tab" => "t1"
    )
  end

  it "identifies by an ActiveRecord record and a primitive" do
    c = connected(name: "bob", path: "/cable?tab=side")
    id = subscribed(c, channel: "StateChannel", room: "x")
    c.perform(id, "facts")
    expect(message_for(c, id)).to include("user" => "bob", "tab" => "side")
  end

  it "rejects an unauthorized connection with AnyCable's disconnect message and closes" do
    c = client
    expect(c.open?).to be(true)
    expect(c.receive).to eq("type" => "disconnect", "reason" => "unauthorized", "reconnect" => false)
    expect(c.receive).to eq(:closed)
    expect(log_lines("An unauthorized connection attempt was rejected")).not_to be_empty
  end

  it "answers an exception in connect with server_error, logs it once with its backtrace, and keeps serving" do
    c = client(name: "alice", path: "/cable?explode=1")
    expect(c.open?).to be(true)
    expect(c.receive).to eq("type" => "disconnect", "reason" => "server_error", "reconnect" => true)
    expect(c.receive).to eq(:closed)
    lines = log_lines("connect exploded")
    expect(lines.size).to eq(1)
    expect(puma.rails_log).to match(%r{connect exploded.*\n.*app/channels/application_cable/connection\.rb}m)
    expect(connected(name: "alice")).to be_a(WsClient)
  end

  it "refuses origins Rails does not allow before the upgrade (403), logging the origin" do
    c = client(name: "alice", headers: {"Origin" => "http://evil.test"})
    expect(c.open?).to be(false)
    expect(c.error).to match(/403/)
    expect(puma.log).to match(%r{refused WebSocket request /cable/? from .*: origin not allowed: http://evil.test \(403\)})
    expect(JSON.parse(puma.http(:get, "/stats").body)["stashed_envs"]).to eq(0)
  end

  it "allows the same origin as the Host, with the scheme a TLS-terminating proxy reports" do
    host = "127.0.0.1:#{puma.port}"
    behind_tls = client(name: "alice", headers: {"Origin" => "https://#{host}", "X-Forwarded-Proto" => "https"})
    expect(behind_tls.open?).to be(true)
    expect(behind_tls.receive).to include("type" => "welcome")
    plain = client(name: "alice", headers: {"Origin" => "https://#{host}"})
    expect(plain.open?).to be(false)
    expect(plain.error).to match(/403/)
  end

  it "calls unsubscribed for every channel, then the connection's disconnect, when the socket closes" do
    puma.http(:delete, "/events")
    c = connected(name: "carol")
    subscribed(c, channel: "StateChannel", room: "a")
    subscribed(c, channel: "StateChannel", room: "b")
    c.close
    # Only carol's: other examples' sockets may still be closing in the background.
    carols = -> { events.select { |_, who| who.to_s.start_with?("carol") } }
    wait_for { carols.call.include?(["disconnect", "carol"]) }
    expect(carols.call).to eq([
      ["connect", "carol"], ["subscribed", "carol:a"], ["subscribed", "carol:b"],
      ["unsubscribed", "carol:a"], ["unsubscribed", "carol:b"], ["disconnect", "carol"]
    ])
  end

  it "closes a user's sockets on remote_connections.where(...).disconnect" do
    c = connected(name: "dave")
    other = connected(name: "erin")
    user_id = puma.http(:get, "/login?name=dave").body
    expect(puma.http(:post, "/remote_disconnect", user_id: user_id).code).to eq("201")
    # Says why before closing, as AnyCable and Rails 7.1+ do (on 6.1/7.0 too).
    expect(c.receive).to eq("type" => "disconnect", "reason" => "remote", "reconnect" => true)
    expect(c.receive).to eq(:closed)
    id = subscribed(other, channel: "FaultyChannel")
    other.perform(id, "ping")
    expect(message_for(other, id)).to eq("pong" => true)
  end

  it "runs every call in the Rails executor, returning ActiveRecord connections to the pool" do
    c = connected(name: "alice")
    id = subscribed(c, channel: "StateChannel", room: "db")
    5.times do
      c.perform(id, "touch_db")
      expect(message_for(c, id)).to include("users")
    end
    stats = JSON.parse(puma.http(:get, "/stats").body)
    expect(stats["busy"]).to eq(0)
  end

  it "runs each command as a unit of work of its own: no Current attributes or cached queries carried over" do
    c = connected(name: "alice")
    id = subscribed(c, channel: "StateChannel", room: "units")
    c.perform(id, "remember", marker: "m1")
    first = message_for(c, id)
    expect(first["marker"]).to eq("m1")
    # Another request adds a user between the two commands.
    cookies_for("unit-#{rand(1_000_000)}")
    c.perform(id, "recall")
    expect(message_for(c, id)).to eq("users" => first["users"] + 1, "marker" => nil, "query_cache" => true)
    pool = JSON.parse(puma.http(:get, "/stats").body)["db_pool"]
    expect(pool["busy"]).to eq(0)
    # Frames sent back to back, which the server may hand over together: still two units.
    c.perform(id, "remember", marker: "m2")
    c.perform(id, "recall")
    expect(message_for(c, id)["marker"]).to eq("m2")
    expect(message_for(c, id)["marker"]).to be_nil
  end

  describe "the server's own port (ANYCABLE_PORT)" do
    let(:own_port) { Integer(puma.env["ANYCABLE_PORT"]) }

    it "answers /health" do
      res = Net::HTTP.get_response(URI("http://127.0.0.1:#{own_port}/health"))
      expect([res.code, res.body]).to eq(%w[200 Success])
    end

    it "serves the same app: cookies authenticate, channels work" do
      c = connected(name: "frank", port: own_port)
      id = subscribed(c, channel: "StateChannel", room: "own")
      c.perform(id, "increment")
      expect(message_for(c, id)).to include("count" => 1, "room" => "own")
    end

    it "gives connect the same request there: encrypted cookies and the cookie-store session" do
      c = connected(name: "frank", port: own_port, path: "/cable?tab=own")
      id = subscribed(c, channel: "StateChannel", room: "own")
      c.perform(id, "facts")
      expect(message_for(c, id)).to include(
        "secret" => "s3cret-frank", "session_user" => "frank", "param" => "own", "remote_ip" => "127.0.0.1"
      )
    end

    it "checks Rails' allowed_request_origins there too, before the upgrade (403: browsers do not retry)" do
      c = client(name: "frank", port: own_port, headers: {"Origin" => "http://evil.test"})
      expect(c.open?).to be(false)
      expect(c.error).to match(/403/)
      expect(connected(name: "frank", port: own_port)).to be_a(WsClient)
    end
  end
end
