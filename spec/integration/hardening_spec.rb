# frozen_string_literal: true

require "spec_helper"

# Faults under load, each one a case that went wrong before (issue "Hardening under
# load, faults and hostile input").
RSpec.describe "Hardening (real Puma)", type: :cable do
  with_puma(threads: 5)

  before { puma.http(:delete, "/events") }

  def elapsed
    t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    yield
    Process.clock_gettime(Process::CLOCK_MONOTONIC) - t
  end

  it "runs other connections' commands while one action sleeps (no job waits behind it)" do
    sleeper = connected(name: "sleeper")
    slow = subscribed(sleeper, channel: "SlowChannel")
    echoers = Array.new(12) { |i| connected(name: "echo#{i}") }
    ids = echoers.map { |c| subscribed(c, channel: "EchoChannel") }

    sleeper.perform(slow, "nap", "seconds" => 3, "tag" => "long")
    wait_for { events.include?(["nap.start", "long"]) }
    worst = 0.0
    3.times do |round|
      echoers.zip(ids).each do |c, id|
        took = elapsed do
          c.perform(id, "echo", "n" => round)
          expect(message_for(c, id)).to include("n" => round)
        end
        worst = [worst, took].max
      end
    end
    expect(events).not_to include(["nap.end", "long"])
    # Action Cable answers these in ~10 ms; behind the 3 s action they took ~2.9 s.
    expect(worst).to be < 1.0
    expect(sleeper.receive(timeout: 10)).to eq("identifier" => slow, "message" => {"napped" => "long"})
  end

  it "runs the disconnect callbacks only after the command in flight, when the server closes the socket" do
    c = connected(name: "dora")
    id = subscribed(c, channel: "SlowChannel")
    c.perform(id, "nap", "seconds" => 1, "tag" => "inflight")
    wait_for { events.include?(["nap.start", "inflight"]) }
    user_id = puma.http(:get, "/login?name=dora").body
    expect(puma.http(:post, "/remote_disconnect", user_id: user_id).code).to eq("201")
    wait_for(timeout: 10) { events.include?(["disconnect", "dora"]) }
    order = events.select { |e| [["nap.end", "inflight"], ["slow.unsubscribed", "dora"], ["disconnect", "dora"]].include?(e) }
    expect(order).to eq([["nap.end", "inflight"], ["slow.unsubscribed", "dora"], ["disconnect", "dora"]])
  end

  it "refuses a broken upgrade before keeping its Rack env, and drops envs of refused sockets" do
    big_cookie = "junk=#{"x" * 60_000}"
    20.times do
      sock = TCPSocket.new("127.0.0.1", puma.port)
      sock.write("GET /cable HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
        "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" \
        "Origin: http://allowed.test\r\nCookie: #{big_cookie}\r\n\r\n")
      expect(sock.gets).to start_with("HTTP/1.1 400")
      sock.close
    end
    expect(JSON.parse(puma.http(:get, "/stats").body)["stashed_envs"]).to eq(0)
  end

  it "refuses a broadcast too large for any client to receive, and keeps serving" do
    c = connected(name: "erin")
    id = subscribed(c, channel: "EchoChannel")
    res = puma.http(:post, "/broadcast", stream: "all", payload: JSON.generate("big" => "y" * 1_100_000))
    expect(res.code).to eq("500")
    expect(puma.rails_log).to match(/over the \d+-byte limit \(ANYCABLE_MAX_PENDING_BYTES/)
    broadcast("all", "small" => true)
    expect(message_for(c, id)).to eq("small" => true)
  end
end

# Its own server: another example's leftover callbacks queued behind busy threads would
# make the warning (at most one per 10 s) fire early with their numbers (seen in CI).
RSpec.describe "Hardening (real Puma): a pool full of slow actions", type: :cable do
  with_puma(threads: 5)

  before { puma.http(:delete, "/events") }

  it "shows a pool full of slow actions in AnyCableRs.stats, and warns when jobs wait over a second" do
    sleepers = Array.new(5) { |i| connected(name: "sleeper#{i}") }
    slow_ids = sleepers.map { |c| subscribed(c, channel: "SlowChannel") }
    echoer = connected(name: "echoer")
    echo = subscribed(echoer, channel: "EchoChannel")
    sleepers.zip(slow_ids).each_with_index { |(c, id), i| c.perform(id, "nap", "seconds" => 3, "tag" => "full#{i}") }
    wait_for(timeout: 15) { events.count { |e| e.first == "nap.start" } == 5 }
    echoer.perform(echo, "echo", "n" => 1)
    sleep 1.5
    stats = JSON.parse(puma.http(:get, "/stats").body)["server"]
    expect(stats).to include("busy_threads" => 5, "rpc_pool_size" => 5, "jobs_queued" => 1)
    expect(stats["oldest_job_wait"]).to be_between(1.0, 3.0)
    wait_for { puma.log.include?("Ruby jobs wait for a thread") }
    expect(puma.log).to match(/the oldest for \d+\.\d s, 1 queued, 0 more waiting for room, 5 threads busy/)
    expect(message_for(echoer, echo)).to include("n" => 1)
    wait_for(timeout: 10) { JSON.parse(puma.http(:get, "/stats").body)["server"]["busy_threads"].zero? }
  end
end

# A shutdown that cannot run every callback in time says how many never ran.
RSpec.describe "Shutdown with callbacks slower than ANYCABLE_SHUTDOWN_TIMEOUT", type: :cable do
  with_puma(threads: 1, env: {"ANYCABLE_SHUTDOWN_TIMEOUT" => "0.3"})

  it "logs how many connections' callbacks never ran, matching what ran" do
    puma.http(:delete, "/events")
    clients = Array.new(20) { |i| connected(name: "late#{i}") }
    clients.each { |c| subscribed(c, channel: "SlowChannel", linger: 0.2) }
    Process.kill("USR2", puma.pid) # a hot restart keeps the database and the log
    wait_for(timeout: 30) do
      puma.http(:get, "/events").code == "200"
    rescue SystemCallError, Net::ReadTimeout, EOFError
      false
    end
    ran = events.count { |name, _| name == "slow.unsubscribed" }
    line = puma.rails_log[/the unsubscribed\/disconnect callbacks of (\d+) connections never ran or did not finish/]
    expect(line).not_to be_nil, "#{ran} of 20 ran, and no line said so"
    expect(ran + Integer(Regexp.last_match(1))).to eq(20)
    expect(ran).to be < 20
  end
end

RSpec.describe "Puma hot restart (SIGUSR2) in single mode", type: :cable do
  with_puma(threads: 4)

  it "tells clients server_restart and runs every disconnect callback before re-executing" do
    puma.http(:delete, "/events")
    clients = Array.new(20) { |i| connected(name: "hot#{i}") }
    clients.each { |c| subscribed(c, channel: "EchoChannel") }
    Process.kill("USR2", puma.pid)
    clients.each do |c|
      expect(c.receive(timeout: 10)).to eq("type" => "disconnect", "reason" => "server_restart", "reconnect" => true)
    end
    # The same process serves again after the restart, with the same database.
    wait_for(timeout: 30) do
      puma.http(:get, "/events").code == "200"
    rescue SystemCallError, Net::ReadTimeout, EOFError
      false
    end
    expect(events.count { |name, _| name == "disconnect" }).to eq(20)
    expect(connected(name: "after")).to be_a(WsClient)
  end
end

# Issue #24 (17, Limits): broadcasts for the app's stream_from blocks and coders went
# on the Ruby queue without bound (one job per block a broadcast reaches). Past
# ANYCABLE_MAX_CALLBACK_JOBS they are dropped, counted and told; the process stays up
# and delivers again once the queue drains.
RSpec.describe "A bound on broadcasts queued for stream_from blocks (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_RPC_POOL_SIZE" => "1", "ANYCABLE_MAX_CALLBACK_JOBS" => "5",
                  "ANYCABLE_METRICS_HTTP" => "/metrics"})

  it "queues at most MAX_CALLBACK_JOBS, drops and counts the rest, and delivers again after" do
    puma.http(:delete, "/events")
    sleeper = connected(name: "sleeper")
    slow = subscribed(sleeper, channel: "SlowChannel")
    c = connected
    id = subscribed(c, channel: "TransformChannel")
    # The one Ruby thread naps: callback jobs queue behind it.
    sleeper.perform(slow, "nap", "seconds" => 2, "tag" => "hold")
    wait_for { events.include?(["nap.start", "hold"]) }
    20.times { |i| broadcast("shout", "n#{i}") }
    expect(sleeper.receive(timeout: 10)).to eq("identifier" => slow, "message" => {"napped" => "hold"})
    got = []
    while (m = (c.receive(timeout: 1) rescue nil)) # rubocop:disable Style/RescueModifier
      got << m.dig("message", "shouted")
    end
    expect(got).to eq((0..4).map { |i| "\"N#{i}\"" })
    expect(puma.log).to match(/stream_from block or coder dropped: ANYCABLE_MAX_CALLBACK_JOBS \(5\)/)
    expect(puma.http(:get, "/metrics").body).to match(/^anycable_rs_callback_jobs_dropped_total 15$/)
    broadcast("shout", "after")
    expect(message_for(c, id)).to eq("shouted" => "\"AFTER\"")
  end
