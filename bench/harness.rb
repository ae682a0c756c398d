# frozen_string_literal: true

# What the bench scripts share: free ports, starting servers, running the load tool.
require "json"
require "socket"
require "fileutils"
require "tmpdir"
require "etc"

module Harness
  ROOT = File.expand_path("..", __dir__)
  BIN = File.join(ROOT, "target/release")

  module_function

  # The load tool and the ceilings: bench/ is a cargo workspace of its own (the gem's
  # workspace does not include it); its binaries go to the repository's target/release.
  def build_tools!
    return if ENV["SKIP_BUILD"] == "1" # tools already built (target/release)

    system("cargo", "build", "--release", "-q", "--manifest-path", File.join(ROOT, "bench/Cargo.toml"),
      "--target-dir", File.join(ROOT, "target"), chdir: ROOT, exception: true)
  end

  def build!
    build_tools!
    return if ENV["SKIP_BUILD"] == "1"

    system("rake", "compile", chdir: ROOT, out: File::NULL, exception: true)
  end

  def free_port
    s = TCPServer.new("127.0.0.1", 0)
    s.addr[1]
  ensure
    s&.close
  end

  def port_open?(port)
    TCPSocket.new("127.0.0.1", port).close
    true
  rescue SystemCallError
    false
  end

  def wait_for_port(port, timeout = 60)
    deadline = Time.now + timeout
    sleep 0.2 until port_open?(port) || Time.now > deadline
  end

  # Puma with bench/app; env decides anycable-rs (ANYCABLE_EMBEDDED=true) or Action Cable.
  def start_puma(env)
    port = free_port
    log = File.open("/tmp/anycable-bench-puma-#{port}.log", "w")
    pid = Process.spawn({"RAILS_MAX_THREADS" => "5"}.merge(env),
      "puma", "-b", "tcp://127.0.0.1:#{port}?low_latency=true", "-t", "5:5", "-e", "production", "config.ru",
      chdir: File.join(__dir__, "app"), out: log, err: log, pgroup: true)
    wait_for_port(port)
    [pid, port]
  end

  def spawn_server(*cmd)
    port = free_port
    log = File.open("/tmp/anycable-bench-#{File.basename(cmd.first)}-#{port}.log", "w")
    pid = Process.spawn(*cmd.map { |c| c.gsub("PORT", port.to_s) }, out: log, err: log, pgroup: true)
    wait_for_port(port)
    [pid, port]
  end

  def stop(pid)
    Process.kill("TERM", -pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    # bench/app's database (bench/app/database.yml: one per server process).
    FileUtils.rm_f(Dir[File.join(Dir.tmpdir, "anycable-bench-#{pid}.sqlite3*")])
  end

  # Runs the load tool; returns [command line for the report, parsed SUMMARY].
  def bench(mode, args, urls, pid: nil)
    cmd = [File.join(BIN, "anycable-bench"), mode, "--url", urls.join(","), *args]
    cmd += ["--pid", pid.to_s] if pid && %w[connect churn].include?(mode)
    out = IO.popen(cmd, err: [:child, :out], &:read)
    summary = out.lines.grep(/^SUMMARY /).last
    shown = cmd.map { |c| c.sub("#{ROOT}/", "") }.join(" ")
      .gsub(%r{ws://127\.0\.0\.1:\d+}, "ws://127.0.0.1:PORT").sub(/--pid \d+/, "--pid SERVER_PID")
    [shown, summary ? JSON.parse(summary.sub("SUMMARY ", "")) : {"error" => out[-500..] || out}]
  end

  # CPU time (seconds) of each of `pid`'s threads so far, summed by thread name with
  # numbers dropped ("anycable-rs-3" and "anycable-rs-0" count as "anycable-rs-N").
  def thread_cpu(pid)
    Dir["/proc/#{pid}/task/*/stat"].each_with_object(Hash.new(0.0)) do |stat, out|
      text = File.read(stat)
      name = text[/\((.*)\)/m, 1].gsub(/\d+/, "N")
      fields = text.split(") ").last.split
      out[name] += (fields[11].to_i + fields[12].to_i) / 100.0
    end
  rescue Errno::ENOENT, Errno::ESRCH
    {}
  end

  def url(port)
    "ws://127.0.0.1:#{port}/cable"
  end

  # The Cookie header of a user signed in to bench/app (`/login` sets the encrypted
  # user_id cookie its connection class reads, and a cookie-store session).
  def login_cookie(port, name = "bench")
    require "net/http"
    res = Net::HTTP.get_response(URI("http://127.0.0.1:#{port}/login?name=#{name}"))
    res.get_fields("set-cookie").to_a.map { |c| c.split(";").first }.join("; ")
  end

  def machine
    cpu = File.read("/proc/cpuinfo")[/model name\s*:\s*(.*)/, 1]
    mem = (File.read("/proc/meminfo")[/MemTotal:\s+(\d+)/, 1].to_i / 1024 / 1024.0).round
    commit = `git -C #{ROOT} rev-parse --short HEAD 2>/dev/null`.strip
    dirty = `git -C #{ROOT} status --porcelain --untracked-files=no 2>/dev/null`.strip.empty? ? "" : "+changes"
    "#{Etc.nprocessors} cores (#{cpu}), #{mem} GiB; #{RUBY_DESCRIPTION}; #{`puma --version`.strip}; " \
      "#{`rustc --version`.strip}; anycable-rs #{commit}#{dirty}"
  end
end
