# frozen_string_literal: true

require "spec_helper"
require "tmpdir"
require "logger"
require "open3"
require "anycable_rs"

# Embedded NATS (ANYCABLE_EMBED_NATS): each node (a real Puma of spec/dummy) runs
# Debian's nats-server as a supervised child, and the nodes' servers form a cluster on
# loopback, each with its own client and route ports, routes listing the others.
module EnatsHelpers
  # The app's secret, the same on every node: they derive the NATS logins from it.
  SECRET = "enats-test-secret"

  # What nats-server answers a CONNECT (+ PING) on `port`; `nkey_seed`: an nkey login
  # (the server's nonce signed).
  def nats_answer(port, connect, nkey_seed = nil)
    TCPSocket.open("127.0.0.1", port) do |s|
      info = JSON.parse(s.gets.to_s[/\AINFO (.*)/, 1] || "{}")
      if nkey_seed
        connect = connect.merge(nkey: AnyCableRs::Native.nkey_public(nkey_seed),
          sig: AnyCableRs::Native.nkey_sign(nkey_seed, info.fetch("nonce")))
      end
      s.write("CONNECT #{JSON.generate({verbose: false}.merge(connect))}\r\nPING\r\n")
      s.gets.to_s.strip
    end
  end
  Node = Struct.new(:name, :client_port, :route_port, :workers, :preload, :puma, :settings, keyword_init: true) do
    def env(routes)
      {"ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_ENATS_ADDR" => "nats://127.0.0.1:#{client_port}",
       "ANYCABLE_SECRET" => SECRET,
       "ANYCABLE_ENATS_CLUSTER" => "nats://127.0.0.1:#{route_port}",
       "ANYCABLE_ENATS_CLUSTER_ROUTES" => routes.map { |p| "nats://127.0.0.1:#{p}" }.join(",")}
    end
  end

  # Children of every thread of `pid` (nats-server is spawned from a supervisor thread).
  def children_of(pid)
    Dir["/proc/#{pid}/task/*/children"].flat_map { |f| File.read(f).split.map(&:to_i) }
  rescue Errno::ENOENT, Errno::ESRCH
    []
  end

  def nats_server?(pid)
    File.read("/proc/#{pid}/comm").strip == "nats-server"
  rescue Errno::ENOENT, Errno::ESRCH
    false
  end

  def gone?(pid)
    state = File.read("/proc/#{pid}/stat")[/\) (\w)/, 1]
    state == "Z" || state == "X"
  rescue Errno::ENOENT, Errno::ESRCH
    true
  end

  def nats_children(pid)
    children_of(pid).select { |c| nats_server?(c) }
  end

  def thread_names(pid)
    Dir["/proc/#{pid}/task/*/comm"].map { |f| File.read(f).strip rescue "" } # rubocop:disable Style/RescueModifier
  end

  def start_all(servers)
    servers.map { |s| Thread.new { s.start } }.each(&:value)
  end

  # Clients of `server`, logged in there (each node has its own database).
  def on(server, count)
    cookie = server.http(:get, "/login?name=n").get_fields("set-cookie").map { |v| v.split(";").first }.join("; ")
    Array.new(count) do
      c = connected(name: nil, port: server.port, headers: {"Cookie" => cookie})
      [c, subscribed(c, channel: "EchoChannel")]
    end
  end

  # Clients of a Puma with workers, until every worker serves some (which worker
  # accepts a connection is up to the kernel).
  def on_every_worker(server, at_least)
    subs = on(server, at_least)
    subs += on(server, 2) until sessions_per_worker.values.all?(&:positive?) || subs.size >= 40
    expect(sessions_per_worker.values).to all(be_positive)
    subs
  end

  def post(server, payload)
    res = server.http(:post, "/broadcast", stream: "all", payload: JSON.generate(payload))
    expect(res.code).to eq("201")
  end

  # Messages queued for a client right now (pings and other identifiers left out).
  def queued(c, id)
    out = []
    loop do
      msg = c.receive(timeout: 0.01)
      break if msg == :closed

      out << msg["message"] if msg["identifier"] == id
    end
  rescue WsClient::Timeout
    out
  end

  # Probes from `from` until every client got one: subscriptions and routes are up.
  def await_mesh(from, clients, timeout: 20)
    waiting = clients.dup
    deadline = Time.now + timeout
    n = 0
    until waiting.empty?
      raise "#{waiting.size} of #{clients.size} clients got no probe from #{from.port} within #{timeout}s" if Time.now > deadline

      post(from, "probe" => (n += 1))
      sleep 0.2
      waiting.reject! { |c, id| queued(c, id).any? { |m| m.is_a?(Hash) && m.key?("probe") } }
    end
    sleep 0.3
    clients.each { |c, id| queued(c, id) }
  end

  # A broadcast made through `from` reaches each client exactly once.
  def each_once(from, clients, payload)
    post(from, payload)
    clients.each do |c, id|
      got = []
      deadline = Time.now + 5
      until got.any? || Time.now > deadline
        got.concat(queued(c, id).reject { |m| m.key?("probe") })
        sleep 0.02 if got.empty?
      end
      expect(got.first).to eq(payload)
    end
    sleep 0.3
    extra = clients.flat_map { |c, id| queued(c, id).reject { |m| m.key?("probe") } }
    expect(extra).to eq([]), "duplicates: #{extra.inspect}"
  end

  def dump_logs(servers)
    servers.compact.each do |s|
      warn "--- puma #{s.port} ---\n#{s.log[-2500..] || s.log}"
      warn "--- rails #{s.port} (nats lines) ---\n#{s.rails_log.lines.grep(/nats|NATS/).last(25).join}"
    end
  end
