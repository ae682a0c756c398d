#!/usr/bin/env ruby
# frozen_string_literal: true

# Broadcast latency to subscribers spread over two anycable-rs nodes (Puma processes)
# sharing a pub/sub server, beside the same load on one node with in-process
# broadcasting. Writes bench/results/<date>-pubsub.md.
#
#   ruby bench/pubsub.rb            # 1k subscribers, 50 messages
#   QUICK=1 ruby bench/pubsub.rb
require "time"
require "etc"
require_relative "harness"

QUICK = ENV["QUICK"] == "1"
ARGS = %w[--clients 1000 --messages 50 --interval-ms 100 --payload 200]
  .map { |a| QUICK ? {"1000" => "200", "50" => "10"}.fetch(a, a) : a }

Harness.build!

def with_broker(kind)
  pid, port = Harness.spawn_server(*(kind == "nats" ? ["nats-server", "-a", "127.0.0.1", "-p", "PORT"] :
    ["redis-server", "--bind", "127.0.0.1", "--port", "PORT", "--save", "", "--appendonly", "no"]))
  yield(kind == "nats" ? "nats://127.0.0.1:#{port}" : "redis://127.0.0.1:#{port}")
ensure
  Harness.stop(pid) if pid
end

def run(label, envs)
  servers = envs.map { |env| Harness.start_puma({"ANYCABLE_EMBEDDED" => "true"}.merge(env)) }
  urls = servers.map { |_, port| Harness.url(port) }
  Harness.bench("connect", %w[--clients 20 --hold 0], urls)
  cmd, summary = Harness.bench("broadcast", ARGS, urls)
  warn "#{label}: #{summary.to_json}"
  [label, cmd, summary]
ensure
  servers&.each { |pid, _| Harness.stop(pid) }
end

rows = [run("1 node, in-process", [{}])]
%w[nats redis].each do |kind|
  with_broker(kind) do |url|
    key = kind == "nats" ? "ANYCABLE_NATS_SERVERS" : "ANYCABLE_REDIS_URL"
    env = {"ANYCABLE_BROADCAST_ADAPTER" => kind, key => url}
    rows << run("2 nodes via #{kind}", [env, env])
  end
end

date = Time.now.utc
report = +<<~MD
  # Broadcast over a pub/sub: 2 nodes vs 1 node — #{date.strftime("%Y-%m-%d")}

  Machine: #{Harness.machine}. Nodes: `bench/app` in Puma (`-t 5:5 -e production`,
  `ANYCABLE_EMBEDDED=true`); subscribers spread evenly over the nodes; the sender is a
  client of the first node performing `BenchmarkChannel#broadcast`. nats-server and
  redis-server from Debian, on loopback. Everything, load tool included, shares 2 cores.

  Command: `#{QUICK ? "QUICK=1 " : ""}ruby bench/pubsub.rb`

  | setup | until the last subscriber p50 (ms) | p95 | p99 | per subscriber p50 | missing |
  |---|---:|---:|---:|---:|---:|
MD
rows.each do |label, _, s|
  u = s["until_last_ms"] || {}
  report << format("| %s | %.2f | %.2f | %.2f | %.2f | %s |\n", label, u["p50"].to_f, u["p95"].to_f, u["p99"].to_f,
    s.dig("per_client_ms", "p50").to_f, s["missing"].inspect)
end
report << "\n## Commands\n\n"
rows.each { |label, cmd, _| report << "- #{label}: `#{cmd}`\n" }
report << "\n## Raw summaries\n\n```json\n#{JSON.pretty_generate(rows.to_h { |l, _, s| [l, s] })}\n```\n"
path = File.join(__dir__, "results", "#{date.strftime("%Y-%m-%d")}-pubsub#{QUICK ? "-quick" : ""}.md")
File.write(path, report)
puts report
