#!/usr/bin/env ruby
# frozen_string_literal: true

# Shutdown under load (issue #13): do the disconnect callbacks of every connection run
# when Puma stops? Boots spec/dummy in real Puma (single mode, embedded), opens N
# WebSocket connections each subscribed to SlowChannel, sends SIGTERM to Puma and
# waits for it to exit, then counts in the app's database (which outlives the process)
# how many `SlowChannel#unsubscribed` and `Connection#disconnect` callbacks ran. The
# dummy app already records both as Event rows ("slow.unsubscribed", "disconnect"),
# one SQLite insert each, serialized per process (Event::WRITE_LOCK).
#
#   bundle exec ruby bench/shutdown_callbacks.rb                     # 1500 connections, default timeout
#   N=1500 SHUTDOWN_TIMEOUT=30 bundle exec ruby bench/shutdown_callbacks.rb
#
# N: connections (1500). SHUTDOWN_TIMEOUT: ANYCABLE_SHUTDOWN_TIMEOUT for Puma (unset:
# the gem's default). THREADS: Puma threads = Ruby threads running callbacks (5).
# LOG_LEVEL: the dummy app's Rails log level (info).
require "json"
require "time"
require "timeout"
require "sqlite3"
require "websocket/driver"
require_relative "../spec/support/puma_server"

N = Integer(ENV.fetch("N", "1500"))
THREADS = Integer(ENV.fetch("THREADS", "5"))
TIMEOUT = ENV["SHUTDOWN_TIMEOUT"]
LOG_LEVEL = ENV.fetch("LOG_LEVEL", "info")
CONNECT_BATCH = 100

def now
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

# Room for N client sockets here and N in Puma (which inherits the limit).
soft, hard = Process.getrlimit(:NOFILE)
want = 2 * N + 512
Process.setrlimit(:NOFILE, [[want, hard].min, soft].max, hard) if soft < want

# One client connection, driven by the select loop below (no thread per socket).
class Conn
  attr_reader :io, :url, :welcomed, :confirmed, :restart_notice, :close_code

  IDENTIFIER = JSON.generate(channel: "SlowChannel")

  def initialize(url)
    @url = url
    uri = URI(url)
    @io = TCPSocket.new(uri.host, uri.port)
    @driver = WebSocket::Driver.client(self, protocols: ["actioncable-v1-json"])
    @driver.set_header("Origin", "http://allowed.test")
    @driver.on(:message) { |e| handle(JSON.parse(e.data)) }
    @driver.on(:close) { |e| @close_code ||= e.code }
    @driver.start
  end

  def write(data)
    @io.write(data)
  rescue IOError, SystemCallError
    nil
  end

  def closed?
    !@close_code.nil?
  end

  # Reads what is there; false once the socket is done.
  def pump
    @driver.parse(@io.read_nonblock(65_536))
    true
  rescue IO::WaitReadable
    true
  rescue EOFError, IOError, SystemCallError
    @close_code ||= :eof
    @io.close unless @io.closed?
    false
  end

  private

  def handle(msg)
    case msg["type"]
    when "welcome"
      @welcomed = true
      @driver.text(JSON.generate(command: "subscribe", identifier: IDENTIFIER))
    when "confirm_subscription" then @confirmed = true
    when "disconnect" then @restart_notice = msg["reason"]
    end
  end
end

# Reads every open connection until `stop` says so.
def pump(conns, stop)
  until stop.call
    open = conns.reject { |c| c.io.closed? }
    break if open.empty?

    ready, = IO.select(open.map(&:io), nil, nil, 0.2)
    next unless ready

    by_io = open.to_h { |c| [c.io, c] }
    ready.each { |io| by_io[io].pump }
  end
end

def count_events(db_path)
  db = SQLite3::Database.new(db_path, readonly: true)
  counts = db.execute("SELECT name, COUNT(*) FROM events GROUP BY name").to_h
  last = db.execute("SELECT MAX(created_at) FROM events WHERE name IN ('disconnect', 'slow.unsubscribed')").first.first
  [counts, last]
ensure
  db&.close
end