end

# Clients live across the examples (not type: :cable, whose hook closes them after each).
RSpec.describe "Embedded NATS across nodes on loopback" do
  include CableHelpers
  include EnatsHelpers

  before(:all) do
    ports = Array.new(6) { PumaServer.free_port }
    @nodes = {
      a: EnatsHelpers::Node.new(name: "a", client_port: ports[0], route_port: ports[1], workers: 2, preload: true),
      b: EnatsHelpers::Node.new(name: "b", client_port: ports[2], route_port: ports[3], workers: 0, preload: false),
      c: EnatsHelpers::Node.new(name: "c", client_port: ports[4], route_port: ports[5], workers: 0, preload: false)
    }
    @nodes.each_value do |n|
      others = @nodes.values.reject { |o| o.equal?(n) }.map(&:route_port)
      n.settings = n.env(others)
      n.puma = PumaServer.new(env: n.settings, workers: n.workers, preload: n.preload)
    end
    @subs = {}
    start_all([@nodes[:a].puma, @nodes[:b].puma])
  end

  after(:all) do
    @subs&.each_value { |list| list.each { |c, _| c.close rescue nil } } # rubocop:disable Style/RescueModifier
    @nodes&.each_value do |n|
      n.puma&.stop
      n.puma&.cleanup
    end
  end

  after do |example|
    dump_logs(@nodes.values.map(&:puma)) if example.exception
  end

  def puma
    @nodes[:a].puma
  end

  def everyone
    @subs.values.flatten(1)
  end

  it "two nodes: the preloading master and the single-mode process each run one nats-server; every broadcast reaches every client once" do
    a = @nodes[:a].puma
    b = @nodes[:b].puma
    # A: the master owns the child (plain Ruby threads, no tokio); its workers run none.
    expect(nats_children(a.pid).size).to eq(1)
    workers = File.read("/proc/#{a.pid}/task/#{a.pid}/children").split.map(&:to_i) - nats_children(a.pid)
    expect(workers.size).to eq(2)
    workers.each { |w| expect(nats_children(w)).to eq([]) }
    expect(thread_names(a.pid).grep(/anycable-rs/)).to eq([])
    expect(thread_names(a.pid)).to include("enats")
    # Puma warns of threads started in app boot; the supervisor's are marked fork-safe.
    expect(a.log.lines.grep(/! #<Thread/).grep(/embedded_nats/)).to eq([])
    expect(nats_children(b.pid).size).to eq(1)
    expect(a.rails_log).to include("[nats-server]")

    @subs[:a] = on_every_worker(a, 6)
    @subs[:b] = on(b, 2)
    await_mesh(a, everyone)
    await_mesh(b, everyone)
    each_once(a, everyone, "from" => "a")
    each_once(b, everyone, "from" => "b")
  end

  it "three nodes: a third joins through its routes and gets every node's broadcasts once" do
    c = @nodes[:c].puma.start
    @subs[:c] = on(c, 2)
    %i[a b c].each { |from| await_mesh(@nodes[from].puma, everyone) }
    %i[a b c].each { |from| each_once(@nodes[from].puma, everyone, "from" => from.to_s) }

    # A process that serves no sockets (console, job runner, script) publishes to the
    # machine's nats-server: ANYCABLE_NATS_SERVERS defaults to ANYCABLE_ENATS_ADDR.
    script = 'require "anycable_rs"; AnyCableRs.broadcast("all", {"from" => "script"})'
    out, status = Open3.capture2e({"ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_ENATS_ADDR" => "nats://127.0.0.1:#{@nodes[:c].client_port}",
      "ANYCABLE_SECRET" => EnatsHelpers::SECRET},
      "ruby", "-I", File.expand_path("../../lib", __dir__), "-e", script)
    expect(status).to be_success, out
    everyone.each { |c, id| expect(message_for(c, id)).to eq("from" => "script") }
  end

  # Clients log in with the secret's nkey (a signature of the server's nonce: whatever
  # answers on the port learns no secret); the routes with the secret's password,
  # which no client sends and no command line shows.
  it "asks every client for the secret's nkey on its client port; no password there, none on a command line" do
    a = @nodes[:a]
    expect(nats_answer(a.client_port, {})).to match(/-ERR 'Authorization Violation'/)
    password = AnyCableRs::EmbeddedNats.route_password(EnatsHelpers::SECRET)
    expect(nats_answer(a.client_port, user: "anycable", pass: password)).to match(/-ERR 'Authorization Violation'/)
    other_seed, = AnyCableRs::Native.nkey_user("ab" * 32)
    expect(nats_answer(a.client_port, {}, other_seed)).to match(/-ERR 'Authorization Violation'/)
    seed, public_key = AnyCableRs::EmbeddedNats.nkey(EnatsHelpers::SECRET, "nats://127.0.0.1:#{a.client_port}")
    expect(nats_answer(a.client_port, {}, seed)).to eq("PONG")
    child = nats_children(a.puma.pid).first
    cmdline = File.read("/proc/#{child}/cmdline").split("\0")
    expect(cmdline.join(" ")).not_to include(password)
    conf = cmdline[cmdline.index("-c") + 1]
    expect(File.stat(conf).mode & 0o777).to eq(0o600)
    expect(File.read(conf)).to include(public_key, password)
    expect(File.read(conf)).not_to include(seed)
    [a.puma.log, a.puma.rails_log].each { |log| expect(log).not_to include(password, seed) }
  end

  it "a node killed with SIGKILL takes its nats-server along; the others keep delivering; restarted, it rejoins" do
    b = @nodes[:b]
    child = nats_children(b.puma.pid).first
    Process.kill("KILL", -b.puma.pid)
    Process.wait(b.puma.pid)
    wait_for(timeout: 5) { gone?(child) }
    @subs.delete(:b)
    each_once(@nodes[:a].puma, everyone, "after" => "kill")
    each_once(@nodes[:c].puma, everyone, "after" => "kill, from c")

    b.puma.cleanup
    b.puma = PumaServer.new(env: b.settings).start
    expect(nats_children(b.puma.pid).size).to eq(1)
    @subs[:b] = on(b.puma, 2)
    %i[b a].each { |from| await_mesh(@nodes[from].puma, everyone) }
    each_once(b.puma, everyone, "rejoined" => "b")
    each_once(@nodes[:a].puma, everyone, "rejoined" => "a")
  end

  it "the supervised nats-server killed: the master starts another and broadcasts resume" do
    a = @nodes[:a].puma
    old = nats_children(a.pid).first
    Process.kill("KILL", old)
    fresh = wait_for(timeout: 5) { (nats_children(a.pid) - [old]).first }
    expect(fresh).not_to eq(old)
    if RunningVersions.puma_master_reaps_all?
      # Puma's master took the status; its log has it, ours says where it went.
      wait_for { a.rails_log.include?("nats-server (pid #{old}) exited (reaped elsewhere") }
      expect(a.log).to include("reaped unknown child process pid=#{old} status=pid #{old} SIGKILL (signal 9)")
    else
      wait_for { a.rails_log.include?("nats-server (pid #{old}) exited (signal KILL); restarting") }
    end
    %i[a c b].each { |from| await_mesh(@nodes[from].puma, everyone) }
    %i[a b c].each { |from| each_once(@nodes[from].puma, everyone, "resumed" => from.to_s) }
  end

  it "stops each node's nats-server with the node (TERM)" do
    children = @nodes.values.to_h { |n| [n.name, nats_children(n.puma.pid)] }
    expect(children.values.map(&:size)).to all(eq(1))
    @nodes.each_value { |n| n.puma.stop }
    children.each_value { |pids| wait_for(timeout: 5) { gone?(pids.first) } }
    expect(@nodes[:a].puma.rails_log).to include("[nats-server]").and include("Server Exiting")
  end
end

# Without preload_app the app loads only in the workers: the first to boot owns the
# child, the other stands by; when the owner dies, its nats-server goes with it and a
# live worker (or the replacement) starts a new one.
RSpec.describe "Embedded NATS under Puma workers without preload_app", type: :cable do
  include EnatsHelpers

  before(:all) do
    @client_port = PumaServer.free_port
    @puma = PumaServer.new(workers: 2,
      env: {"ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_ENATS_ADDR" => "nats://127.0.0.1:#{@client_port}"}).start
  end

  after(:all) do
    @puma&.stop
    @puma&.cleanup
  end

  after do |example|
    dump_logs([@puma]) if example.exception
  end

  def workers
    File.read("/proc/#{puma.pid}/task/#{puma.pid}/children").split.map(&:to_i)
  end

  def owners
    workers.select { |w| nats_children(w).any? }
  end

  it "runs one nats-server, in one worker, and re-owns it when that worker dies" do
    wait_for(timeout: 20) { puma.log.scan(/Worker \d+ \(PID: \d+\) booted/).size >= 2 }
    expect(nats_children(puma.pid)).to eq([])
    expect(owners.size).to eq(1)
    # No secret (one machine): clients still log in with an nkey — this machine's
    # random one — so no plaintext password is anywhere (nats-server warned of one).
    expect(nats_answer(@client_port, {})).to match(/-ERR 'Authorization Violation'/)
    expect(nats_answer(@client_port, {}, AnyCableRs::EmbeddedNats.nkey(nil, "nats://127.0.0.1:#{@client_port}").first)).to eq("PONG")
    expect(puma.rails_log).not_to include("Plaintext passwords")
    owner = owners.first
    child = nats_children(owner).first
    clients = on_every_worker(puma, 6)
    await_mesh(puma, clients)
    each_once(puma, clients, "n" => 1)

    Process.kill("KILL", owner)
    wait_for(timeout: 5) { gone?(child) }
    wait_for(timeout: 20) { (w = workers).size == 2 && !w.include?(owner) && owners.size == 1 }
    wait_for(timeout: 20) { puma.log.scan(/Worker \d+ \(PID: \d+\) booted/).size >= 3 }
    expect(nats_children(owners.first).first).not_to eq(child)
    expect(puma.rails_log.scan(/started nats-server/).size).to eq(2)
    clients = on_every_worker(puma, 6)
    await_mesh(puma, clients)
    each_once(puma, clients, "n" => 2)
  end
end

RSpec.describe "Embedded NATS with the NATS broker (JetStream)", type: :cable do
  with_puma(env: {"ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_BROKER" => "nats",
                  "ANYCABLE_ENATS_ADDR" => "nats://127.0.0.1:#{PumaServer.free_port}"})

  after(:all) do
    port = URI(puma.env["ANYCABLE_ENATS_ADDR"]).port
    FileUtils.rm_rf(File.join(AnyCableRs::PrivateDir.base, "jetstream-#{port}"))
  end

  it "stores broadcasts in the embedded server's JetStream: offsets, and history after a reconnect" do
    wait_for(timeout: 20) { puma.log.include?("NATS broker: JetStream stream anycable_history") }
    a = client(name: "alice", protocols: ["actioncable-v1-ext-json"])
    a.welcome!
    id = subscribed(a, {channel: "EchoChannel"})
    broadcast("all", {n: 1})
    first = a.receive
    expect(first).to include("message" => {"n" => 1}, "stream_id" => "all", "offset" => Integer)
    a.close
    broadcast("all", {n: 2})
    b = client(name: "alice", protocols: ["actioncable-v1-ext-json"])
    b.welcome!
    b.send_json(command: "subscribe", identifier: id,
      history: {since: 0, streams: {all: {epoch: first["epoch"], offset: first["offset"]}}})
    expect(b.receive["type"]).to eq("confirm_subscription")
    expect(b.receive).to include("message" => {"n" => 2}, "epoch" => first["epoch"])
    expect(b.receive["type"]).to eq("confirm_history")
  end
end

# A deploy stops a machine with SIGTERM to Puma. The nats-server must outlive the app's
# own shutdown: the sockets' unsubscribed callbacks (which broadcast) and the extended
# protocol's sessions, kept for a restore on the next boot, both need it. In single
# mode Puma fires on_stopped before its server drains (where the gem used to stop
# it); a preloading cluster master owns it while its workers drain.
RSpec.describe "Embedded NATS stopped after Puma has drained (SIGTERM)", type: :cable do
  after do |example|
    if example.exception && @puma
      warn "--- puma log ---\n#{@puma.log[-4000..] || @puma.log}"
      warn "--- rails log (tail) ---\n#{@puma.rails_log.lines.last(60).join}"
    end
    @puma&.stop
    @puma&.cleanup
    FileUtils.rm_rf(File.join(AnyCableRs::PrivateDir.base, "jetstream-#{@nats_port}")) if @nats_port
  end

  {"single mode" => {}, "workers, preload_app" => {workers: 2, preload: true}}.each do |mode, opts|
    it "#{mode}: runs unsubscribed with NATS up (its broadcast stored), keeps the session, and restores it after the restart" do
      @nats_port = PumaServer.free_port
      @puma = PumaServer.new(env: {"ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_BROKER" => "nats",
                                   "ANYCABLE_ENATS_ADDR" => "nats://127.0.0.1:#{@nats_port}"}, **opts).start
      wait_for(timeout: 20) { puma.log.include?("NATS broker: JetStream stream anycable_history") }
      ext = ["actioncable-v1-ext-json"]
      a = client(name: "alice", protocols: ext)
      sid = a.welcome!.fetch("sid")
      id = subscribed(a, {channel: "EchoChannel", farewell: true})
      broadcast("all", {n: 1})
      first = a.receive
      expect(first).to include("message" => {"n" => 1}, "offset" => Integer)
      plain = connected(name: "bob")
      # In a presence set: told (a restore would not bring the place back), so its
      # client subscribes and joins again.
      present = client(name: "carol", protocols: ext)
      present.welcome!
      lobby = present.subscribe(channel: "LobbyChannel", room: "deploy", auto_join: true)
      expect(present.receive).to eq("identifier" => lobby, "type" => "confirm_subscription")
      expect(present.receive).to include("type" => "presence")
      puma.stop
      # The extended-protocol client: a bare 1001, no `disconnect` message (on which
      # AnyCable's JS client forgets its sid); an Action Cable client is told, as Rails does.
      expect(a.receive).to eq(:closed)
      expect(a.close_event.code).to eq(1001)
      [plain, present].each do |c|
        expect(c.receive).to include("type" => "disconnect", "reason" => "server_restart", "reconnect" => true)
      end
      log = puma.rails_log
      expect(log).to include("Server Exiting")
      expect(log).not_to include("ECONNREFUSED")
      expect(log).not_to match(/had not finished|never ran or did not finish/)
      # nats-server said goodbye after the app's callbacks ran.
      expect(log.index("Server Exiting")).to be > log.index('Broadcasting to all: {"farewell"=>"alice"}').to_i

      puma.start
      b = client(protocols: ext, path: "/cable?sid=#{sid}")
      expect(b.welcome!).to include("restored" => true, "restored_ids" => [id])
      b.send_json(command: "history", identifier: id,
        history: {streams: {all: {epoch: first["epoch"], offset: first["offset"]}}})
      expect(b.receive).to include("identifier" => id, "message" => {"farewell" => "alice"}, "epoch" => first["epoch"])
      expect(b.receive).to include("type" => "confirm_history")
      # Stored before its socket closed, and taken by that restore: never again.
      again = client(protocols: ext, path: "/cable?sid=#{sid}", name: "alice")
      expect(again.welcome!).not_to include("restored")
    end
  end
end

# `rails server`: the app boots in the process that becomes Puma's master (workers from
# WEB_CONCURRENCY), which owns the child. Ctrl-C (SIGINT) makes Puma's master wait for
# all its children once the workers are gone: the nats-server must be stopped by then.
# Also the workers' SIGTERM (issue #21): on Puma 6.6/Ruby 3.3 a cluster worker stopped
# from Puma's trap never exited in ~1 of 7 runs (its server thread stuck closing the
# wake-up pipe: Puma issue #3677); the gem runs that handler off the trap. ROUNDS
# servers in a row (SIGINT_ROUNDS to change).
RSpec.describe "Embedded NATS under `rails server` with workers", type: :cable do
  include EnatsHelpers

  rounds = Integer(ENV.fetch("SIGINT_ROUNDS", "8"))

  def rails_server(dir)
    port = PumaServer.free_port
    log = File.join(dir, "out.log")
    script = 'APP_PATH = File.expand_path("config/application", Dir.pwd); require "rails/commands"'
    pid = Process.spawn(
      {"RAILS_ENV" => "test", "ANYCABLE_EMBEDDED" => "true", "WEB_CONCURRENCY" => "2", "ANYCABLE_EMBED_NATS" => "true",
       "ANYCABLE_ENATS_ADDR" => "nats://127.0.0.1:#{PumaServer.free_port}",
       "DUMMY_DATABASE" => File.join(dir, "db.sqlite3"), "DUMMY_LOG" => File.join(dir, "rails.log")},
      "ruby", "-e", script, "--", "server", "-p", port.to_s, "-b", "127.0.0.1", "-e", "test",
      "-P", File.join(dir, "server.pid"),
      chdir: PumaServer::DUMMY, out: log, err: [:child, :out], pgroup: true
    )
    [pid, log]
  end

  it "runs the nats-server in the master and stops it on SIGINT, #{rounds} times out of #{rounds}", timeout: 30 + rounds * 30 do
    rounds.times do |n|
      dir = Dir.mktmpdir("anycable-rs-rails-s")
      pid, log = rails_server(dir)
      wait_for(timeout: 60) { File.read(log).scan(/Worker \d \(PID: \d+\) booted/).size == 2 }
      child = wait_for { nats_children(pid).first }
      Process.kill("INT", pid)
      begin
        Timeout.timeout(15) { Process.wait(pid) }
      rescue Timeout::Error
        tree = `ps -e -o pid,ppid,stat,wchan:24,args 2>&1`.lines.grep(/ruby|puma|nats|PID/).join
        # What the processes left are doing (spec/dummy's SIGURG thread dump).
        `ps -o pid= --ppid #{pid}`.split.map(&:to_i).push(pid).each { |p| Process.kill("URG", p) rescue nil } # rubocop:disable Style/RescueModifier
        sleep 1
        raise "round #{n + 1}: rails server did not stop within 15 s of SIGINT:\n#{tree}\n#{File.read(log).lines.last(200).join}"
      end
      pid = nil
      wait_for { gone?(child) }
      expect(File.read(File.join(dir, "rails.log"))).to include("[nats-server]").and include("Server Exiting")
    ensure
      if pid
        Process.kill("KILL", -pid)
        Process.wait(pid)
      end
      FileUtils.rm_rf(dir) if dir
    end
  end
end

RSpec.describe "Embedded NATS without the nats-server binary", type: :cable do
  include EnatsHelpers

  it "stops the boot naming Debian's package and ANYCABLE_NATS_SERVER_BIN" do
    config = AnyCableRs::Config.new(embed_nats: true)
    expect { AnyCableRs::EmbeddedNats.binary(config, path: "/nonexistent") }
      .to raise_error(AnyCableRs::Error, /no nats-server on PATH.*apt-get install -y nats-server.*ANYCABLE_NATS_SERVER_BIN/)
    expect(AnyCableRs::EmbeddedNats.binary(config)).to end_with("/nats-server")

    server = PumaServer.new(env: {"ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_NATS_SERVER_BIN" => "/nonexistent/nats-server",
      "ANYCABLE_ENATS_ADDR" => "nats://127.0.0.1:#{PumaServer.free_port}"})
    expect { server.start }.to raise_error(/ANYCABLE_NATS_SERVER_BIN=\/nonexistent\/nats-server is not an executable file\. Install Debian's package "nats-server"/)
  ensure
    server&.stop
    server&.cleanup
  end
end

RSpec.describe AnyCableRs::Config, "with embed_nats" do
  fly = {"FLY_APP_NAME" => "my-app", "FLY_REGION" => "ams", "FLY_ALLOC_ID" => "a1b2"}

  def config_from(env, cable: nil)
    Dir.mktmpdir do |dir|
      cable_path = File.join(dir, "cable.yml")
      File.write(cable_path, cable) if cable
      described_class.load(env: env, yaml_path: nil, rails_env: "production", cable_yaml_path: cable_path)
    end
  end

  # What Config points NATS clients at: the embedded server (no credentials in the URL:
  # clients log in with its nkey).
  def enats_url(port)
    "nats://127.0.0.1:#{port}"
  end

  it "broadcasts over NATS through the embedded server unless told otherwise" do
    c = config_from({"ANYCABLE_EMBED_NATS" => "true"}, cable: "production:\n  adapter: async\n")
    expect([c.embed_nats, c.broadcast_adapter, c.nats_servers]).to eq([true, "nats", enats_url(4222)])
    c = config_from({"ANYCABLE_EMBED_NATS" => "1", "ANYCABLE_ENATS_ADDR" => "nats://0.0.0.0:4333"},
      cable: "production:\n  adapter: postgresql\n")
    expect([c.broadcast_adapter, c.nats_servers]).to eq(["nats", enats_url(4333)])
    c = config_from({"ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_BROADCAST_ADAPTER" => "redis",
      "ANYCABLE_NATS_SERVERS" => "nats://elsewhere:4222"})
    expect([c.broadcast_adapter, c.nats_servers]).to eq(["redis", "nats://elsewhere:4222"])
    expect(config_from({"ANYCABLE_EMBED_NATS" => "false"}).broadcast_adapter).to eq("local")
    # With the secret: the nkey it derives; without, this machine's random one.
    c = config_from({"ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_SECRET" => "s"})
    expect([c.nats_servers, c.nats_nkey_seed]).to eq(["nats://127.0.0.1:4222", AnyCableRs::EmbeddedNats.nkey("s", "nats://0.0.0.0:4222").first])
    local = config_from({"ANYCABLE_EMBED_NATS" => "true"})
    expect(local.nats_nkey_seed).to eq(AnyCableRs::EmbeddedNats.nkey(nil, "nats://127.0.0.1:4222").first)
    expect(local.nats_nkey_seed).not_to eq(c.nats_nkey_seed)
    expect(File.stat(File.join(AnyCableRs::PrivateDir.base, "enats-4222.nkey")).mode & 0o777).to eq(0o600)
  end

  it "on Fly.io, clusters with the app's machines in the region" do
    c = config_from(fly.merge("ANYCABLE_EMBED_NATS" => "true"))
    expect([c.enats_addr, c.enats_cluster, c.enats_cluster_routes, c.nats_servers]).to eq(
      ["nats://0.0.0.0:4222", "nats://0.0.0.0:5222", "nats://ams.my-app.internal:5222", enats_url(4222)]
    )
    # On a machine with its private address (Fly sets FLY_PRIVATE_IP), NATS listens there
    # only: the organisation's private network reaches it, nothing else on the machine's
    # other interfaces; clients on the machine use that address.
    ip = "fdaa:0:1:a7b:1::2"
    c = config_from(fly.merge("ANYCABLE_EMBED_NATS" => "true", "FLY_PRIVATE_IP" => ip))
    addr = "nats://[#{ip}]:4222"
    expect([c.enats_addr, c.enats_cluster, c.nats_servers]).to eq(
      [addr, "nats://[#{ip}]:5222", AnyCableRs::EmbeddedNats.client_url(addr)]
    )
    expect(URI(c.nats_servers).hostname).to eq(ip)
    c = config_from(fly.merge("ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_FLY_WS_APP_NAME" => "my-cable",
      "ANYCABLE_ENATS_CLUSTER" => "nats://0.0.0.0:6222"))
    expect([c.enats_cluster_routes, c.nats_servers]).to eq(["nats://ams.my-app.internal:6222", enats_url(4222)])
    c = config_from(fly.merge("ANYCABLE_EMBED_NATS" => "true", "ANYCABLE_ENATS_CLUSTER_ROUTES" => "nats://my-app.internal:5222"))
    expect(c.enats_cluster_routes).to eq("nats://my-app.internal:5222")
    expect(config_from(fly.merge("ANYCABLE_PRESETS" => "none")).enats_cluster_routes).to be_nil
  end

  it "builds nats-server's command line and config file from the settings; a cluster needs the secret" do
    config = described_class.new(embed_nats: true, enats_addr: "nats://0.0.0.0:4222", secret: "s",
      enats_cluster: "nats://0.0.0.0:5222", enats_cluster_routes: "nats://a:5222, nats://b:5222")
    enats = AnyCableRs::EmbeddedNats.new(config, logger: Logger.new(nil))
    conf = File.join(AnyCableRs::PrivateDir.base, "enats-4222.conf")
    expect(enats.command).to eq([AnyCableRs::EmbeddedNats.binary(config), "-c", conf, "-a", "0.0.0.0", "-p", "4222",
      "--logtime=false"])
    password = AnyCableRs::EmbeddedNats.route_password("s")
    expect(password).to eq(OpenSSL::HMAC.hexdigest("SHA256", "s", "anycable-rs embedded NATS"))
    text = enats.config_text
    expect(text).to include(%(listen: "0.0.0.0:5222"), %(name: "anycable-cluster"), "no_advertise: true")
    expect(text).to include(%(routes: ["nats-route://anycable:#{password}@a:5222", "nats-route://anycable:#{password}@b:5222"]))
    expect(text.scan(%(password: "#{password}")).size).to eq(1) # routes; clients log in with the nkey
    seed, public_key = AnyCableRs::EmbeddedNats.nkey("s", "nats://0.0.0.0:4222")
    expect(text).to include(%(users = [ { nkey: "#{public_key}" } ]))
    expect(text).not_to include(seed)
    expect(AnyCableRs::Native.nkey_public(seed)).to eq(public_key)
    expect(config.nats_servers).to eq("nats://localhost:4222") # Config.load sets it
    config = described_class.new(embed_nats: true, enats_cluster_routes: "nats://a:5222")
    expect { AnyCableRs::EmbeddedNats.new(config, logger: Logger.new(nil)) }
      .to raise_error(ArgumentError, /ANYCABLE_ENATS_CLUSTER_ROUTES is set but ANYCABLE_ENATS_CLUSTER is not/)
    config = described_class.new(embed_nats: true, enats_cluster: "nats://0.0.0.0:5222")
    expect { AnyCableRs::EmbeddedNats.new(config, logger: Logger.new(nil)) }
      .to raise_error(ArgumentError, /embedded NATS cluster \(ANYCABLE_ENATS_CLUSTER\) needs ANYCABLE_SECRET/)
  end

  it "runs JetStream, its files in ENATS_STORE_DIR, with ANYCABLE_BROKER=nats" do
    Dir.mktmpdir do |dir|
      store = File.join(dir, "js")
      config = described_class.new(embed_nats: true, broker: "nats", broadcast_adapter: "nats", enats_store_dir: store)
      cmd = AnyCableRs::EmbeddedNats.new(config, logger: Logger.new(nil)).command
      expect(cmd[8..]).to eq(["-js", "-sd", store, "--server_name", "#{Socket.gethostname}-4222"])
      expect(File.directory?(store)).to be(true)
      default = AnyCableRs::EmbeddedNats.new(described_class.new(embed_nats: true, broker: "nats",
        broadcast_adapter: "nats"), logger: Logger.new(nil)).command
      expect(default[10]).to eq(File.join(AnyCableRs::PrivateDir.base, "jetstream-4222"))
    end
  end
end
