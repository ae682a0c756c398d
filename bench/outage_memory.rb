#!/usr/bin/env ruby
# frozen_string_literal: true

# Memory while the pub/sub server is down (issue #13): broadcasts made during an
# outage wait in a bounded publish queue (16 MiB / 30 s, the oldest dropped and counted
# in an error line). Boots spec/dummy in real Puma (embedded) with the NATS (or Redis)
# broadcast adapter against a real nats-server (redis-server) on a free port, connects
# one subscriber to EchoChannel (stream "all"), then:
#
# 1. control, CONTROL_ROUNDS times: with the pub/sub server up, COUNT broadcasts of
#    SIZE bytes through the app (POST /broadcast -> ActionCable.server.broadcast),
#    Puma's RSS before/after;
# 2. outage: stops the pub/sub server, waits for the app to notice, OUTAGE_COUNT
#    broadcasts, RSS before/after (what the queue holds, beside what Ruby's heap and
#    malloc do with COUNT such requests, which the control rounds show);
# 3. restarts the pub/sub server (same port), waits for deliveries to stop, and counts
#    outage broadcasts delivered to the subscriber vs dropped (from the error lines).
#
#   bundle exec ruby bench/outage_memory.rb              # nats, 500 x 100 KiB
#   ADAPTER=redis bundle exec ruby bench/outage_memory.rb
#   ANYCABLE_MAX_PENDING_BYTES=33554432 bundle exec ruby bench/outage_memory.rb
#     (the burst after the restart cuts a subscriber at the default 1 MiB as too_slow)
#
# COUNT (500), SIZE (102400 bytes of data per broadcast), HOLD: seconds the pub/sub
# server stays down after the last outage broadcast (2), THREADS (5), CONTROL_ROUNDS
# (4: RSS settles after two rounds of 500 x 100 KiB), OUTAGE_COUNT (COUNT).
# ADAPTER=local runs the control rounds only (no pub/sub server), to tell the pub/sub
# path's memory from the rest. Other ANYCABLE_* settings in the environment
# (e.g. ANYCABLE_MAX_PENDING_BYTES) reach Puma unchanged.
require "json"
require "timeout"
require "net/http"
require "websocket/driver"
require_relative "../spec/support/puma_server"
require_relative "../spec/support/broker_servers"

ADAPTER = ENV.fetch("ADAPTER", "nats")
COUNT = Integer(ENV.fetch("COUNT", "500"))
SIZE = Integer(ENV.fetch("SIZE", "102400"))
HOLD = Float(ENV.fetch("HOLD", "2"))
THREADS = Integer(ENV.fetch("THREADS", "5"))
CONTROL_ROUNDS = Integer(ENV.fetch("CONTROL_ROUNDS", "4"))
OUTAGE_COUNT = Integer(ENV.fetch("OUTAGE_COUNT", COUNT.to_s))

def now
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

def wait_until(what, timeout)
  deadline = now + timeout
  until yield
    raise "#{what}: not within #{timeout}s" if now > deadline

    sleep 0.05
  end
end

def mem(pid)
  status = File.read("/proc/#{pid}/status")
  {rss: status[/VmRSS:\s+(\d+)/, 1].to_i / 1024.0, hwm: status[/VmHWM:\s+(\d+)/, 1].to_i / 1024.0}
end

# One command to redis-server over RESP; the bulk reply's text.
def redis_call(port, *args)
  sock = TCPSocket.new("127.0.0.1", port)
  sock.write("*#{args.size}\r\n" + args.map { |a| "$#{a.bytesize}\r\n#{a}\r\n" }.join)
  head = sock.gets
  head.start_with?("$") ? sock.read(head[1..].to_i) : head
ensure
  sock&.close
end

