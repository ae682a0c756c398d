#!/usr/bin/env ruby
# frozen_string_literal: true

# The reconnect storm after a deploy (issue #22): N clients connected and subscribed to
# one server (bench/app in Puma, production); the server is stopped (SIGTERM) and
# started again on the same ports; every client reconnects at once (at most 1 000
# handshakes in flight, retrying every 100–200 ms while the port refuses). Measured by
# the load tool (`anycable-bench storm`): from the first TCP connect the new server
# accepts until every client is back and has received a probe broadcast.
#
#   ruby bench/storm.rb              # 5 000 and 10 000 clients, every server
#   SIZES=5000 SERVERS=ac,rs ruby bench/storm.rb
#
# Servers (same app, same cookie-authenticated connection class):
#   ac   Rails' Action Cable (async adapter), Puma's port, cookie auth (connect in Ruby)
#   rs   anycable-rs, Puma's port, cookie auth (connect in Ruby)
#   own  anycable-rs, its own port (ANYCABLE_PORT), cookie auth (connect in Ruby)
#   jwt  anycable-rs, its own port, a JWT in the URL (no Ruby on connect)
#   signed  as jwt, subscribed to the signed stream (`$pubsub`): no Ruby on connect
#        nor on subscribe
#   ext  anycable-rs, its own port, cookie auth at first, the extended protocol and
#        the NATS broker (a local nats-server with JetStream): the stopping server keeps
#        every session, and the clients restore them (no Ruby on reconnect)
# plus the floor under (rs): plain GETs through the same Puma and middleware.
require "time"
require "net/http"
require_relative "harness"

SIZES = (ENV["SIZES"] || "5000,10000").split(",").map { |s| Integer(s) }
SERVERS = (ENV["SERVERS"] || "ac,rs,own,jwt,signed,ext").split(",").map(&:strip)
CONCURRENCY = Integer(ENV.fetch("CONCURRENCY", "1000"))
PROBE_MS = Integer(ENV.fetch("PROBE_MS", "100"))
LABELS = {
  "ac" => "Action Cable, Puma's port, cookie auth",
  "rs" => "anycable-rs, Puma's port, cookie auth",
  "own" => "anycable-rs, own port, cookie auth",
  "jwt" => "anycable-rs, own port, JWT",
  "signed" => "anycable-rs, own port, JWT, signed stream",
  "ext" => "anycable-rs, own port, extended protocol, restore (NATS broker)"
}.freeze

# bench/app in Puma on `port` (fixed: the restart comes back on it), output appended to log.
def puma(env, port, log)
  out = File.open(log, "a")
  pid = Process.spawn({"RAILS_MAX_THREADS" => "5"}.merge(env),
    "puma", "-b", "tcp://127.0.0.1:#{port}?low_latency=true", "-t", "5:5", "-e", "production", "config.ru",
    chdir: File.join(__dir__, "app"), out: out, err: out, pgroup: true)
  out.close
  pid
end

def stop(pid)
  Process.kill("TERM", pid)
  Process.wait(pid)
rescue Errno::ESRCH, Errno::ECHILD
  nil
end

def nats_server
  port = Harness.free_port
  dir = Dir.mktmpdir("anycable-storm-js")
  pid = Process.spawn("nats-server", "-a", "127.0.0.1", "-p", port.to_s, "-js", "-sd", dir,
    out: File::NULL, err: File::NULL, pgroup: true)
  Harness.wait_for_port(port)
  [pid, port, dir]
end

# One storm: [command line, summary].
def storm(server, clients)
  port = Harness.free_port
  own = Harness.free_port
  db = File.join(Dir.tmpdir, "anycable-storm-#{port}.sqlite3")
  log = "/tmp/anycable-storm-#{server}-#{port}.log"
  env = {"BENCH_DATABASE" => db}
  env["ANYCABLE_EMBEDDED"] = "true" unless server == "ac"
  env["ANYCABLE_PORT"] = own.to_s if %w[own jwt signed ext].include?(server)
  env["ANYCABLE_JWT_SECRET"] = "storm-jwt-secret" if %w[jwt signed].include?(server)
  env["ANYCABLE_STREAMS_SECRET"] = "storm-streams-secret" if server == "signed"
  nats = nil
  if server == "ext"
    nats = nats_server
    env.merge!("ANYCABLE_BROKER" => "nats", "ANYCABLE_BROADCAST_ADAPTER" => "nats",
      "ANYCABLE_NATS_SERVERS" => "nats://127.0.0.1:#{nats[1]}", "ANYCABLE_SECRET" => "storm-secret")
  end
  pid = puma(env, port, log)
  Harness.wait_for_port(port)
  Harness.wait_for_port(own) if env["ANYCABLE_PORT"]
  cookie = Harness.login_cookie(port)
  ws_port = env["ANYCABLE_PORT"] ? own : port
  url = "ws://127.0.0.1:#{ws_port}/cable"
  url += "?jid=#{Net::HTTP.get(URI("http://127.0.0.1:#{port}/token"))}" if %w[jwt signed].include?(server)
  args = ["--clients", clients.to_s, "--concurrency", CONCURRENCY.to_s, "--duration", "180",
    "--channel", "BenchmarkChannel", "--probe", "http://127.0.0.1:#{port}/probe", "--interval-ms", PROBE_MS.to_s]
  if server == "signed"
    signed = Net::HTTP.get(URI("http://127.0.0.1:#{port}/signed"))
    args += ["--identifier", JSON.generate(channel: "$pubsub", signed_stream_name: signed)]
  end
  args += ["--cookie", cookie] unless %w[jwt signed].include?(server)
  args += ["--protocol", "actioncable-v1-ext-json"] if server == "ext"
  sleep 2 if server == "ext" # the broker's stream made
  cmd = [File.join(Harness::BIN, "anycable-bench"), "storm", "--url", url, *args]
  summary = nil
  IO.popen(cmd, err: [:child, :out]) do |io|
    io.each_line do |line|
      print "    #{line}"
      if line.strip == "READY"
        stop(pid)
        pid = puma(env, port, log)
      end
      summary = JSON.parse(line.sub("SUMMARY ", "")) if line.start_with?("SUMMARY ")
    end
  end
  shown = cmd.each_with_index.map { |c, i| cmd[i - 1] == "--cookie" ? "COOKIE" : c.sub("#{Harness::ROOT}/", "") }.join(" ")
    .gsub(/127\.0\.0\.1:\d+/, "127.0.0.1:PORT").gsub(/jid=[\w.-]+/, "jid=TOKEN")
    .gsub(/"signed_stream_name":"[^"]+"/, '"signed_stream_name":"SIGNED"')
  [shown, summary || {"error" => "no summary"}]
