#!/usr/bin/env ruby
# frozen_string_literal: true

# Runs the same scenarios, in one run, against:
#   - anycable-rs embedded in Puma (ANYCABLE_EMBEDDED=true),
#   - Rails' own Action Cable on Puma (async adapter),
#   - the raw ceiling: a tokio-tungstenite fan-out server, no anycable-core, no Ruby,
#   - anycable-core's server with BenchmarkChannel written in Rust (Ruby's cost removed),
#   - anycable-rs embedded, the clients on its own port (ANYCABLE_PORT),
# plus the floor under a connect on Puma's port (a plain GET through the same Puma and
# middleware), and writes a Markdown report to bench/results/.
#
#   ruby bench/compare.rb            # full sizes (about 20 minutes)
#   QUICK=1 ruby bench/compare.rb    # small sizes, for a smoke run
#   ONLY="connect,echo" SERVERS=rs,ac ruby bench/compare.rb
#                                    # some scenarios (by mode or name) and servers
#                                    # (rs, ac, raw, core, own, mem)
#
# The Puma rows authenticate every client as bench/app's connection class requires:
# the Cookie header of a signed-in user (an encrypted user_id cookie, looked up
# through Active Record on connect). The ceilings take no cookie.
require "time"
require "etc"
require_relative "harness"

QUICK = ENV["QUICK"] == "1"
RS, AC, CEIL = "anycable-rs", "Action Cable", "core, no Ruby"
RAW = "raw ceiling"
OWN = "anycable-rs, own port"
# anycable-rs with ANYCABLE_BROKER=memory (reliable streams: every broadcast numbered
# and kept for history): the broadcast scenarios only.
MEM = "anycable-rs, memory broker"
# anycable-rs with ANYCABLE_BROKER=nats: each broadcast stored in a local nats-server
# with JetStream (-js), delivered from it with its offset; broadcast scenarios only.
NATS = "anycable-rs, NATS broker"
ALL_SERVERS = [RS, AC, RAW, CEIL, OWN, MEM, NATS].freeze
SHORT = {"rs" => RS, "ac" => AC, "raw" => RAW, "core" => CEIL, "own" => OWN, "mem" => MEM, "nats" => NATS}.freeze
PICKED = ENV["SERVERS"]&.split(",")&.map { |s| SHORT.fetch(s.strip) }
RUN_SERVERS = PICKED ? ALL_SERVERS & PICKED : ALL_SERVERS
# The report keeps every column; servers not run show "–".
SERVERS = ALL_SERVERS
PUMA_SERVERS = [RS, AC].freeze
AUTHENTICATED = [RS, AC, OWN, MEM, NATS].freeze
ONLY = ENV["ONLY"]&.split(",")&.map(&:strip)
# PROTOCOL=ext: every client offers AnyCable's extended protocol (actioncable-v1-ext-json),
# and the broker columns run the connect scenarios too (memory per idle connection with
# session caching on).
EXT = ENV["PROTOCOL"] == "ext"

SCENARIOS = [
  ["connect", "connect 1k", %w[--clients 1000 --concurrency 100 --hold 3]],
  ["connect", "connect 5k", %w[--clients 5000 --concurrency 100 --hold 5]],
  ["connect", "connect 10k", %w[--clients 10000 --concurrency 100 --hold 5]],
  ["echo", "echo 50 clients", %w[--clients 50 --duration 10 --payload 200]],
  ["broadcast", "broadcast 1k", %w[--clients 1000 --messages 50 --interval-ms 100 --payload 200]],
  ["broadcast", "broadcast 5k", %w[--clients 5000 --messages 20 --interval-ms 250 --payload 200]],
  ["broadcast", "broadcast 10k", %w[--clients 10000 --messages 10 --interval-ms 500 --payload 200]],
  ["churn", "churn 5k", %w[--cycles 5000 --concurrency 100 --hold 2]]
].map do |mode, name, args|
  args = args.map { |a| {"1000" => "100", "5000" => "300", "10000" => "500", "10" => "3"}.fetch(a, a) } if QUICK
  args = args.map { |a| a == "500" && name == "broadcast 10k" ? "100" : a } if QUICK
  [mode, name, args]
