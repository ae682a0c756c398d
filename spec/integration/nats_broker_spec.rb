# frozen_string_literal: true

require "spec_helper"
require "open3"
require "digest"
require "openssl"

# ANYCABLE_BROKER=nats: two server processes (real Puma) and a real nats-server with
# JetStream. Every broadcast is stored once and gets one offset that both nodes give
# out; any node replays what a client missed, whichever node it was on.
RSpec.describe "The NATS broker (JetStream history shared by the nodes)", type: :cable do
  let(:ext_protocol) { "actioncable-v1-ext-json" }

  before(:all) do
    @nats = JetStreamServer.new.start
    @env = {"ANYCABLE_BROKER" => "nats", "ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => @nats.url,
            "ANYCABLE_PING_INTERVAL" => "30", "ANYCABLE_HISTORY_LIMIT" => "5"}
    @one = PumaServer.new(env: @env).start
    @two = PumaServer.new(env: @env.merge("DUMMY_DATABASE" => @one.env["DUMMY_DATABASE"])).start
    wait_for(timeout: 20) { [@one, @two].all? { |s| s.log.include?("NATS broker: JetStream stream anycable_history") } }
  end

  after(:all) do
    [@one, @two].each { |p| p&.stop && p&.cleanup }
    @nats&.stop
    @nats&.cleanup
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

  def ext_on(server)
    c = client(name: "alice", port: server.port, protocols: [ext_protocol])
    c.welcome!
    [c, subscribed(c, echo)]
  end

  def third_process(script)
    out, status = Open3.capture2e(@env, "ruby", "-I", File.expand_path("../../lib", __dir__),
      "-e", "require 'anycable_rs'; #{script}")
    expect(status).to be_success, out
  end

  def post(server, n)
    expect(server.http(:post, "/broadcast", stream: "all", payload: JSON.generate(n: n)).code).to eq("201")
  end

  it "gives each broadcast one offset and epoch that both nodes deliver, each exactly once" do
    a, ida = ext_on(@one)
    b, idb = ext_on(@two)
    post(@one, 1)
    post(@two, 2)
    got_a = [a.receive, a.receive]
    got_b = [b.receive, b.receive]
    expect(got_a.map { |m| m["message"] }).to eq([{"n" => 1}, {"n" => 2}])
    expect(got_b.map { |m| [m["message"], m["epoch"], m["offset"]] })
      .to eq(got_a.map { |m| [m["message"], m["epoch"], m["offset"]] })
    expect(got_a.map { |m| m["stream_id"] }).to all(eq("all"))
    expect(got_a[1]["offset"]).to be > got_a[0]["offset"]
    expect(a.silent_for?(0.4) && b.silent_for?(0.1)).to be(true)
  end

  it "stores what a process that serves no sockets broadcasts (a job): an offset, delivered by both nodes" do
    a, = ext_on(@one)
    b, = ext_on(@two)
    third_process('AnyCableRs.broadcast("all", {"from" => "job"}); AnyCableRs.broadcast("all", {"from" => "job2"})')
    got_a = [a.receive, a.receive]
    got_b = [b.receive, b.receive]
    expect(got_a.map { |m| m["message"]["from"] }).to eq(%w[job job2])
    expect(got_b.map { |m| m["offset"] }).to eq(got_a.map { |m| m["offset"] })
    expect(got_a.map { |m| m["offset"] }).to all(be_a(Integer))
  end

  it "skips the to_others socket on whichever node it is, from a controller of the other node and from a job; the sid is not stored" do
    a = client(name: "alice", port: @one.port, protocols: [ext_protocol])
    sid_a = a.welcome!.fetch("sid")
    subscribed(a, echo)
    b, = ext_on(@two)
    res = @two.http(:post, "/broadcast", {stream: "all", payload: '{"n":70}', to_others: "1"}, {"X-Socket-ID" => sid_a})
    expect(res.code).to eq("201")
    third_process("AnyCableRs.broadcast('all', {'n' => 71}, exclude_socket: #{sid_a.inspect})")
    post(@one, 72)
    expect([b.receive, b.receive, b.receive].map { |m| m["message"]["n"] }).to eq([70, 71, 72])
    expect(a.receive).to include("message" => {"n" => 72})
    # The stream's files name the skipped socket by its sid's digest only.
    stored = Dir[File.join(@nats.store_dir, "**", "*.blk")].map { |f| File.binread(f) }.join
    expect(stored).to include("sha256:#{Digest::SHA256.hexdigest(sid_a)}")
    expect(stored).not_to include(sid_a)
  end

  it "a Rails job process (the app booted, no server) starts no runtime and stores each broadcast before returning" do
    a, = ext_on(@one)
    out, status = Open3.capture2e(
      @env.merge("RAILS_ENV" => "test", "ANYCABLE_EMBEDDED" => "true", "DUMMY_DATABASE" => @one.env["DUMMY_DATABASE"],
        "DUMMY_LOG" => File::NULL),
      "ruby", "-I", File.expand_path("../../lib", __dir__), "-e", <<~RUBY, chdir: PumaServer::DUMMY
        require "./config/environment"
        ActionCable.server.broadcast("all", {"from" => "rails job"})
        puts "runtime started: \#{AnyCableRs.runtime? && AnyCableRs.runtime.started?}"
      RUBY
    )
    expect(status).to be_success, out
    expect(out).to include("runtime started: false")
    expect(a.receive).to include("message" => {"from" => "rails job"}, "offset" => Integer)
  end

  it "replays on node two what a client of node one missed, and refuses a stale epoch" do
    a, ida = ext_on(@one)
    post(@one, 10)
    seen = a.receive
    a.close
    post(@two, 11)
    third_process('AnyCableRs.broadcast("all", {"n" => 12})')
    post(@one, 13)
    b = client(name: "alice", port: @two.port, protocols: [ext_protocol])
    b.welcome!
    b.send_json(command: "subscribe", identifier: ida,
      history: {since: 0, streams: {all: {epoch: seen["epoch"], offset: seen["offset"]}}})
    expect(b.receive).to eq("identifier" => ida, "type" => "confirm_subscription")
    replay = [b.receive, b.receive, b.receive]
    expect(replay.map { |m| m["message"]["n"] }).to eq([11, 12, 13])
    expect(replay.map { |m| m["epoch"] }).to all(eq(seen["epoch"]))
    expect(replay.map { |m| m["offset"] }).to eq(replay.map { |m| m["offset"] }.sort)
    expect(b.receive).to eq("type" => "confirm_history", "identifier" => ida)
    # Live again, no duplicate of what the replay had.
    post(@one, 14)
    expect(b.receive["message"]).to eq("n" => 14)
    expect(b.silent_for?(0.4)).to be(true)

    b.send_json(command: "history", identifier: ida, history: {since: 0, streams: {all: {epoch: "AAAA", offset: 1}}})
    expect(b.receive).to eq("type" => "reject_history", "identifier" => ida)
    # A position that is not this stream's message: refused, never a wrong replay.
    b.send_json(command: "history", identifier: ida,
      history: {since: 0, streams: {all: {epoch: seen["epoch"], offset: seen["offset"] + 100_000}}})
    expect(b.receive).to eq("type" => "reject_history", "identifier" => ida)
  end

  it "refuses a position older than the history keeps (HISTORY_LIMIT 5 per stream)" do
    a, ida = ext_on(@one)
    post(@one, 40)
    seen = a.receive
    6.times { |i| post(@two, 41 + i) }
    6.times { a.receive }
    a.send_json(command: "history", identifier: ida,
      history: {since: 0, streams: {all: {epoch: seen["epoch"], offset: seen["offset"]}}})
    expect(a.receive).to eq("type" => "reject_history", "identifier" => ida)
  end

  it "loses nothing while nats-server restarts: broadcasts wait, then come with their offsets" do
    a, = ext_on(@one)
    post(@one, 50)
    before = a.receive.fetch("offset")
    @nats.stop
    post(@one, 51) # queued in node one while NATS is away
    post(@two, 52)
    sleep 0.5
    @nats.start
    got = [a.receive(timeout: 20), a.receive(timeout: 20)]
    expect(got.map { |m| m["message"]["n"] }).to contain_exactly(51, 52)
    expect(got.map { |m| m["offset"] }).to all(be > before)
    expect(got.map { |m| m["offset"] }.uniq.size).to eq(2)
    post(@two, 53)
    expect(a.receive(timeout: 10)["message"]).to eq("n" => 53)
    expect(a.silent_for?(0.5)).to be(true)
  end

  it "replays the recent tail from memory: while nats-server is away, on a node that read it and on one that started after it (preloaded)" do
    a, ida = ext_on(@one)
    post(@one, 80)
    seen = a.receive
    a.close
    # Another stream over its limit (5): JetStream deletes its oldest from the middle
    # of the history stream; the node started below reads past those holes.
    8.times { |i| expect(@one.http(:post, "/broadcast", stream: "other", payload: JSON.generate(o: i)).code).to eq("201") }
    post(@two, 81)
    post(@one, 82)
    three = PumaServer.new(env: @env.merge("DUMMY_DATABASE" => @one.env["DUMMY_DATABASE"])).start
    begin
      wait_for(timeout: 20) { three.log.include?("NATS broker: JetStream stream anycable_history") }
      # Each node has read 82: a client there gets it live.
      witnesses = [@one, three].map { |server| ext_on(server) }
      post(@two, 83)
      witnesses.each { |w, _| expect(w.receive["message"]).to eq("n" => 83) }
      @nats.stop
      [@one, three].each do |server|
        b = client(name: "alice", port: server.port, protocols: [ext_protocol])
        b.welcome!
        b.send_json(command: "subscribe", identifier: ida,
          history: {since: 0, streams: {all: {epoch: seen["epoch"], offset: seen["offset"]}}})
        expect(b.receive).to eq("identifier" => ida, "type" => "confirm_subscription")
        replay = 3.times.map { b.receive(timeout: 5) }
        expect(replay.map { |m| m["message"]["n"] }).to eq([81, 82, 83])
        expect(replay.map { |m| m["epoch"] }).to all(eq(seen["epoch"]))
        expect(b.receive).to eq("type" => "confirm_history", "identifier" => ida)
        b.close
      end
    ensure
      @nats.start
      three.stop
      three.cleanup
    end
    # Both nodes back on NATS before the next example.
    c, = ext_on(@one)
    d, = ext_on(@two)
    post(@two, 84)
    [c, d].each { |x| expect(x.receive(timeout: 20)["message"]).to eq("n" => 84) }
  end

  it "a node that boots with a shorter HISTORY_TTL and delivered nothing yet survives a NATS restart: no old message comes back live" do
    post(@one, 70) # history for the new node's consumer not to deliver
    three = PumaServer.new(env: @env.merge("ANYCABLE_HISTORY_TTL" => "60", "ANYCABLE_SESSIONS_TTL" => "60",
      "DUMMY_DATABASE" => @one.env["DUMMY_DATABASE"])).start
    begin
      # Under 2 minutes: the stream's duplicate window has to shrink with it.
      wait_for(timeout: 20) { three.log.include?("NATS broker: JetStream stream anycable_history") }
      c, = ext_on(three)
      @nats.stop
      sleep 0.5
      @nats.start
      sleep 1.5 # the client library rebuilds its consumer
      post(@one, 71)
      expect(c.receive(timeout: 10)["message"]).to eq("n" => 71)
      expect(c.silent_for?(0.5)).to be(true)
      expect(three.log).not_to include("sessions are not kept") # SESSIONS_TTL 60: the bucket's window shrank too
    ensure
      three.stop
      three.cleanup
    end
  end

  it "replays by time (since) on the other node" do
    a, ida = ext_on(@one)
    since = Time.now.to_i
    post(@one, 20)
    a.receive
    b = client(name: "alice", port: @two.port, protocols: [ext_protocol])
    b.welcome!
    b.send_json(command: "subscribe", identifier: ida, history: {since: since})
    expect(b.receive).to eq("identifier" => ida, "type" => "confirm_subscription")
    msgs = []
    loop do
      m = b.receive
      break expect(m).to(eq("type" => "confirm_history", "identifier" => ida)) if m["type"]

      msgs << m["message"]
    end
    expect(msgs).to include("n" => 20)
  end

  it "restores a session on the other node from the KV bucket (no connect, no subscribed), once" do
    a = client(name: "alice", port: @one.port, protocols: [ext_protocol])
    sid = a.welcome!.fetch("sid")
    ida = subscribed(a, echo)
    connects = -> { @one.http(:get, "/events").body.scan('"connect"').size }
    before = connects.call
    a.close
    sleep 0.3 # node one notices the close and writes the session's last word
    b = client(port: @two.port, protocols: [ext_protocol], path: "/cable?sid=#{sid}")
    welcome = b.welcome!
    expect(welcome).to include("type" => "welcome", "restored" => true, "restored_ids" => [ida])
    expect(welcome["sid"]).not_to eq(sid)
    post(@one, 30)
    expect(b.receive).to include("identifier" => ida, "message" => {"n" => 30})
    expect(connects.call).to eq(before)
    # A sid restores once.
    c = client(name: "alice", port: @two.port, protocols: [ext_protocol], path: "/cable?sid=#{sid}")
    expect(c.welcome!).not_to include("restored")
  end

  it "restores a sid once when several clients race for it, on both nodes" do
    # A race: three rounds, so a get-then-purge take (which let most through) is caught.
    3.times do
      a = client(name: "alice", port: @one.port, protocols: [ext_protocol])
      sid = a.welcome!.fetch("sid")
      subscribed(a, echo)
      a.close
      sleep 0.3 # node one writes the session's last word
      # No login (a restore needs none): the ten requests leave together.
      go = Queue.new
      threads = Array.new(10) do |i|
        Thread.new do
          go.pop
          # The first frame: a restored welcome, or (no cookie: the app's connect) unauthorized.
          client(port: [@one, @two][i % 2].port, protocols: [ext_protocol], path: "/cable?sid=#{sid}").receive
        end
      end
      sleep 0.1
      10.times { go << true }
      firsts = threads.map(&:value)
      expect(firsts.count { |m| m["type"] == "welcome" && m["restored"] }).to eq(1), firsts.inspect
    end
  end

  it "rejects a restored subscription whose channel is gone (a deploy renamed it), and keeps the rest" do
    a = client(name: "alice", port: @one.port, protocols: [ext_protocol])
    sid = a.welcome!.fetch("sid")
    ida = subscribed(a, echo)
    a.close
    sleep 0.3
    # The stored session as a node running older code left it: one more channel.
    entry = nil
    wait_for { entry = kv_get(session_key(sid)) }
    # Keyed by the sid's SHA-256: listing the bucket gives no sid (a credential).
    expect(kv_get(sid)).to be_nil
    session = JSON.parse(unseal(session_key(sid), entry))
    gone = JSON.generate(channel: "RenamedAwayChannel")
    session["subscriptions"] << session["subscriptions"].first.merge("identifier" => gone, "streams" => ["gone"])
    kv_put(session_key(sid), seal(session_key(sid), JSON.generate(session)))
    b = client(port: @two.port, protocols: [ext_protocol], path: "/cable?sid=#{sid}")
    expect(b.welcome!).to include("restored" => true, "restored_ids" => contain_exactly(ida, gone))
    expect(b.receive).to eq("identifier" => gone, "type" => "reject_subscription")
    post(@two, 60)
    expect(b.receive).to include("identifier" => ida, "message" => {"n" => 60})
    expect(b.silent_for?(0.3)).to be(true)
  end

  # The NATS broker's session bucket, read and written as a NATS client would.
  def kv_request(line)
    socket = TCPSocket.new("127.0.0.1", @nats.port)
    socket.gets # INFO
    socket.write("CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB _INBOX.kv 1\r\n#{line}PING\r\n")
    out = nil
    loop do
      l = socket.gets or break
      break if l.start_with?("PONG") && line.start_with?("PUB $KV")
      next unless l.start_with?("MSG", "HMSG")

      out = socket.read(l.split.last.to_i + 2)[0...-2]
      break
    end
    out
  ensure
    socket&.close
  end

  def session_key(sid)
    Digest::SHA256.hexdigest(sid)
  end

  # The app's sessions key, as AnyCableRs::Config#sessions_key derives it (the dummy
  # app has no ANYCABLE_SECRET: its secret_key_base).
  def sessions_key(base = "dummy-secret-key-base-for-tests-only-0123456789abcdef")
    OpenSSL::HMAC.digest("SHA256", base, "anycable-rs sessions")
  end

  # A stored session's format (anycable_core::broker::seal): 1, nonce, ciphertext, tag;
  # the bucket key is the additional data.
  def seal(key, json, secret: sessions_key)
    c = OpenSSL::Cipher.new("aes-256-gcm").encrypt
    c.key = secret
    nonce = c.random_iv
    c.auth_data = key
    body = c.update(json) + c.final
    "\x01".b + nonce + body + c.auth_tag
  end

  def unseal(key, sealed)
    sealed = sealed.b
    expect(sealed.getbyte(0)).to eq(1)
    c = OpenSSL::Cipher.new("aes-256-gcm").decrypt
    c.key = sessions_key
    c.iv = sealed[1, 12]
    c.auth_tag = sealed[-16..]
    c.auth_data = key
    c.update(sealed[13...-16]) + c.final
  end

  def kv_get(key)
    body = JSON.generate(last_by_subj: "$KV.anycable_rs_sessions.#{key}")
    reply = kv_request("PUB $JS.API.DIRECT.GET.KV_anycable_rs_sessions _INBOX.kv #{body.bytesize}\r\n#{body}\r\n")
    reply && !reply.start_with?("NATS/1.0 404") ? reply[/\r\n\r\n(.*)\z/m, 1] : nil
  end

  def kv_put(key, json)
    kv_request("PUB $KV.anycable_rs_sessions.#{key} #{json.bytesize}\r\n#{json}\r\n")
  end

  # Whoever reaches NATS (someone on the private network): the bucket tells them no
  # one's identifiers, and an entry they write does not restore.
  it "seals stored sessions: unreadable in the bucket, and a forged, moved or foreign-key entry restores no one" do
    a = client(name: "alice", port: @one.port, protocols: [ext_protocol])
    sid = a.welcome!.fetch("sid")
    subscribed(a, echo)
    a.close
    entry = nil
    wait_for { entry = kv_get(session_key(sid)) }
    plain = unseal(session_key(sid), entry)
    user_gid = JSON.parse(JSON.parse(plain)["identifiers"])["current_user"]
    expect(user_gid).to be_a(String)
    expect(entry.b).not_to include(user_gid.b)
    expect(entry.b).not_to include("EchoChannel".b)
    forged = {
      # plain JSON, as the stored format was; alice's own entry moved under the
      # attacker's sid; sealed with another secret.
      "made-up-sid-1" => plain,
      "made-up-sid-2" => entry,
      "made-up-sid-3" => seal(session_key("made-up-sid-3"), plain, secret: sessions_key("another-app"))
    }
    forged.each { |forged_sid, value| kv_put(session_key(forged_sid), value) }
    forged.each_key do |forged_sid|
      c = client(port: @two.port, protocols: [ext_protocol], path: "/cable?sid=#{forged_sid}")
      welcome = c.receive
      # Refused like an unknown sid: the app's connect ran (no cookie: rejected).
      expect(welcome).not_to include("restored" => true)
      expect(welcome["type"]).to eq("disconnect"), welcome.inspect
    end
    expect(@two.log).to include("did not open with this app's key")
    # Alice's own sid still restores (her entry was only copied).
    b = client(port: @two.port, protocols: [ext_protocol], path: "/cable?sid=#{sid}")
    expect(b.welcome!).to include("restored" => true)
  end

  # Someone on the private network who reads NATS: whispers and to_others broadcasts
  # name the sender by its sid's digest, never by the sid that would restore its session.
  it "puts no sid on a NATS subject: whispers and to_others carry its digest" do
    sniffer, seen = nats_sniffer(@nats.port)
    reader = Thread.new { loop { seen << sniffer.readpartial(65_536) } rescue nil } # rubocop:disable Style/RescueModifier
    room = {channel: "WhisperChannel", room: "sniffed"}
    a = client(name: "alice", port: @one.port, protocols: [ext_protocol])
    sid_a = a.welcome!.fetch("sid")
    ia = subscribed(a, room)
    b = client(name: "bob", port: @two.port, protocols: [ext_protocol])
    b.welcome!
    subscribed(b, room)
    a.send_json(command: "whisper", identifier: ia, data: {typing: true})
    expect(b.receive).to include("message" => {"typing" => true})
    a.send_json(command: "message", identifier: ia, data: JSON.generate(action: "shout", text: "hi"))
    expect(b.receive).to include("message" => {"shout" => "hi"})
    res = @two.http(:post, "/broadcast", {stream: "whisper:sniffed", payload: '{"n":1}', to_others: "1"}, {"X-Socket-ID" => sid_a})
    expect(res.code).to eq("201")
    expect(b.receive).to include("message" => {"n" => 1})
    third_process("AnyCableRs.broadcast('whisper:sniffed', {'n' => 2}, exclude_socket: #{sid_a.inspect})")
    expect(b.receive).to include("message" => {"n" => 2})
    expect(a.silent_for?(0.3)).to be(true)
    sleep 0.2
    expect(seen).to include("sha256:#{Digest::SHA256.hexdigest(sid_a)}")
    expect(seen).not_to include(sid_a)
  ensure
    reader&.kill
    sniffer&.close
  end

  it "keeps whispers and remote disconnects off the history (core NATS)" do
    a, ida = ext_on(@one)
    third_process('AnyCableRs::Broadcasting.deliver(JSON.generate([{stream: "all", data: "{\"t\":1}", meta: {transient: true}}, ' \
      '{stream: "all", data: "{\"t\":2}"}]))')
    got = [a.receive, a.receive].sort_by { |m| m["message"]["t"] }
    expect(got[0]).not_to include("offset")
    expect(got[1]).to include("offset")
  end