ensure
  stop(pid) if pid
  if nats
    Process.kill("TERM", nats[0])
    Process.wait(nats[0])
    FileUtils.rm_rf(nats[2])
  end
  FileUtils.rm_f(Dir["#{db}*"]) if db
end

# Puma's own floor for (rs): `clients` plain GETs, CONCURRENCY at once, fresh connections.
def floor(clients)
  port = Harness.free_port
  db = File.join(Dir.tmpdir, "anycable-storm-floor-#{port}.sqlite3")
  pid = puma({"ANYCABLE_EMBEDDED" => "true", "BENCH_DATABASE" => db}, port, "/tmp/anycable-storm-floor.log")
  Harness.wait_for_port(port)
  Harness.bench("http", ["--clients", clients.to_s, "--concurrency", CONCURRENCY.to_s], ["http://127.0.0.1:#{port}/up"]).last
ensure
  stop(pid) if pid
  FileUtils.rm_f(Dir["#{db}*"]) if db
end

Harness.build_tools!
system("rake", "compile", chdir: Harness::ROOT, out: File::NULL, exception: true) unless ENV["SKIP_BUILD"] == "1"
rows = []
SIZES.each do |n|
  SERVERS.each do |server|
    puts "== #{n} clients: #{LABELS.fetch(server)}"
    shown, s = storm(server, n)
    rows << [n, server, shown, s]
  end
  if SERVERS.include?("rs")
    f = floor(n)
    puts "== #{n} plain GETs through Puma: #{f["seconds"]&.round(2)} s"
    rows << [n, "floor", nil, f]
  end
end

fmt = ->(v) { v.nil? ? "–" : format("%.2f", v) }
out = +"# The reconnect storm (issue #22)\n\n"
out << "Machine: #{Harness.machine}. #{Time.now.utc.iso8601}.\n\n"
out << "Command: `#{(ENV.select { |k, _| %w[SIZES SERVERS CONCURRENCY PROBE_MS].include?(k) }.map { |k, v| "#{k}=#{v} " }.join)}ruby bench/storm.rb`\n\n"
out << "Seconds from the restarted server's first accepted TCP connect until every client is\n" \
  "back (welcome and subscription, or a restored welcome) and has received a probe\n" \
  "broadcast; clients reconnect on their own, at most #{CONCURRENCY} handshakes at once.\n\n"
out << "| clients | server | all receiving (s) | back p50 / p95 / max (s) | restored | not receiving | initial connect (s) |\n"
out << "|---|---|---|---|---|---|---|\n"
rows.each do |n, server, _, s|
  if server == "floor"
    out << "| #{n} | floor: #{n} plain GETs through Puma (#{CONCURRENCY} at once) | #{fmt[s["seconds"]]} | | | #{s["failures"]} | |\n"
    next
  end
  if s["error"]
    out << "| #{n} | #{LABELS[server]} | error: #{s["error"]} | | | | |\n"
    next
  end
  b = s["back_s"] || {}
  out << "| #{n} | #{LABELS[server]} | #{fmt[s["all_receiving_s"]]} | #{fmt[b["p50"]]} / #{fmt[b["p95"]]} / #{fmt[b["max"]]} | " \
    "#{s["restored"]} | #{s["not_receiving"]} | #{fmt[s["initial_connect_s"]]} |\n"
end
out << "\nLoad tool command lines:\n\n"
rows.each { |n, server, shown, _| out << "- #{n}, #{server}: `#{shown}`\n" if shown }
path = File.join(__dir__, "results", "#{Time.now.utc.strftime("%Y-%m-%d")}-reconnect-storm.md")
File.write(path, out)
puts out
puts "written to #{path}"