end.select { |mode, name, _| ONLY.nil? || ONLY.include?(mode) || ONLY.include?(name) }

# What to stop with a server (its nats-server), by the server's pid.
AFTER_STOP = {}

# [server pid, port the clients use, Puma's port (where a client signs in)]
def start(server)
  case server
  when CEIL then Harness.spawn_server(File.join(Harness::BIN, "anycable-ceiling"), "127.0.0.1:PORT")
  when RAW then Harness.spawn_server(File.join(Harness::BIN, "anycable-raw-ceiling"), "127.0.0.1:PORT")
  when RS then Harness.start_puma("ANYCABLE_EMBEDDED" => "true").then { |pid, port| [pid, port, port] }
  when MEM
    Harness.start_puma("ANYCABLE_EMBEDDED" => "true", "ANYCABLE_BROKER" => "memory").then { |pid, port| [pid, port, port] }
  when NATS
    store = Dir.mktmpdir("anycable-bench-jetstream")
    nats_pid, nats_port = Harness.spawn_server("nats-server", "-a", "127.0.0.1", "-p", "PORT", "-js", "-sd", store)
    pid, port = Harness.start_puma("ANYCABLE_EMBEDDED" => "true", "ANYCABLE_BROKER" => "nats",
      "ANYCABLE_BROADCAST_ADAPTER" => "nats", "ANYCABLE_NATS_SERVERS" => "nats://127.0.0.1:#{nats_port}")
    AFTER_STOP[pid] = lambda do
      Harness.stop(nats_pid)
      FileUtils.rm_rf(store)
    end
    [pid, port, port]
  when OWN
    own = Harness.free_port
    pid, port = Harness.start_puma("ANYCABLE_EMBEDDED" => "true", "ANYCABLE_PORT" => own.to_s)
    Harness.wait_for_port(own)
    [pid, own, port]
  else Harness.start_puma("ANYCABLE_EMBEDDED" => nil).then { |pid, port| [pid, port, port] }
  end
end

Harness.build!

results = Hash.new { |h, k| h[k] = {} }
commands = {}
SCENARIOS.each do |mode, name, args|
  RUN_SERVERS.each do |server|
    next if [MEM, NATS].include?(server) && mode != "broadcast" && !(EXT && mode == "connect")

    pid, port, puma_port = start(server)
    auth = AUTHENTICATED.include?(server) ? ["--cookie", Harness.login_cookie(puma_port)] : []
    Harness.bench("connect", %w[--clients 20 --hold 0] + auth, [Harness.url(port)]) # warm-up: runtime, classes
    cpu_before = Harness.thread_cpu(pid)
    proto = EXT ? ["--protocol", "actioncable-v1-ext-json"] : []
    cmd, summary = Harness.bench(mode, args + proto + auth, [Harness.url(port)], pid: pid)
    cmd = cmd.sub(auth.last, "COOKIE") unless auth.empty?
    if mode == "echo" && summary["round_trips"].to_i.positive?
      # Server CPU per round trip, by thread: steadier than throughput on a shared box.
      used = Harness.thread_cpu(pid).to_h { |name, secs| [name, secs - cpu_before[name]] }
      summary["cpu_us_per_round_trip"] = used.select { |_, secs| secs >= 0.01 }
        .transform_values { |secs| (secs / summary["round_trips"] * 1e6).round(1) }
      summary["cpu_us_per_round_trip"]["total"] = (used.values.sum / summary["round_trips"] * 1e6).round(1)
    end
    Harness.stop(pid)
    AFTER_STOP.delete(pid)&.call
    results[name][server] = summary
    commands[name] ||= cmd
    warn "#{name} / #{server}: #{summary.to_json}"
  end
end

