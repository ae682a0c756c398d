#!/usr/bin/env ruby
# frozen_string_literal: true

# What an idle client costs the server, by transport, in one run (issue #23): 2 000
# clients of one kind, signed in and following the "all" stream, held 30 s with
# nothing broadcast — anycable-rs's WebSocket, Server-Sent Events, long-polling and
# Durable Streams (SSE and long-poll reads) clients beside Rails' own Action Cable's
# WebSocket. Reported: how fast they connect, the server's RSS per client, and its
# CPU over the hold (where the polling transports pay for their requests). Writes
# bench/results/<date>-idle.md.
#
#   ruby bench/idle.rb             # about 8 minutes
#   QUICK=1 ruby bench/idle.rb     # 200 clients, a 10 s hold: a smoke run
#   ONLY="DS (SSE)" ruby bench/idle.rb   # the columns whose name has this (no report)
require "time"
require "net/http"
require_relative "harness"

QUICK = ENV["QUICK"] == "1"
CLIENTS = QUICK ? 200 : 2000
HOLD = QUICK ? 10 : 30

# Every anycable-rs row runs the same server: all transports on, the memory broker
# (which DS reads need), the streams secret (the DS readers' signed name).
RS_ENV = {"ANYCABLE_EMBEDDED" => "true", "ANYCABLE_SSE" => "true", "ANYCABLE_POLL" => "true",
          "ANYCABLE_DS" => "true", "ANYCABLE_BROKER" => "memory",
          "ANYCABLE_STREAMS_SECRET" => "bench-streams-secret"}.freeze

# Column => [server env, the load tool's transport options (PORT and SIGNED filled in)]
COLUMNS = {
  "anycable-rs, WebSocket" => [RS_ENV, []],
  "anycable-rs, SSE" => [RS_ENV, %w[--sse http://127.0.0.1:PORT/events]],
  "anycable-rs, long polling" => [RS_ENV, %w[--lp http://127.0.0.1:PORT/lp]],
  "anycable-rs, DS (SSE)" => [RS_ENV, %w[--ds http://127.0.0.1:PORT/ds/all?signed=SIGNED --ds-live sse]],
  "anycable-rs, DS (long-poll)" => [RS_ENV, %w[--ds http://127.0.0.1:PORT/ds/all?signed=SIGNED --ds-live long-poll]],
  "anycable-rs, DS (long-poll), DS_SKIP_AUTH" => [RS_ENV.merge("ANYCABLE_DS_SKIP_AUTH" => "true"),
    %w[--ds http://127.0.0.1:PORT/ds/all?signed=SIGNED --ds-live long-poll]],
  "Action Cable, WebSocket" => [{"ANYCABLE_EMBEDDED" => nil}, []]
}.freeze

def run(name)
  env, transport = COLUMNS.fetch(name)
  pid, port = Harness.start_puma(env)
  cookie = Harness.login_cookie(port)
  signed = env["ANYCABLE_STREAMS_SECRET"] ? Net::HTTP.get(URI("http://127.0.0.1:#{port}/signed")) : ""
  opts = transport.map { |a| a.sub("PORT", port.to_s).sub("SIGNED", signed) }
  auth = ["--cookie", cookie]
  Harness.bench("connect", %w[--clients 20 --hold 0] + auth + opts, [Harness.url(port)]) # warm-up
  args = ["--clients", CLIENTS.to_s, "--concurrency", "100", "--hold", HOLD.to_s] + auth + opts
  cmd, summary = Harness.bench("connect", args, [Harness.url(port)], pid: pid)
  cmd = cmd.sub(cookie, "COOKIE").gsub(%r{http://127\.0\.0\.1:\d+}, "http://127.0.0.1:PORT")
  cmd = cmd.sub(signed, "SIGNED") unless signed.empty?
  warn "#{name}: #{summary.to_json}"
  [cmd, summary]
ensure
  Harness.stop(pid) if pid
end

Harness.build!
results = {}
commands = {}
if ENV["ONLY"]
  COLUMNS.each_key.grep(/#{Regexp.escape(ENV["ONLY"])}/) { |name| run(name) }
  exit
end
COLUMNS.each_key { |name| commands[name], results[name] = run(name) }

def f(v, digits = 1)
  v.nil? ? "–" : v.round(digits).to_s
end

def cpu_per_1000(r)
  r["hold_cpu_seconds"] && r["clients"].to_i.positive? ? r["hold_cpu_seconds"] / HOLD * 100 * 1000 / r["clients"] : nil
end

rows = [
  ["clients open (failed to open)", ->(r) { "#{r["clients"]} (#{r["failures"]})" }],
  ["connected per second", ->(r) { f(r["connects_per_sec"], 0) }],
  ["server RSS per client (KiB)", ->(r) { f(r["rss_per_conn_kib"]) }],
  ["server CPU while idle, per 1 000 clients (% of a core)", ->(r) { f(cpu_per_1000(r), 2) }],
  ["requests answered during the #{HOLD} s hold (errors)", ->(r) { "#{r["hold_requests"]} (#{r["hold_errors"]})" }]
]
table = rows.map do |label, cell|
  "| #{label} | #{COLUMNS.keys.map { |c| results[c]["error"] ? "–" : cell.call(results[c]) }.join(" | ")} |"
end

date = Time.now.utc
path = File.join(Harness::ROOT, "bench/results/#{date.strftime("%Y-%m-%d")}-idle#{QUICK ? "-quick" : ""}.md")
File.write(path, <<~MD)
  # What an idle client costs, by transport (#{date.iso8601})

  Command: `#{QUICK ? "QUICK=1 " : ""}ruby bench/idle.rb`. Machine: #{Harness.machine}.

  One run, a fresh server per column: #{CLIENTS} clients, #{HOLD} s held with nothing
  broadcast. anycable-rs is embedded in Puma (bench/app) with every transport on, the
  memory broker and a streams secret; all its clients use Puma's port. Every client
  signs in with bench/app's cookie (its `connect` runs in Ruby and reads the
  database): a WebSocket or SSE client once; a long-polling session once, at its
  first request; a Durable Streams reader at every request (AnyCable's DS identifies
  each read, as here), unless `ANYCABLE_DS_SKIP_AUTH` (the signed name alone
  authorizes it). Long-polling clients poll again 500 ms after each answer (the JS
  transport's cooldown); the server holds a quiet poll 15 s (`ANYCABLE_POLL_INTERVAL`).
  DS readers make a catch-up read from `now`, then follow the stream: an SSE read held
  until its TTL (60 s), or long-polls the server holds 10 s
  (`ANYCABLE_DS_POLL_INTERVAL`).

  | | #{COLUMNS.keys.join(" | ")} |
  |---|#{"---|" * COLUMNS.size}
  #{table.join("\n")}

  Commands (the load tool: `bench/src/main.rs`, `sse.rs`, `polling.rs`):

  #{commands.map { |k, v| "- #{k}: `#{v}`" }.join("\n")}
MD
puts File.read(path)
