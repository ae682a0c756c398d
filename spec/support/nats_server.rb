# frozen_string_literal: true

# A real nats-server (Debian's package) on a free loopback port.
class NatsServer
  attr_reader :port

  def initialize
    @port = PumaServer.free_port
    @log = File.join(Dir.tmpdir, "anycable-rs-nats-#{@port}.log")
  end

  def url
    "nats://127.0.0.1:#{port}"
  end

  def start
    @pid = Process.spawn("nats-server", "-a", "127.0.0.1", "-p", port.to_s, out: @log, err: @log)
    deadline = Time.now + 10
    until listening?
      raise "nats-server did not start:\n#{File.read(@log)}" if Time.now > deadline

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
