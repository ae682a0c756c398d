#!/usr/bin/env ruby
# frozen_string_literal: true

# Server-Sent Events beside WebSockets, in one run (issue #23): broadcast fan-out to 1k
# and 5k subscribers — anycable-rs's SSE streams (GET /events, Puma's port) beside its
# WebSockets, Rails' own Action Cable and the raw ceiling (tokio-tungstenite, no Ruby)
# — and what an idle client costs the server (RSS per client, 5k of them), SSE beside
# WebSocket. Every Puma client signs in (bench/app's cookie auth: `connect` runs in
# Ruby for each, on either transport). Writes bench/results/<date>-sse.md.
#
#   ruby bench/sse.rb             # about 6 minutes
#   QUICK=1 ruby bench/sse.rb     # small sizes, a smoke run
require "time"
require_relative "harness"

QUICK = ENV["QUICK"] == "1"
SIZE = ->(n) { QUICK ? n / 10 : n }
FANOUT = [[1000, %w[--messages 50 --interval-ms 100 --payload 200]],
  [5000, %w[--messages 20 --interval-ms 250 --payload 200]]].freeze
IDLE = 5000

RS_SSE = "anycable-rs, SSE"
RS_WS = "anycable-rs, WebSocket"
AC = "Action Cable, WebSocket"
RAW = "raw ceiling, WebSocket"
COLUMNS = [RS_SSE, RS_WS, AC, RAW].freeze

# [pid, port, cookie args]
def start(server)
  case server
  when RAW
    pid, port = Harness.spawn_server(File.join(Harness::BIN, "anycable-raw-ceiling"), "127.0.0.1:PORT")
    [pid, port, []]
  when AC
    pid, port = Harness.start_puma("ANYCABLE_EMBEDDED" => nil)
    [pid, port, ["--cookie", Harness.login_cookie(port)]]
  else
    pid, port = Harness.start_puma("ANYCABLE_EMBEDDED" => "true", "ANYCABLE_SSE" => "true")
    [pid, port, ["--cookie", Harness.login_cookie(port)]]
  end
end

def run(server, mode, args)
  pid, port, auth = start(server)
  sse = server == RS_SSE ? ["--sse", "http://127.0.0.1:#{port}/events"] : []
  Harness.bench("connect", %w[--clients 20 --hold 0] + auth + sse, [Harness.url(port)]) # warm-up
  cmd, summary = Harness.bench(mode, args + auth + sse, [Harness.url(port)], pid: pid)
  cmd = cmd.sub(auth.last, "COOKIE") unless auth.empty?
  cmd = cmd.gsub(%r{http://127\.0\.0\.1:\d+}, "http://127.0.0.1:PORT")
  warn "#{mode} #{args.first(2).join(" ")} / #{server}: #{summary.to_json}"
  [cmd, summary]
ensure
  Harness.stop(pid) if pid
end

Harness.build!
results = Hash.new { |h, k| h[k] = {} }
commands = {}
FANOUT.each do |n, args|
  name = "broadcast #{SIZE.call(n)}"
  COLUMNS.each do |server|
    cmd, summary = run(server, "broadcast", ["--clients", SIZE.call(n).to_s] + args)
    results[name][server] = summary
    commands["#{name} (#{server})"] = cmd if [RS_SSE, RS_WS].include?(server)
  end
end
idle = "idle #{SIZE.call(IDLE)}"
[RS_SSE, RS_WS, AC].each do |server|
  cmd, summary = run(server, "connect", ["--clients", SIZE.call(IDLE).to_s, "--concurrency", "100", "--hold", "5"])
  results[idle][server] = summary
  commands["#{idle} (#{server})"] = cmd if [RS_SSE, RS_WS].include?(server)
end

def f(v, digits = 1)
  v.nil? ? "–" : v.round(digits).to_s
end

rows = []
FANOUT.each do |n, _|
  name = "broadcast #{SIZE.call(n)}"
  %w[p50 p95 p99].each do |q|
    rows << ["#{name}: until the last subscriber, #{q} (ms)", *COLUMNS.map { |s| f(results[name][s]&.dig("until_last_ms", q), 2) }]
  end
  rows << ["#{name}: per subscriber p50 (ms)", *COLUMNS.map { |s| f(results[name][s]&.dig("per_client_ms", "p50"), 2) }]
  rows << ["#{name}: missing messages (subscribers that failed)",
    *COLUMNS.map { |s| r = results[name][s]; r ? "#{r["missing"]} (#{r["failures"]})" : "–" }]
end
rows << ["#{idle}: connected per second", *COLUMNS.map { |s| f(results[idle][s]&.dig("connects_per_sec"), 0) }]
rows << ["#{idle}: server RSS per client (KiB)", *COLUMNS.map { |s| f(results[idle][s]&.dig("rss_per_conn_kib")) }]

date = Time.now.utc
path = File.join(Harness::ROOT, "bench/results/#{date.strftime("%Y-%m-%d")}-sse#{QUICK ? "-quick" : ""}.md")
File.write(path, <<~MD)
  # Server-Sent Events beside WebSockets (#{date.iso8601})

  Command: `#{QUICK ? "QUICK=1 " : ""}ruby bench/sse.rb`. Machine: #{Harness.machine}.

  One run, a fresh server per row. anycable-rs is embedded in Puma (bench/app,
  `ANYCABLE_SSE=true`); its SSE subscribers are `GET /events?identifier=…` streams on
  Puma's port (the Rack middleware hands the socket over), its WebSocket subscribers
  `/cable` on the same port; every Puma client signs in (cookie, `connect` in Ruby).
  Broadcasts are made by one more WebSocket client's `broadcast` action. The raw
  ceiling is a tokio-tungstenite fan-out server with no Ruby and no protocol work.

  | | #{COLUMNS.join(" | ")} |
  |---|#{"---|" * COLUMNS.size}
  #{rows.map { |r| "| #{r.join(" | ")} |" }.join("\n")}

  Commands (the load tool, `bench/src/main.rs` and `bench/src/sse.rs`):

  #{commands.map { |k, v| "- #{k}: `#{v}`" }.join("\n")}
MD
puts File.read(path)
