# frozen_string_literal: true

require "fileutils"
require "tmpdir"
require "erb"

# A real pub/sub server (Debian's package) on a free loopback port.
class BrokerServer
  attr_reader :port

  def initialize
    @port = PumaServer.free_port
    @log = File.join(Dir.tmpdir, "anycable-rs-#{self.class.name.downcase}-#{@port}.log")
  end

  def start
    @pid = Process.spawn(*command, out: @log, err: @log)
    deadline = Time.now + 10
    until listening?
      raise "#{command.first} did not start:\n#{File.read(@log)}" if Time.now > deadline

      sleep 0.05
    end
    self
  end

  def listening?
    TCPSocket.new("127.0.0.1", port).close
    true
  rescue SystemCallError
    false
  end

  def stop
    return unless @pid

    Process.kill("TERM", @pid)
    Process.wait(@pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @pid = nil
  end
end

class NatsServer < BrokerServer
  def url
    "nats://127.0.0.1:#{port}"
  end

  def command
    ["nats-server", "-a", "127.0.0.1", "-p", port.to_s]
  end
end

# nats-server that requires a user and password (`url` carries them, percent-encoded as
# RFC 3986 has it: a space is %20).
class AuthNatsServer < NatsServer
  USER = "any@cable"
  PASSWORD = "p@ss w0rd:/%"

  def url
    "nats://#{ERB::Util.url_encode(USER)}:#{ERB::Util.url_encode(PASSWORD)}@127.0.0.1:#{port}"
  end

  def command
    super + ["--user", USER, "--pass", PASSWORD] + (@jetstream ? ["-js", "-sd", store_dir] : [])
  end

  def with_jetstream
    @jetstream = true
    self
  end

  def store_dir
    @store_dir ||= Dir.mktmpdir("anycable-rs-jetstream")
  end

  def cleanup
    FileUtils.rm_rf(@store_dir) if @store_dir
  end
end

# nats-server with JetStream (ANYCABLE_BROKER=nats); its store survives a restart.
class JetStreamServer < NatsServer
  def store_dir
    @store_dir ||= Dir.mktmpdir("anycable-rs-jetstream")
  end

  def command
    super + ["-js", "-sd", store_dir]
  end

  def cleanup
    FileUtils.rm_rf(@store_dir) if @store_dir
  end
end

class RedisServer < BrokerServer
  def url
    "redis://127.0.0.1:#{port}"
  end

  # No persistence: a restart starts empty, as the fault test wants.
  def command
    ["redis-server", "--bind", "127.0.0.1", "--port", port.to_s, "--save", "", "--appendonly", "no", "--dir", Dir.tmpdir]
  end
end