# The floor under a connect on Puma's port: plain GETs, each on a new connection,
# through the same Puma and Rails middleware (bench/app's /up route).
HTTP_ARGS = %w[--clients 5000 --concurrency 100].map { |a| QUICK && a == "5000" ? "300" : a }
(ONLY.nil? || ONLY.include?("http") ? PUMA_SERVERS & RUN_SERVERS : []).each do |server|
  pid, port, = start(server)
  Harness.bench("http", %w[--clients 50], ["http://127.0.0.1:#{port}/up"]) # warm-up
  cmd, summary = Harness.bench("http", HTTP_ARGS, ["http://127.0.0.1:#{port}/up"])
  Harness.stop(pid)
  results["http floor"][server] = summary
  commands["http floor"] ||= cmd.gsub(%r{http://127\.0\.0\.1:\d+}, "http://127.0.0.1:PORT")
  warn "http floor / #{server}: #{summary.to_json}"
end

def f(v, digits = 1)
  v.is_a?(Numeric) ? format("%.#{digits}f", v) : "–"
end

# How many times better `a` is than `b`; `lower` when smaller numbers are better.
def ratio(a, b, lower: false)
  return "–" unless a.is_a?(Numeric) && b.is_a?(Numeric) && a.positive? && b.positive?

  format("%.1f×", lower ? b.to_f / a : a.to_f / b)
end

rows = []
add = lambda do |label, digits, lower, &get|
  vals = SERVERS.map { |s| get.call(s) }
  rows << [label, *vals.map { |v| f(v, digits) }, ratio(vals[0], vals[1], lower: lower),
    ratio(vals[0], vals[2], lower: lower), ratio(vals[4], vals[1], lower: lower), ratio(vals[5], vals[0], lower: lower),
    ratio(vals[6], vals[0], lower: lower)]
end
%w[1k 5k 10k].each do |size|
  r = results["connect #{size}"]
  add.call("RSS per idle subscribed connection, #{size} (KiB)", 1, true) { |s| r.dig(s, "rss_per_conn_kib") }
end
%w[1k 5k 10k].each do |size|
  r = results["connect #{size}"]
  add.call("connect + subscribe per second, #{size}", 0, false) { |s| r.dig(s, "connects_per_sec") }
end
h = results["http floor"]
add.call("floor: plain GET on a new connection through Puma + middleware, per second", 0, false) do |s|
  h.dig(s, "requests_per_sec")
end
e = results["echo 50 clients"]
add.call("echo round trips per second, 50 clients", 0, false) { |s| e.dig(s, "per_sec") }
add.call("echo latency p95 (ms)", 2, true) { |s| e.dig(s, "latency_ms", "p95") }
add.call("echo: server CPU per round trip, all threads (µs)", 0, true) { |s| e.dig(s, "cpu_us_per_round_trip", "total") }
%w[1k 5k 10k].each do |size|
  b = results["broadcast #{size}"]
  %w[p50 p95 p99].each do |q|
    add.call("broadcast #{size}: until the last subscriber, #{q} (ms)", 2, true) { |s| b.dig(s, "until_last_ms", q) }
  end
  rows << ["broadcast #{size}: missing messages",
    *SERVERS.map { |s| b.dig(s, "error") ? "run failed: #{b.dig(s, "error")}" : b.dig(s, "missing").to_s }, "", "", "", "", ""]
end
c = results["churn 5k"]
add.call("churn: connect/subscribe/disconnect cycles per second", 0, false) { |s| c.dig(s, "cycles_per_sec") }
add.call("churn: server RSS growth over 5k cycles (KiB)", 0, true) do |s|
  c.dig(s, "rss_after_kib") && c.dig(s, "rss_before_kib") && (c.dig(s, "rss_after_kib") - c.dig(s, "rss_before_kib"))
end

rails = `ruby -e 'require "rails"; print Rails.version'`
date = Time.now.utc
report = +<<~MD
  # anycable-rs embedded vs Rails' Action Cable vs the no-Ruby ceilings — #{date.strftime("%Y-%m-%d")}

  Machine: #{Harness.machine}; Rails #{rails}. The load tool runs on the same machine
  (loopback), so every figure includes its share of the two cores.

  - **anycable-rs**: `bench/app/config.ru` in Puma `-t 5:5 -e production`, bound with
    `?low_latency=true`, `ANYCABLE_EMBEDDED=true`: sockets taken over from Puma's port
    by Rack hijack, TCP_NODELAY set on each; 5 Ruby threads run `BenchmarkChannel`.
    bench/app's connection class is a generated app's with the Rails guides' auth
    (`identified_by :current_user`, the user found through Active Record/SQLite from
    `cookies.encrypted[:user_id]`); every client on a Puma app sends a signed-in user's
    cookies (`--cookie`).
  - **Action Cable**: the same app and Puma flags, plain Action Cable, async adapter,
    worker pool 5 (`?low_latency=true` gives its hijacked sockets TCP_NODELAY).
  - **raw ceiling**: `target/release/anycable-raw-ceiling` (bench/src/bin/raw_ceiling.rs), a
    fan-out server on tokio-tungstenite alone, 2 tokio workers, TCP_NODELAY: no
    anycable-core, no Ruby; data is sent back as the client's JSON text, unparsed.
  - **core, no Ruby**: `target/release/anycable-ceiling`, anycable-core with
    `BenchmarkChannel` in Rust: the anycable-rs server with Ruby's cost taken out.
  - **anycable-rs, own port**: the anycable-rs Puma process with `ANYCABLE_PORT` set, the
    clients on that port: no Puma request handling, no Rails middleware before the socket.
  - **anycable-rs, memory broker**: anycable-rs with `ANYCABLE_BROKER=memory` (every
    broadcast numbered and kept for `history`); broadcast scenarios only.
  - **anycable-rs, NATS broker**: anycable-rs with `ANYCABLE_BROKER=nats` and a local
    `nats-server -js` (every broadcast stored in JetStream, acknowledged, then delivered
    from it with its offset); broadcast scenarios only.

  Each scenario starts a fresh server and warms it with 20 connections. Payload 200 bytes.
  Logging: Rails' production default level (`:info`), written to /dev/null, for both
  Puma apps. "floor" is not a WebSocket figure: it is the most connects per second any
  server behind Puma's port could reach here.

  Command: `#{EXT ? "PROTOCOL=ext " : ""}#{QUICK ? "QUICK=1 " : ""}ruby bench/compare.rb`#{QUICK ? " (QUICK sizes: the labels are the full sizes)" : ""}

  | | anycable-rs | Action Cable | raw ceiling | core, no Ruby | anycable-rs, own port | anycable-rs, memory broker | anycable-rs, NATS broker | anycable-rs vs Action Cable | anycable-rs vs raw ceiling | own port vs Action Cable | memory broker vs anycable-rs | NATS broker vs anycable-rs |
  |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
MD
rows.each { |r| report << "| #{r.join(" | ")} |\n" }
report << "\nRatios: how many times better the first is (above 1× it is better; for latency and memory, lower is better).\n"
report << "\nEcho, server CPU µs per round trip by thread (from /proc):\n\n"
SERVERS.each do |server|
  split = e.dig(server, "cpu_us_per_round_trip") or next
  report << "- #{server}: #{split.map { |name, us| "#{name} #{us}" }.join(", ")}\n"
end
report << "\n## Commands\n\n"
commands.each { |name, cmd| report << "- #{name}: `#{cmd}`\n" }
report << "\n## Raw summaries\n\n```json\n#{JSON.pretty_generate(results)}\n```\n"
dir = File.join(__dir__, "results")
FileUtils.mkdir_p(dir)
partial = ONLY || PICKED ? "-partial" : ""
base = File.join(dir, "#{date.strftime("%Y-%m-%d")}-comparison#{QUICK ? "-quick" : ""}#{partial}")
# A second run on the same day gets its own file: earlier reports stay as they were.
path = (1..).lazy.map { |n| n == 1 ? "#{base}.md" : "#{base}-#{n}.md" }.find { |p| !File.exist?(p) }
File.write(path, report)
puts report
puts "written to #{path}"
