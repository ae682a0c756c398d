#!/usr/bin/env ruby
# frozen_string_literal: true

# Connect + subscribe per second (issue #9's benchmark): JWT clients subscribing to a
# signed stream on the embedded server's own port — no Ruby at all — beside the cookie
# connect the same app's ApplicationCable::Connection runs (signed cookie, a user
# lookup, an event row written) on anycable-rs and on Rails' own Action Cable, in one
# run. The app is spec/dummy (Rails 6.1, SQLite).
#
#   bundle exec ruby bench/jwt_connect.rb [CLIENTS]
require "net/http"
require "openssl"
require "base64"
require_relative "harness"
require_relative "../spec/support/puma_server"

clients = Integer(ARGV[0] || 2000)
Harness.build_tools!

def get(port, path)
  Net::HTTP.get_response(URI("http://127.0.0.1:#{port}#{path}"))
end

def cookie(port)
  get(port, "/login?name=bench").get_fields("set-cookie").map { |c| c.split(";").first }.join("; ")
end

def signed(name, secret)
  data = Base64.strict_encode64(JSON.generate(name))
  "#{data}--#{OpenSSL::HMAC.hexdigest("SHA256", secret, data)}"
end

common = %W[--clients #{clients} --concurrency 100 --hold 0 --origin http://allowed.test]
rows = {}
commands = {}

own = Harness.free_port
# spec/dummy in Puma, 5 threads, its log at warn (the load is the measure, not logging).
def start(env)
  server = PumaServer.new(threads: 5, env: {"DUMMY_LOG_LEVEL" => "warn"}.merge(env)).start
  [server, server.pid, server.port]
end

server, pid, port = start("ANYCABLE_PORT" => own.to_s,
  "ANYCABLE_JWT_SECRET" => "bench-jwt", "ANYCABLE_STREAMS_SECRET" => "bench-streams")
Harness.wait_for_port(own)
token = get(port, "/token?name=bench").body
id = JSON.generate(channel: "$pubsub", signed_stream_name: signed("bench", "bench-streams"))
Harness.bench("connect", %w[--clients 50 --hold 0 --origin http://allowed.test --identifier] + [id], ["ws://127.0.0.1:#{own}/cable?jid=#{token}"])
cmd, r = Harness.bench("connect", common + ["--identifier", id], ["ws://127.0.0.1:#{own}/cable?jid=#{token}"], pid: pid)
rows["anycable-rs: JWT + signed stream, own port (no Ruby)"] = r
commands["anycable-rs: JWT + signed stream, own port (no Ruby)"] = cmd.sub(/jid=[\w.-]+/, "jid=TOKEN").sub(/signed_stream_name":"[^"]+"/, 'signed_stream_name":"SIGNED"')
c = cookie(port)
cmd, r = Harness.bench("connect", common + ["--cookie", c, "--channel", "EchoChannel"], [Harness.url(port)], pid: pid)
rows["anycable-rs: cookie connect + EchoChannel, Puma's port"] = r
commands["anycable-rs: cookie connect + EchoChannel, Puma's port"] = cmd.sub(c, "COOKIE")
server.stop
server.cleanup

server, pid, port = start("ANYCABLE_EMBEDDED" => "false")
c = cookie(port)
Harness.bench("connect", %w[--clients 50 --hold 0 --origin http://allowed.test --channel EchoChannel --cookie] + [c], [Harness.url(port)])
cmd, r = Harness.bench("connect", common + ["--cookie", c, "--channel", "EchoChannel"], [Harness.url(port)], pid: pid)
rows["Action Cable: cookie connect + EchoChannel"] = r
commands["Action Cable: cookie connect + EchoChannel"] = cmd.sub(c, "COOKIE")
server.stop
server.cleanup

base = rows["Action Cable: cookie connect + EchoChannel"]["connects_per_sec"].to_f
puts "Machine: #{Harness.machine}"
puts
puts "| | connect + subscribe/s | vs Action Cable | failed |"
puts "|---|---:|---:|---:|"
rows.each do |name, r|
  rate = r["connects_per_sec"].to_f
  puts "| #{name} | #{rate.round} | #{base.positive? ? "#{(rate / base).round(1)}×" : "-"} | #{r["failures"] || r["error"] || 0} |"
end
puts
commands.each { |name, cmd| puts "- #{name}: `#{cmd}`" }
puts
puts "SUMMARY #{JSON.generate(rows)}"
