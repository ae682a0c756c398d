#!/usr/bin/env ruby
# frozen_string_literal: true

# Where the memory of an idle subscribed connection goes: bench/app (cookie auth through
# Active Record) in Puma, N clients connected and subscribed with a signed-in user's
# cookies, live Ruby objects by class (after a full GC) and RSS before and while they
# are held, per connection; for anycable-rs and for Action Cable.
#
#   ruby bench/memory_breakdown.rb [CLIENTS] [TOP]
require "net/http"
require_relative "harness"

clients = Integer(ARGV[0] || 2000)
top = Integer(ARGV[1] || 25)
Harness.build_tools!

def objects(port)
  JSON.parse(Net::HTTP.get(URI("http://127.0.0.1:#{port}/objects")))
end

# rows: [label, objects per connection, bytes per connection]; the top ones by bytes.
def table(what, rows, top)
  puts
  puts "| #{what} | objects per conn | bytes per conn |"
  puts "|---|---:|---:|"
  rows.sort_by { |r| -r[2] }.first(top).each do |label, count, size|
    puts format("| %s | %.2f | %.0f |", label, count, size)
  end
end

SERVERS = {
  "anycable-rs" => {"ANYCABLE_EMBEDDED" => "true"},
  "Action Cable" => {"ANYCABLE_EMBEDDED" => nil}
}.freeze
extra = ENV.select { |k, _| k.start_with?("ANYCABLE_") && k != "ANYCABLE_EMBEDDED" }

puts "Machine: #{Harness.machine}"
puts "Command: `ruby bench/memory_breakdown.rb #{clients} #{top}`#{extra.empty? ? "" : " with #{extra.map { |k, v| "#{k}=#{v}" }.join(" ")}"}"
SERVERS.each do |name, env|
  next if ENV["ONLY"] && ENV["ONLY"] != name

  pid, port = Harness.start_puma(env.merge("BENCH_PROBE" => "1", "BENCH_TRACE" => "1"))
  cookie = Harness.login_cookie(port)
  Harness.bench("connect", %w[--clients 20 --hold 0 --cookie] + [cookie], [Harness.url(port)]) # warm-up
  before = objects(port)
  cmd = [File.join(Harness::BIN, "anycable-bench"), "connect", "--url", Harness.url(port),
    "--clients", clients.to_s, "--concurrency", "100", "--hold", "600", "--cookie", cookie]
  io = IO.popen(cmd, err: [:child, :out])
  line = nil
  while (line = io.gets)
    break if line.start_with?("connected+subscribed")
  end
  sleep 2
  after = objects(port)
  Process.kill("TERM", io.pid)
  io.close
  Harness.stop(pid)

  rss = (after["rss_kib"] - before["rss_kib"]).to_f / clients
  slots = (after["heap_live_slots"] - before["heap_live_slots"]).to_f / clients
  # Left out: the probe's own (the allocation tracer's table, an Object whose size grows
  # with every traced object; the strings /objects builds in config.ru).
  rows = after["classes"].filter_map do |klass, (count, size)|
    b_count, b_size = before["classes"].fetch(klass, [0, 0])
    next if klass == "Object" && count == b_count

    [klass, (count - b_count).to_f / clients, (size - b_size).to_f / clients]
  end
  probe = after["sites"].sum do |site, (_count, size)|
    site.include?(" config.ru:") ? size - before["sites"].fetch(site, [0, 0])[1] : 0
  end
  ruby_bytes = rows.sum { |r| r[2] } - probe.to_f / clients
  puts
  puts "## #{name}: #{line&.strip}"
  puts
  puts format("RSS per connection %.1f KiB; live Ruby slots per connection %.1f (%.1f KiB as 40-byte slots); " \
    "ObjectSpace.memsize_of per connection %.1f KiB (slots included; the probe's own left out)", rss, slots, slots * 40 / 1024, ruby_bytes / 1024)
  table("class", rows, top)
  sites = after["sites"].filter_map do |site, (count, size)|
    next if site.include?(" config.ru:")

    b_count, b_size = before["sites"].fetch(site, [0, 0])
    [site, (count - b_count).to_f / clients, (size - b_size).to_f / clients]
  end
  puts
  puts "Where they were allocated (live objects only, the top #{top} by bytes):"
  table("class and allocation site", sites, top)
end
