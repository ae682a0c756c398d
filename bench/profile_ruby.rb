#!/usr/bin/env ruby
# frozen_string_literal: true

# The Ruby work of one echo, one connect and one disconnect on the embedded server, with
# no transport: bench/app's BenchmarkChannel driven through AnyCableRs::Dispatcher on this
# thread, its socket a stand-in that drops what it is sent. Prints the best CPU time
# (µs, this thread) and the objects allocated per call, stage by stage: the floor under
# anything that runs the app's Action Cable code in Ruby. Last, whether connect / echo /
# disconnect cycles leave Ruby objects behind (live heap slots and their memory, after
# full GCs).
#
#   ruby bench/profile_ruby.rb              # at :info, like the comparison
#   LOG_LEVEL=debug ruby bench/profile_ruby.rb
require "rack"
require "objspace"

ENV["RAILS_ENV"] = "production"
ENV["ANYCABLE_EMBEDDED"] = "true"
Dir.chdir(File.join(__dir__, "app"))
Rack::Builder.parse_file("config.ru")
Rails.logger.level = ENV.fetch("LOG_LEVEL", "info").to_sym

# Stands in for AnyCableRs::Native::Session.
class NullSession
  attr_reader :id, :sent

  def initialize(id)
    @id = id
    @sent = 0
  end

  def sid = "s#{id}"
  def transmit(_frame) = @sent += 1
  def closed? = false
  def close(*) = nil
  def close_quietly = nil
  def stream(*) = nil
  def unstream(*) = nil
  def identifiers=(_json); end
  def add_subscription(*) = nil
  def remove_subscription(*) = nil
  def pin_subscription(*) = nil
  def set_state(*) = nil
  def presence_to(*) = nil
  def whisper_to(*) = nil
end

# Stands for AnyCableRs::Native::Job: the same readers, each answering its field (plain
# methods, as the native job's are: no method_missing in the measured path).
class FakeJob
  def initialize(kind, **fields)
    @kind = kind
    fields.each { |name, value| define_singleton_method(name) { value } }
  end

  attr_reader :kind

  def ok = nil
  def reject(*) = nil
  def fail(*) = nil
end

def connect_job(session, headers)
  FakeJob.new(:connect, session_id: session.id, session: session, env_token: 0, request_method: "GET",
    target: "/cable", headers: headers, remote_ip: "127.0.0.1", identifiers: nil, restored: nil)
end

def command_job(id, command, identifier, data = nil)
  FakeJob.new(:command, session_id: id, command: command, identifier: identifier, data: data)
end

def cpu = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)

# Best of `rounds` (µs per call), and objects allocated per call.
def measure(label, n: 2000, rounds: 10, &block)
  n.times(&block) # warm
  a0 = GC.stat(:total_allocated_objects)
  n.times(&block)
  allocs = (GC.stat(:total_allocated_objects) - a0).fdiv(n)
  best = Array.new(rounds) do
    t = cpu
    n.times(&block)
    (cpu - t) / n * 1e6
  end.min
  puts format("  %-58s %7.1f µs %7.1f objects", label, best, allocs)
end

AnyCableRs.runtime.start!
d = AnyCableRs.runtime.dispatcher
# A signed-in user's cookies, as bench/app's connection class requires (/login sets them).
login = Rack::MockRequest.new(Rails.application).get("/login?name=profile")
cookie = Array(login.headers["Set-Cookie"]).flat_map { |c| c.split("\n") }.map { |c| c.split(";").first }.join("; ")
headers = [["origin", "http://localhost"], ["sec-websocket-protocol", "actioncable-v1-json"], ["cookie", cookie]]
ident = '{"channel":"BenchmarkChannel"}'
data = JSON.generate("action" => "echo", "payload" => "x" * 200)
ids = (1..).each
connect = lambda do
  id = ids.next
  d.dispatch(connect_job(NullSession.new(id), headers))
  d.dispatch(command_job(id, :subscribe, ident))
  id
end
sid = connect.call
session = d.instance_variable_get(:@sessions).fetch(sid)
conn = session.connection
channel = conn.subscriptions.send(:subscriptions).fetch(ident)
decoded = AnyCableRs::ActionCable::Coder.decode(data)

puts "Ruby #{RUBY_VERSION}, Rails #{Rails.version}, log level #{Rails.logger.level} (#{ENV.fetch("LOG_LEVEL", "info")})"
puts "echo (one `perform \"echo\"` command):"
measure("whole command: Dispatcher#dispatch") { d.dispatch(command_job(sid, :message, ident, data)) }
measure("  Rails executor wrap, empty") { Rails.application.executor.wrap {} }
measure("  Action Cable Worker#work, empty (callbacks + executor)") { d.send(:worker).work(conn) {} }
measure("  JSON decode of the data") { AnyCableRs::ActionCable::Coder.decode(data) }
measure("  Channel#perform_action (instrument, dispatch, transmit)") { channel.perform_action(decoded) }
measure("    Channel#transmit (encode, socket)") { channel.send(:transmit, decoded) }
puts "connect + subscribe, then disconnect:"
open = []
measure("connect + subscribe", n: 500, rounds: 5) { open << connect.call }
measure("disconnect (unsubscribe, close)", n: 500, rounds: 5) { d.dispatch(FakeJob.new(:disconnect, session_id: open.pop)) }

cycle = lambda do
  id = connect.call
  d.dispatch(command_job(id, :message, ident, data))
  d.dispatch(FakeJob.new(:disconnect, session_id: id))
end
live = lambda do
  2.times { GC.start }
  [GC.stat(:heap_live_slots), ObjectSpace.memsize_of_all]
end
2000.times { cycle.call }
slots0, bytes0 = live.call
10_000.times { cycle.call }
slots1, bytes1 = live.call
puts "churn: 10k connect/echo/disconnect cycles after 2k to warm up:"
puts format("  live heap slots %d -> %d (%+.4f per cycle), their memory %+.1f bytes per cycle; %d sessions left",
  slots0, slots1, (slots1 - slots0) / 10_000.0, (bytes1 - bytes0) / 10_000.0, d.session_count - 1)