# The one subscriber: its own socket read in 1 MiB chunks by one thread, and only the
# head of each message looked at (no JSON parse of 100 KiB), so that it keeps up with
# the burst that follows the restart (a slower reader is cut as too_slow, which would
# count as "not delivered" here for the wrong reason).
class Subscriber
  IDENTIFIER = JSON.generate(channel: "EchoChannel")

  attr_reader :url, :close_event

  def initialize(url, headers)
    @url = url
    uri = URI(url)
    @io = TCPSocket.new(uri.host, uri.port)
    @io.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4 << 20)
    @seen = Hash.new { |h, k| h[k] = [] }
    @lock = Mutex.new
    @last = now
    @confirmed = false
    @driver = WebSocket::Driver.client(self, protocols: ["actioncable-v1-json"], max_length: 64 << 20)
    headers.each { |k, v| @driver.set_header(k, v) }
    @driver.on(:message) { |e| on_message(e.data) }
    @driver.on(:close) { |e| @close_event ||= e.code }
    @driver.start
    @thread = Thread.new do
      loop { @driver.parse(@io.readpartial(1 << 20)) }
    rescue EOFError, IOError, SystemCallError
      @close_event ||= :eof
    end
  end

  def write(data)
    @io.write(data)
  rescue IOError, SystemCallError
    nil
  end

  def confirmed?
    @confirmed
  end

  def count(phase)
    @lock.synchronize { @seen[phase].size }
  end

  def uniq(phase)
    @lock.synchronize { @seen[phase].uniq.size }
  end

  def seqs(phase)
    @lock.synchronize { @seen[phase].dup }
  end

  def idle_for
    now - @lock.synchronize { @last }
  end

  def closed?
    !@close_event.nil?
  end

  private

  def on_message(data)
    head = data[0, 200]
    if (m = head.match(/"phase":"(\w+)","seq":(\d+)/))
      @lock.synchronize do
        @seen[m[1]] << m[2].to_i
        @last = now
      end
    elsif head.include?('"type":"welcome"')
      @driver.text(JSON.generate(command: "subscribe", identifier: IDENTIFIER))
    elsif head.include?('"type":"confirm_subscription"')
      @confirmed = true
    end
  end
end

broker = {"redis" => RedisServer, "nats" => NatsServer}[ADAPTER]&.new&.start
env = {"ANYCABLE_BROADCAST_ADAPTER" => ADAPTER, "DUMMY_LOG_LEVEL" => "info"}
env[ADAPTER == "redis" ? "ANYCABLE_REDIS_URL" : "ANYCABLE_NATS_SERVERS"] = broker.url if broker
puma = PumaServer.new(threads: THREADS, env: env).start

