#!/usr/bin/env ruby
# frozen_string_literal: true

# Runs the same scenarios against anycable-rs embedded in Puma and Rails' own Action Cable
# on Puma, in one run, and writes a Markdown report to bench/results/.
#
#   ruby bench/compare.rb            # full sizes
#   QUICK=1 ruby bench/compare.rb    # small sizes, for a smoke run
require "json"
require "socket"
require "net/http"
require "fileutils"
require "time"
require "etc"

ROOT = File.expand_path("..", __dir__)
BENCH = File.join(ROOT, "target/release/anycable-bench")
QUICK = ENV["QUICK"] == "1"

SERVERS = {
  "anycable-rs" => {"ANYCABLE_EMBEDDED" => "true"},
  "Action Cable" => {"ANYCABLE_EMBEDDED" => nil}
}.freeze

SCENARIOS = [
  ["connect", "connect 1k", %w[--clients 1000 --concurrency 100 --hold 3]],
  ["connect", "connect 5k", %w[--clients 5000 --concurrency 100 --hold 5]],
  ["echo", "echo 50 clients", %w[--clients 50 --duration 10 --payload 200]],
  ["broadcast", "broadcast 1k", %w[--clients 1000 --messages 50 --interval-ms 100 --payload 200]]
].map { |mode, name, args| [mode, name, QUICK ? args.map { |a| {"1000" => "100", "5000" => "300", "10" => "3"}.fetch(a, a) } : args] }

def free_port
  s = TCPServer.new("127.0.0.1", 0)
  s.addr[1]
ensure
  s&.close
end

def start_puma(env)
  port = free_port
  log = File.open("/tmp/anycable-bench-puma.log", "w")
  pid = Process.spawn({"RAILS_MAX_THREADS" => "5"}.merge(env),
    "puma", "-b", "tcp://127.0.0.1:#{port}?low_latency=true", "-t", "5:5", "-e", "production", "config.ru",
    chdir: File.join(__dir__, "app"), out: log, err: log, pgroup: true)
  60.times do
    break if (Net::HTTP.get_response(URI("http://127.0.0.1:#{port}/cable")) rescue nil) # rubocop:disable Style/RescueModifier
    sleep 0.2
  end
  [pid, port]
end

def stop_puma(pid)
  Process.kill("TERM", -pid)
  Process.wait(pid)
rescue Errno::ESRCH, Errno::ECHILD
  nil
end

def bench(mode, args, port, pid)
  cmd = [BENCH, mode, "--url", "ws://127.0.0.1:#{port}/cable", *args]
  cmd += ["--pid", pid.to_s] if mode == "connect"
  out = IO.popen(cmd, err: [:child, :out], &:read)
  summary = out.lines.grep(/^SUMMARY /).last
  [cmd, summary ? JSON.parse(summary.sub("SUMMARY ", "")) : {"error" => out}]
end

system("cargo", "build", "--release", "-q", "-p", "anycable-bench", chdir: ROOT, exception: true)
system("rake", "compile", chdir: ROOT, out: File::NULL, exception: true)

results = Hash.new { |h, k| h[k] = {} }
commands = {}
SCENARIOS.each do |mode, name, args|
  SERVERS.each do |server, env|
    pid, port = start_puma(env)
    bench("connect", %w[--clients 20 --hold 0], port, pid) # warm-up: starts the runtime, loads classes
    cmd, summary = bench(mode, args, port, pid)
    stop_puma(pid)
    results[name][server] = summary
    commands[name] ||= cmd.map { |c| c.sub(ROOT + "/", "") }.join(" ").sub(/--url \S+/, "--url ws://127.0.0.1:PORT/cable").sub(/--pid \d+/, "--pid PUMA_PID")
    warn "#{name} / #{server}: #{summary.to_json}"
  end
end

def f(v, digits = 1)
  v.nil? ? "–" : format("%.#{digits}f", v)
end

def ratio(a, b)
  return "–" if a.nil? || b.nil? || b.zero?

  format("%.1f×", a / b)
end