end

# Puma cluster mode: each worker reads the JetStream stream itself, so every client of
# either worker gets each broadcast once, with the same offset.
RSpec.describe "The NATS broker under Puma workers", type: :cable do
  before(:all) do
    @nats = JetStreamServer.new.start
    @puma = PumaServer.new(workers: 2, env: {"ANYCABLE_BROKER" => "nats", "ANYCABLE_BROADCAST_ADAPTER" => "nats",
                                              "ANYCABLE_NATS_SERVERS" => @nats.url}).start
  end

  after(:all) do
    @puma&.stop
    @puma&.cleanup
    @nats&.stop
    @nats&.cleanup
  end

  attr_reader :puma

  it "gives every client of both workers each broadcast once, with one offset" do
    wait_for(timeout: 30) { puma.log.scan("NATS broker: JetStream stream anycable_history").size >= 2 }
    clients = Array.new(10) { connected(name: "w", protocols: ["actioncable-v1-ext-json"]) }
    ids = clients.map { |c| subscribed(c, channel: "EchoChannel") }
    expect(sessions_per_worker.values).to all(be_positive)
    3.times do |i|
      expect(puma.http(:post, "/broadcast", stream: "all", payload: %({"n":#{i}})).code).to eq("201")
      got = clients.zip(ids).map { |c, id| c.receive.tap { |m| expect(m).to include("identifier" => id, "message" => {"n" => i}) } }
      expect(got.map { |m| m["offset"] }.uniq.size).to eq(1)
    end
    expect(clients.map { |c| c.silent_for?(0.2) }).to all(be(true))
  end
end

# A machine stopped while what it broadcast is not stored yet: the shutdown waits for
# it (the rest of ANYCABLE_SHUTDOWN_TIMEOUT, two seconds at least) and says how many it
# could not store — never a silent loss.
RSpec.describe "The NATS broker at shutdown", type: :cable do
  before(:all) do
    @nats = JetStreamServer.new.start
    @puma = PumaServer.new(env: {"ANYCABLE_BROKER" => "nats", "ANYCABLE_BROADCAST_ADAPTER" => "nats",
                                 "ANYCABLE_NATS_SERVERS" => @nats.url}).start
    wait_for(timeout: 20) { @puma.log.include?("NATS broker: JetStream stream anycable_history") }
  end

  after(:all) do
    @puma&.stop
    @puma&.cleanup
    @nats&.stop
    @nats&.cleanup
  end

  it "stores what is still queued before the process goes, and names what it could not" do
    post = ->(n) { expect(puma.http(:post, "/broadcast", stream: "all", payload: JSON.generate(n: n)).code).to eq("201") }
    post.call(1)
    @nats.stop
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    post.call(2) # NATS out of reach: queued, and the request does not wait for it
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 2
    puma.stop
    expect(puma.log).to match(/shutdown: 1 broadcasts made in this process were not yet taken by nats after [\d.]+ s: lost/)
  end
end
