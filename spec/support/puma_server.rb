# frozen_string_literal: true

require "net/http"
require "socket"
require "tmpdir"
require "fileutils"
require "set"

# Runs the dummy Rails app in a real Puma process with the given env, on a free port.
class PumaServer
  DUMMY = File.expand_path("../dummy", __dir__)

  attr_reader :port, :log_path, :rails_log_path, :env, :pid

  # A port nothing listens on, never one handed out before in this process: the kernel
  # can give the same ephemeral port to two binds in a row once the first is closed
  # (two embedded nats-servers were once given one route port).
  def self.free_port
    PORTS_LOCK.synchronize do
      loop do
        server = TCPServer.new("127.0.0.1", 0)
        port = server.addr[1]
        server.close
        return port if HANDED_OUT.add?(port)
      end
    end
  end
  HANDED_OUT = Set.new
  PORTS_LOCK = Mutex.new

  def initialize(env: {}, threads: 4, workers: 0, preload: false)
    @port = self.class.free_port
    @dir = Dir.mktmpdir("anycable-rs-puma")
    @log_path = File.join(@dir, "puma.log")
    @rails_log_path = File.join(@dir, "rails.log")
    @env = {
      "RAILS_ENV" => "test",
      "ANYCABLE_EMBEDDED" => "true",
      "DUMMY_DATABASE" => File.join(@dir, "test.sqlite3"),
      "DUMMY_LOG" => @rails_log_path,
      "RAILS_MAX_THREADS" => threads.to_s
    }.merge(env)
    @threads = threads
    @workers = workers
    @preload = preload
  end

  def start
    args = ["puma", "-b", "tcp://127.0.0.1:#{port}", "-t", "#{@threads}:#{@threads}", "-e", "test"]
    args += ["-w", @workers.to_s] if @workers.positive?
    args << "--preload" if @preload
    args << "config.ru"
    # One open file for both streams: two would overwrite each other's lines.
    @pid = Process.spawn(@env, *args, chdir: DUMMY, out: log_path, err: [:child, :out], pgroup: true)
    wait_until_up
    self
  end

  def stop(signal = "TERM")
    return unless @pid

    Process.kill(signal, -@pid)
    Timeout.timeout(20) { Process.wait(@pid) }
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  rescue Timeout::Error
    Process.kill("KILL", -@pid)
    Process.wait(@pid)
  ensure
    @pid = nil
  end

  def alive?
    return false unless @pid

    Process.waitpid(@pid, Process::WNOHANG).nil?
  end

  def cleanup
    FileUtils.rm_rf(@dir)
  end

  def url(path = "/cable")
    "ws://127.0.0.1:#{port}#{path}"
  end

  def http(method, path, params = {}, headers = {})
    uri = URI("http://127.0.0.1:#{port}#{path}")
    Net::HTTP.start(uri.host, uri.port, read_timeout: 10) do |h|
      req = Net::HTTP.const_get(method.to_s.capitalize).new(uri)
      headers.each { |k, v| req[k] = v }
      req.set_form_data(params) unless params.empty?
      h.request(req)
    end
  end

  def log
    File.exist?(log_path) ? File.read(log_path) : ""
  end

  def rails_log
    File.exist?(rails_log_path) ? File.read(rails_log_path) : ""
  end

  private

  def wait_until_up
    deadline = Time.now + 60
    until Time.now > deadline
      raise "puma exited:\n#{log}" unless alive?

      begin
        return if http(:get, "/stats").code == "200"
      rescue SystemCallError, Net::ReadTimeout, EOFError
        nil
      end
      sleep 0.1
    end
    raise "puma did not come up in 60s:\n#{log}"
  end
end