rs, ac = "anycable-rs", "Action Cable"
rows = []
c1, c5 = results["connect 1k"], results["connect 5k"]
rows << ["RSS per idle subscribed connection, 1k (KiB)", f(c1[rs]["rss_per_conn_kib"]), f(c1[ac]["rss_per_conn_kib"]), ratio(c1[ac]["rss_per_conn_kib"], c1[rs]["rss_per_conn_kib"])]
rows << ["RSS per idle subscribed connection, 5k (KiB)", f(c5[rs]["rss_per_conn_kib"]), f(c5[ac]["rss_per_conn_kib"]), ratio(c5[ac]["rss_per_conn_kib"], c5[rs]["rss_per_conn_kib"])]
rows << ["connect + subscribe per second (5k)", f(c5[rs]["connects_per_sec"], 0), f(c5[ac]["connects_per_sec"], 0), ratio(c5[rs]["connects_per_sec"], c5[ac]["connects_per_sec"])]
e = results["echo 50 clients"]
rows << ["echo round trips per second, 50 clients", f(e[rs]["per_sec"], 0), f(e[ac]["per_sec"], 0), ratio(e[rs]["per_sec"], e[ac]["per_sec"])]
rows << ["echo latency p95 (ms)", f(e[rs].dig("latency_ms", "p95"), 2), f(e[ac].dig("latency_ms", "p95"), 2), ratio(e[ac].dig("latency_ms", "p95"), e[rs].dig("latency_ms", "p95"))]
b = results["broadcast 1k"]
%w[p50 p95 p99].each do |q|
  rows << ["broadcast to 1k: until the last subscriber, #{q} (ms)", f(b[rs].dig("until_last_ms", q), 2), f(b[ac].dig("until_last_ms", q), 2), ratio(b[ac].dig("until_last_ms", q), b[rs].dig("until_last_ms", q))]
end
rows << ["broadcast to 1k: missing messages", b[rs]["missing"].to_s, b[ac]["missing"].to_s, ""]

ruby = RUBY_DESCRIPTION
rails = `ruby -e 'require "rails"; print Rails.version'`
puma = `puma --version`.strip
cpu = File.read("/proc/cpuinfo")[/model name\s*:\s*(.*)/, 1]
date = Time.now.utc
report = +<<~MD
  # anycable-rs embedded vs Rails' Action Cable — #{date.strftime("%Y-%m-%d")}

  Machine: #{Etc.respond_to?(:nprocessors) ? Etc.nprocessors : 2} cores (#{cpu}), #{(File.read("/proc/meminfo")[/MemTotal:\s+(\d+)/, 1].to_i / 1024 / 1024.0).round} GiB.
  #{ruby}; Rails #{rails}; #{puma}; load tool on the same machine (loopback).

  Both servers run the same app (`bench/app/config.ru`, `BenchmarkChannel`) in Puma,
  `-t 5:5 -e production`, bound with `?low_latency=true` (TCP_NODELAY; anycable-rs sets it
  on every socket itself). anycable-rs: `ANYCABLE_EMBEDDED=true`, sockets taken over from
  Puma's port by Rack hijack. Action Cable: async adapter, worker pool 5. Each scenario
  starts a fresh server and warms it with 20 connections first.

  Command: `#{QUICK ? "QUICK=1 " : ""}ruby bench/compare.rb`#{QUICK ? " (QUICK sizes)" : ""}

  | | anycable-rs | Action Cable | ratio |
  |---|---:|---:|---:|
MD
rows.each { |r| report << "| #{r.join(" | ")} |\n" }
report << "\nRatios: how many times better anycable-rs is (bigger is better for it).\n\n## Commands\n\n"
commands.each { |name, cmd| report << "- #{name}: `#{cmd}`\n" }
report << "\n## Raw summaries\n\n```json\n#{JSON.pretty_generate(results)}\n```\n"
dir = File.join(__dir__, "results")
FileUtils.mkdir_p(dir)
path = File.join(dir, "#{date.strftime("%Y-%m-%d")}-embedded-vs-actioncable#{QUICK ? "-quick" : ""}.md")
File.write(path, report)
puts report
puts "written to #{path}"
