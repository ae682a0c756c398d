# frozen_string_literal: true

# A real redis-server (Debian's package) on a free loopback port, no persistence.
class RedisServer
  attr_reader :port

  def initialize
    @port = PumaServer.free_port
    @log = File.join(Dir.tmpdir, "anycable-rs-redis-#{@port}.log")
  end

  def url
    "redis://127.0.0.1:#{port}"
  end

  def start
    @pid = Process.spawn("redis-server", "--bind", "127.0.0.1", "--port", port.to_s, "--save", "",
      "--appendonly", "no", "--dir", Dir.tmpdir, out: @log, err: @log)
    deadline = Time.now + 10
    until listening?
      raise "redis-server did not start:\n#{File.read(@log)}" if Time.now > deadline

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
