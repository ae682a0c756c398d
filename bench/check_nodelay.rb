#!/usr/bin/env ruby
# frozen_string_literal: true

# Is TCP_NODELAY on for the sockets Puma accepts, with and without `?low_latency=true`
# on the bind URL? (The comparison binds with it; Action Cable's sockets and the ones
# anycable-rs takes over are those sockets.)
#
#   ruby bench/check_nodelay.rb
require "net/http"
require_relative "harness"

["?low_latency=true", ""].each do |query|
  port = Harness.free_port
  pid = Process.spawn("puma", "-b", "tcp://127.0.0.1:#{port}#{query}", "-t", "1:1", "config.ru",
    chdir: File.join(__dir__, "nodelay"), out: File::NULL, err: File::NULL, pgroup: true)
  Harness.wait_for_port(port)
  value = Net::HTTP.get(URI("http://127.0.0.1:#{port}/"))
  puts "puma -b tcp://127.0.0.1:PORT#{query}: TCP_NODELAY=#{value}"
ensure
  Harness.stop(pid) if pid
end