end

# Issue #21: Puma's hot restart hung for good in ~1 of 10 runs on Ruby 3.3/Puma 6.6
# with sockets open and slow unsubscribe callbacks (Puma's server thread stuck closing
# its wake-up pipe). Restarted RESTARTS times in a row, each must come back.
RSpec.describe "Puma hot restarts in a row (SIGUSR2, single mode, slow callbacks)", type: :cable do
  restarts = Integer(ENV.fetch("HOT_RESTARTS", "30"))
  with_puma(threads: 1, env: {"ANYCABLE_SHUTDOWN_TIMEOUT" => "0.3"})

  def serving?
    puma.http(:get, "/events").code == "200"
  rescue SystemCallError, Net::ReadTimeout, EOFError
    false
  end

  it "comes back #{restarts} times out of #{restarts}", timeout: 60 + restarts * 25 do
    restarts.times do |n|
      clients = Array.new(20) { |i| connected(name: "r#{n}x#{i}") }
      clients.each { |c| subscribed(c, channel: "SlowChannel", linger: 0.2) }
      before = puma.log.scan("Restarting...").size
      Process.kill("USR2", puma.pid)
      back = begin
        wait_for(timeout: 20) { puma.log.scan("Restarting...").size > before && serving? }
      rescue RuntimeError
        false
      end
      expect(back).to be(true), "restart #{n + 1} of #{restarts} did not come back within 20 s:\n#{puma.log.lines.last(15).join}"
      clients.each(&:close)
    end
  end
end
