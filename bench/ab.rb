#!/usr/bin/env ruby
# frozen_string_literal: true

# Before/after for a hot-path change: anycable-rs embedded in Puma from two checkouts,
# taking turns (so drift on this shared machine hits both), echo at 50 clients,
# connect + subscribe of 3k clients, and a broadcast to 1k subscribers each round.
# Prints every round and the medians, with the server's CPU time per echo (all its
# threads, from /proc), which varies far less than throughput does here.
#
#   git worktree add /tmp/before <commit> && (cd /tmp/before && rake compile)
#   cp bench/app/config.ru /tmp/before/bench/app/   # the same app on both sides
#   ruby bench/ab.rb /tmp/before .  [ROUNDS]
require_relative "harness"

before_dir, after_dir = ARGV.first(2).map { |d| File.expand_path(d) }
abort "usage: ruby bench/ab.rb BEFORE_CHECKOUT AFTER_CHECKOUT [ROUNDS]" unless before_dir && after_dir
rounds = Integer(ARGV[2] || 3)

def cpu_ticks(pid)
  Dir["/proc/#{pid}/task/*/stat"].sum do |stat|
    fields = File.read(stat).split(") ").last.split
    fields[11].to_i + fields[12].to_i
  end
end

def start(dir)
  port = Harness.free_port
  log = File.open("/tmp/anycable-ab-puma-#{port}.log", "w")
  pid = Process.spawn({"RAILS_MAX_THREADS" => "5", "ANYCABLE_EMBEDDED" => "true"},
    "puma", "-b", "tcp://127.0.0.1:#{port}?low_latency=true", "-t", "5:5", "-e", "production", "config.ru",
    chdir: File.join(dir, "bench/app"), out: log, err: log, pgroup: true)
  Harness.wait_for_port(port)
  # The bench app's connection signs clients in from their cookies, as a generated app's.
  auth = ["--cookie", Harness.login_cookie(port)]
  Harness.bench("connect", %w[--clients 20 --hold 0] + auth, [Harness.url(port)]) # warm-up
  [pid, port, auth]
end

Harness.build_tools!
results = Hash.new { |h, k| h[k] = [] }
rounds.times do |round|
  {"before" => before_dir, "after" => after_dir}.each do |label, dir|
    pid, port, auth = start(dir)
    ticks = cpu_ticks(pid)
    _, echo = Harness.bench("echo", %w[--clients 50 --duration 8 --payload 200] + auth, [Harness.url(port)])
    cpu_us = (cpu_ticks(pid) - ticks) / 100.0 / echo.fetch("round_trips") * 1e6
    Harness.stop(pid)
    pid, port, auth = start(dir)
    _, conn = Harness.bench("connect", %w[--clients 3000 --concurrency 100 --hold 0] + auth, [Harness.url(port)], pid: pid)
    Harness.stop(pid)
    pid, port, auth = start(dir)
    _, bcast = Harness.bench("broadcast", %w[--clients 1000 --messages 30 --interval-ms 100 --payload 200] + auth,
      [Harness.url(port)])
    Harness.stop(pid)
    results["#{label}: broadcast 1k p95 until the last (ms)"] << bcast.dig("until_last_ms", "p95").to_f.round(1)
    results["#{label}: broadcast 1k missing"] << bcast.fetch("missing")
    results["#{label}: echo round trips/s"] << echo.fetch("per_sec").round
    results["#{label}: server CPU µs per echo"] << cpu_us.round
    results["#{label}: connect + subscribe/s"] << conn.fetch("connects_per_sec").round
    puts "round #{round + 1} #{label}: echo #{echo["per_sec"].round}/s, #{cpu_us.round} µs CPU/echo, " \
         "connect #{conn["connects_per_sec"].round}/s, broadcast 1k p95 #{bcast.dig("until_last_ms", "p95").to_f.round(1)} ms"
  end
end
puts
results.sort.each { |k, v| puts "#{k}: #{v.join(", ")} (median #{v.sort[v.size / 2]})" }
