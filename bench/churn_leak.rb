#!/usr/bin/env ruby
# frozen_string_literal: true

# Does churn leak? bench/app (cookie auth through Active Record) on anycable-rs, in Puma:
# for DURATION seconds, RATE connect + subscribe + disconnect cycles a second (signed-in
# clients, batches of RATE started each second, at most 20 at once), and every SAMPLE
# seconds the server's RSS and live Ruby heap slots after a full GC (bench/app's /heap).
# The first WARMUP seconds are warm-up; the report compares the rest.
#
#   ruby bench/churn_leak.rb [DURATION=600] [RATE=200] [SAMPLE=30] [WARMUP=60]
require "net/http"
require_relative "harness"

duration, rate, sample, warmup = ARGV.map { |a| Integer(a) }
duration ||= 600
rate ||= 200
sample ||= 30
warmup ||= 60
Harness.build_tools!

def heap(port)
  JSON.parse(Net::HTTP.get(URI("http://127.0.0.1:#{port}/heap")))
end

pid, port = Harness.start_puma("ANYCABLE_EMBEDDED" => "true", "BENCH_PROBE" => "1")
cookie = Harness.login_cookie(port)
tool = [File.join(Harness::BIN, "anycable-bench"), "churn", "--url", Harness.url(port),
  "--cycles", rate.to_s, "--concurrency", "20", "--hold", "0", "--cookie", cookie]
rows = [[0, 0, 0, heap(port)]]
cycles = failures = 0
start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
next_sample = sample
second = 0
while second < duration
  out = IO.popen(tool, err: [:child, :out], &:read)
  summary = JSON.parse(out.lines.grep(/^SUMMARY /).last.to_s.sub("SUMMARY ", "").then { |s| s.empty? ? "{}" : s })
  cycles += summary.fetch("cycles", 0)
  failures += summary.fetch("failures", rate)
  second += 1
  elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - start
  sleep(second - elapsed) if second > elapsed
  next unless second >= next_sample

  rows << [second, cycles, failures, heap(port)]
  warn "#{second}s: #{cycles} cycles, #{failures} failed, #{rows.last.last.to_json}"
  next_sample += sample
end
Harness.stop(pid)

puts "Machine: #{Harness.machine}"
puts "Command: `ruby bench/churn_leak.rb #{duration} #{rate} #{sample} #{warmup}`"
puts
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - start
puts format("%d cycles in %.0f s (%.0f/s), %d failed.", cycles, elapsed, cycles / elapsed, failures)
puts
puts "| s | cycles | failed | RSS (KiB) | live heap slots | sessions |"
puts "|---:|---:|---:|---:|---:|---:|"
rows.each do |s, c, f, h|
  puts "| #{s} | #{c} | #{f} | #{h["rss_kib"]} | #{h["heap_live_slots"]} | #{h["sessions"]} |"
end
after = rows.select { |s, *| s >= warmup }
if after.size >= 2
  first, last = after.first, after.last
  per = ->(key) { (last[3][key] - first[3][key]).to_f / [last[1] - first[1], 1].max }
  puts
  puts format("After warm-up (%d s → %d s, %d cycles): RSS %+d KiB (%+.4f KiB per cycle), " \
    "live heap slots %+d (%+.5f per cycle).", first[0], last[0], last[1] - first[1],
    last[3]["rss_kib"] - first[3]["rss_kib"], per.call("rss_kib"),
    last[3]["heap_live_slots"] - first[3]["heap_live_slots"], per.call("heap_live_slots"))
end