env = {"DUMMY_LOG_LEVEL" => LOG_LEVEL}
env["ANYCABLE_SHUTDOWN_TIMEOUT"] = TIMEOUT if TIMEOUT
puma = PumaServer.new(env: env, threads: THREADS)
puma.start
puma.http(:get, "/login?name=bench") # the user every connection authenticates as (?user=bench)
url = puma.url("/cable?user=bench")

conns = []
t_connect = now
while conns.size < N
  batch = Array.new([CONNECT_BATCH, N - conns.size].min) { Conn.new(url) }
  conns.concat(batch)
  deadline = now + 60
  pump(conns, -> { batch.all? { |c| c.confirmed || c.closed? } || now > deadline })
end
deadline = now + 60
pump(conns, -> { conns.all? { |c| c.confirmed || c.closed? } || now > deadline })
connect_s = now - t_connect
subscribed = conns.count(&:confirmed)
if subscribed.zero?
  puts puma.log[-3000..] || puma.log
  puts puma.rails_log.lines.last(30).join
  abort "no connection subscribed; nothing to measure"
end
stats = JSON.parse(puma.http(:get, "/stats").body)
rss_kib = File.read("/proc/#{puma.pid}/status")[/VmRSS:\s+(\d+)/, 1].to_i
puts "connections: #{conns.count(&:welcomed)} welcomed of #{N}, #{subscribed} subscribed " \
     "(#{connect_s.round(1)} s; server sessions #{stats["sessions"]}, Puma RSS #{rss_kib / 1024} MiB)"

loadavg = File.read("/proc/loadavg").split.first(3).join(" ")
wall_sigterm = Time.now
t_sigterm = now
Process.kill("TERM", puma.pid)
stop_reading = false
reader = Thread.new { pump(conns, -> { stop_reading }) }
exit_status = nil
begin
  Timeout.timeout((TIMEOUT || 5).to_f + 120) { _, exit_status = Process.wait2(puma.pid) }
rescue Timeout::Error
  warn "Puma did not exit within #{(TIMEOUT || 5).to_f + 120} s; KILL"
  Process.kill("KILL", -puma.pid)
  Process.wait(puma.pid)
end
exit_s = now - t_sigterm
sleep 0.5
stop_reading = true
reader.join

counts, last_at = count_events(puma.env["DUMMY_DATABASE"])
last_s = last_at && (Time.parse("#{last_at} UTC") - wall_sigterm)
log = puma.log
not_finished = log.lines.grep(/did not run within|did not finish/).map(&:strip)
errors = log.lines.grep(/\bERROR\b|Exception|raised/).first(5).map(&:strip)
rails_errors = puma.rails_log.lines.grep(/raised|Error/).first(5).map(&:strip)

summary = {
  n: N, threads: THREADS, shutdown_timeout: TIMEOUT || "default", log_level: LOG_LEVEL,
  welcomed: conns.count(&:welcomed), subscribed: subscribed,
  connect_events: counts["connect"].to_i,
  disconnect_ran: counts["disconnect"].to_i, unsubscribed_ran: counts["slow.unsubscribed"].to_i,
  server_restart_notices: conns.count { |c| c.restart_notice == "server_restart" },
  close_codes: conns.map { |c| c.close_code || :open }.tally.transform_keys(&:to_s),
  loadavg_at_sigterm: loadavg, connect_s: connect_s.round(1), puma_rss_mib: rss_kib / 1024,
  sigterm_to_exit_s: exit_s.round(2), sigterm_to_last_callback_s: last_s&.round(2),
  exit_status: exit_status&.exitstatus || exit_status&.termsig&.then { |s| "signal #{s}" },
  not_finished_log: not_finished, puma_log_errors: errors, rails_log_errors: rails_errors
}
puts "callbacks ran: disconnect #{summary[:disconnect_ran]}, unsubscribed #{summary[:unsubscribed_ran]} " \
     "(of #{subscribed} subscribed; #{summary[:server_restart_notices]} clients told server_restart)"
puts "shutdown log: #{not_finished.empty? ? "(no line saying callbacks did not finish)" : not_finished.join(" | ")}"
puts "SIGTERM to exit: #{exit_s.round(2)} s; SIGTERM to last callback: #{last_s&.round(2).inspect} s"
puts "SUMMARY #{JSON.generate(summary)}"
puma.cleanup unless ENV["KEEP"] == "1"