begin
  cookie = puma.http(:get, "/login?name=bench").get_fields("set-cookie").map { |c| c.split(";").first }.join("; ")
  sub = Subscriber.new(puma.url, {"Origin" => "http://allowed.test", "Cookie" => cookie})
  wait_until("subscription confirmed", 10) { sub.confirmed? }
  http = Net::HTTP.start("127.0.0.1", puma.port, read_timeout: 30)
  pad = "x" * SIZE
  broadcast = lambda do |phase, seq, data = pad|
    req = Net::HTTP::Post.new("/broadcast")
    req.set_form_data(stream: "all", payload: JSON.generate(phase: phase, seq: seq, pad: data))
    code = http.request(req).code
    raise "POST /broadcast: #{code}" unless code == "201"
  end
  report = {adapter: ADAPTER, count: COUNT, outage_count: OUTAGE_COUNT, size: SIZE, hold_s: HOLD, threads: THREADS,
            env: ENV.select { |k, _| k.start_with?("ANYCABLE_", "MALLOC_") }}

  # Warm-up, so the control starts from a process that has served this kind of request.
  20.times { |i| broadcast.call("warmup", i) }
  wait_until("warm-up delivered", 30) { sub.count("warmup") == 20 }

  # 1. Control rounds: the pub/sub server up (Ruby's heap and malloc's arenas grow for
  # the first rounds, then settle: the outage is measured from there).
  report[:control] = Array.new(CONTROL_ROUNDS) { |i| "control#{i + 1}" }.map do |phase|
    before = mem(puma.pid)
    t = now
    COUNT.times { |i| broadcast.call(phase, i) }
    posted_s = now - t
    wait_until("#{phase} delivered", 60) { sub.count(phase) >= COUNT || sub.idle_for > 5 }
    after = mem(puma.pid)
    puts "#{phase} (#{ADAPTER} up): RSS #{before[:rss].round(1)} -> #{after[:rss].round(1)} MiB " \
         "(#{format("%+.1f", after[:rss] - before[:rss])}); delivered #{sub.uniq(phase)}/#{COUNT}; posted in #{posted_s.round(2)} s"
    {
      rss_before_mib: before[:rss].round(1), rss_after_mib: after[:rss].round(1),
      rss_delta_mib: (after[:rss] - before[:rss]).round(1), posted_in_s: posted_s.round(2),
      delivered: sub.uniq(phase)
    }
  end

  unless broker
    puts "SUMMARY #{JSON.generate(report)}"
    exit
  end

  # 2. Outage.
  marker = puma.log.size
  broker.stop
  wait_until("the app noticing the outage", 30) { puma.log[marker..].to_s =~ /#{ADAPTER} disconnected/i }
  sleep 0.5
  before = mem(puma.pid)
  t = now
  OUTAGE_COUNT.times { |i| broadcast.call("outage", i) }
  posted_s = now - t
  during = mem(puma.pid)
  sleep HOLD
  held = mem(puma.pid)
  puts "outage (#{ADAPTER} down): RSS #{before[:rss].round(1)} -> #{during[:rss].round(1)} MiB " \
       "(#{format("%+.1f", during[:rss] - before[:rss])}) after #{OUTAGE_COUNT} x #{SIZE} B posted in #{posted_s.round(2)} s; " \
       "#{held[:rss].round(1)} MiB after #{HOLD} s more"

  # 3. Back up.
  t = now
  broker.start
  wait_until("deliveries after the restart", 60) do
    sub.count("outage") >= OUTAGE_COUNT || (now - t > 3 && sub.idle_for > 5)
  end
  delivered_s = now - t
  after_restart = mem(puma.pid)
  # The drop count is reported at most once per 5 s, on the next publish: one small
  # broadcast after that flushes what is left.
  sleep 5.5
  broadcast.call("probe", 0, "")
  begin
    wait_until("probe delivered", 10) { sub.count("probe") == 1 }
  rescue RuntimeError => e
    warn e.message
  end
  sleep 0.3
  outage_log = puma.log[marker..].to_s
  drop_lines = outage_log.lines.grep(/broadcasts \(\d+ bytes\) dropped/).map(&:strip)
  dropped = drop_lines.sum { |l| l[/(\d+) broadcasts \(/, 1].to_i }
  got = sub.seqs("outage")
  report[:outage] = {
    rss_before_mib: before[:rss].round(1), rss_after_posts_mib: during[:rss].round(1),
    rss_delta_mib: (during[:rss] - before[:rss]).round(1),
    rss_after_hold_mib: held[:rss].round(1), rss_after_restart_mib: after_restart[:rss].round(1),
    peak_rss_mib: after_restart[:hwm].round(1), posted_in_s: posted_s.round(2),
    delivered: got.uniq.size, duplicates: got.size - got.uniq.size,
    delivered_seq_range: got.empty? ? nil : [got.min, got.max], in_order: got == got.sort,
    dropped_per_log: dropped, unaccounted: OUTAGE_COUNT - got.uniq.size - dropped,
    deliveries_settled_after_restart_s: delivered_s.round(1),
    drop_lines: drop_lines,
    other_log_lines: outage_log.lines.grep(/ERROR|WARN/).reject { |l| drop_lines.include?(l.strip) }
      .map(&:strip).uniq.first(8)
  }
  if ADAPTER == "redis"
    # What the restarted redis-server saw: PUBLISH calls, and how many clients are
    # subscribed now (a publish made while no one is subscribed reaches no one).
    info = redis_call(broker.port, "INFO", "commandstats")
    report[:outage][:redis_publish_calls_since_restart] = info[/cmdstat_publish:calls=(\d+)/, 1].to_i
    report[:outage][:redis_subscribe_calls_since_restart] = info[/cmdstat_subscribe:calls=(\d+)/, 1].to_i
    puts "redis-server since its restart: #{report[:outage][:redis_publish_calls_since_restart]} PUBLISH " \
         "(#{OUTAGE_COUNT - dropped} queued ones + 1 probe expected), " \
         "#{report[:outage][:redis_subscribe_calls_since_restart]} SUBSCRIBE"
  end
  report[:subscriber_open] = !sub.closed?
  report[:subscriber_close] = sub.close_event
  report[:rails_log_errors] = puma.rails_log.lines.grep(/Error|raised/).first(5).map(&:strip)
  o = report[:outage]
  puts "after restart: delivered #{o[:delivered]}/#{OUTAGE_COUNT} (seq #{o[:delivered_seq_range].inspect}), " \
       "dropped #{o[:dropped_per_log]} per the log, unaccounted #{o[:unaccounted]}; RSS #{o[:rss_after_restart_mib]} MiB, " \
       "peak #{o[:peak_rss_mib]} MiB"
  drop_lines.each { |l| puts "  #{l}" }
  puts "subscriber: #{sub.closed? ? "closed (#{sub.close_event})" : "still open"}"
  report[:outage][:other_log_lines].each { |l| puts "  #{l}" }
  puts "SUMMARY #{JSON.generate(report)}"
rescue StandardError
  warn "--- puma log (tail) ---\n#{puma.log[-4000..] || puma.log}"
  raise
ensure
  puma.stop
  puma.cleanup
  broker&.stop
end
