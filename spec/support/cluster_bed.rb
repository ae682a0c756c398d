# frozen_string_literal: true

require "fileutils"
require "json"
require "net/http"
require "securerandom"
require "shellwords"
require "timeout"

# The cluster test bed (issue #22): N "machines" as Linux network namespaces on one
# bridge, each with its own private address, running the dummy app in Puma with the
# embedded server and its own embedded nats-server, clustered with the others by
# address (as on Fly's private network), ANYCABLE_BROKER=nats.
#
# Nothing is added to the machine's own network namespace: the bridge lives in a
# namespace of its own ("hub"), and the tests run in another ("client", address
# 10.254.0.2), from where they reach node I at 10.254.0.(10 + I). Each node's Puma
# listens on port 3000 and its nats-server on 127.0.0.1:4222 inside its namespace, its
# routes on 10.254.0.(10 + I):5222.
#
#   spec/cluster/bed run 3 -- bundle exec rspec spec/cluster   # up, run in "client", down
#
# Inside, ClusterBed.current (state in $ANYCABLE_BED) starts, stops, kills, cuts and
# heals nodes; `spec/cluster/bed start 2` etc. do the same from Node tests.
class ClusterBed
  DUMMY = File.expand_path("../dummy", __dir__)
  SUBNET = "10.254.0"
  CLIENT_ADDRESS = "#{SUBNET}.2"
  PUMA_PORT = 3000
  ROUTE_PORT = 5222

  attr_reader :dir, :prefix, :nodes

  # Creates the namespaces and links; state in dir (a fresh directory).
  def self.up(nodes:, dir:)
    FileUtils.mkdir_p(dir)
    prefix = "acrs#{SecureRandom.hex(2)}"
    File.write(File.join(dir, "state.json"),
      JSON.generate(prefix: prefix, nodes: nodes, secret: SecureRandom.hex(32)))
    bed = new(dir)
    bed.send(:create_network)
    bed
  rescue
    bed&.down
    raise
  end

  def self.current
    dir = ENV["ANYCABLE_BED"].to_s
    raise "no cluster test bed: run these through spec/cluster/bed run N -- COMMAND" if dir.empty?

    @current ||= new(dir)
  end

  def initialize(dir)
    @dir = dir
    state = JSON.parse(File.read(File.join(dir, "state.json")))
    @prefix = state.fetch("prefix")
    @nodes = state.fetch("nodes")
    @secret = state.fetch("secret")
  end

  def namespace(name)
    "#{prefix}-#{name}"
  end

  def node_namespace(i)
    namespace("n#{i}")
  end

  def address(i)
    "#{SUBNET}.#{10 + i}"
  end

  def url(i, path = "/cable")
    "ws://#{address(i)}:#{PUMA_PORT}#{path}"
  end

  def node_dir(i)
    File.join(dir, "n#{i}")
  end

  def log(i)
    path = File.join(node_dir(i), "puma.log")
    File.exist?(path) ? File.read(path) : ""
  end

  # The app on node i, as a deploy starts it (Puma, ANYCABLE_EMBEDDED=true, the
  # embedded nats-server clustered with every other node's). Returns once /stats
  # answers. Logs append to node_dir(i)/puma.log across restarts.
  def start(i, env: {}, timeout: 60)
    FileUtils.mkdir_p(node_dir(i))
    routes = (1..nodes).reject { |j| j == i }.map { |j| "nats://#{address(j)}:#{ROUTE_PORT}" }
    node_env = {
      "RAILS_ENV" => "test",
      "ANYCABLE_EMBEDDED" => "true",
      "ANYCABLE_SECRET" => @secret,
      "ANYCABLE_EMBED_NATS" => "true",
      "ANYCABLE_ENATS_CLUSTER" => "nats://#{address(i)}:#{ROUTE_PORT}",
      "ANYCABLE_ENATS_CLUSTER_ROUTES" => routes.join(","),
      "ANYCABLE_ENATS_STORE_DIR" => File.join(node_dir(i), "jetstream"),
      "ANYCABLE_BROKER" => "nats",
      "DUMMY_DATABASE" => File.join(dir, "shared.sqlite3"),
      "DUMMY_LOG" => File.join(node_dir(i), "rails.log"),
      "RAILS_MAX_THREADS" => "4",
      "ANYCABLE_LOG_LEVEL" => ENV.fetch("ANYCABLE_BED_LOG_LEVEL", "info")
    }.merge(env)
    # A machine of its own: its host name (JetStream names servers by it), its /tmp
    # (the gem's machine-local files: the embedded NATS lock, keys).
    tmp = File.join(node_dir(i), "tmp")
    FileUtils.mkdir_p(tmp)
    node_env["TMPDIR"] = tmp
    args = ["ip", "netns", "exec", node_namespace(i), "unshare", "--uts",
      "sh", "-c", 'hostname "$0" && exec "$@"', "node#{i}",
      "puma", "-b", "tcp://0.0.0.0:#{PUMA_PORT}", "-t", "4:4", "-e", "test", "config.ru"]
    log_file = File.open(File.join(node_dir(i), "puma.log"), "a")
    log_file.puts("==== bed: start node #{i} #{Time.now.utc}")
    log_file.flush
    pid = Process.spawn(node_env, *args, chdir: DUMMY, out: log_file, err: log_file, pgroup: true, in: File::NULL)
    log_file.close
    Process.detach(pid)
    File.write(File.join(node_dir(i), "puma.pid"), pid.to_s)
    wait_until_up(i, pid, timeout)
    pid
  end

  # SIGTERM to node i's Puma, as a deploy stops a machine; waits for every process
  # in its namespace to be gone.
  def stop(i, signal: "TERM", timeout: 30)
    pid = puma_pid(i)
    begin
      Process.kill(signal, pid) if pid
    rescue Errno::ESRCH
      nil
    end
    deadline = monotonic + timeout
    sleep 0.1 while namespace_pids(i).any? && monotonic < deadline
    return if namespace_pids(i).empty?

    raise "node #{i}: processes left #{timeout} s after SIG#{signal}: #{namespace_pids(i).join(" ")}"
  end

  # The machine is lost: every process in its namespace killed at once.
  def kill(i)
    pids = namespace_pids(i)
    pids.each do |pid|
      Process.kill("KILL", pid)
    rescue Errno::ESRCH
      nil
    end
    deadline = monotonic + 10
    sleep 0.05 while namespace_pids(i).any? && monotonic < deadline
  end

  # Whether node i's Puma answers.
  def serving?(i)
    http(i, :get, "/stats").code == "200"
  rescue SystemCallError, Net::OpenTimeout, Net::ReadTimeout, EOFError
    false
  end

  # An HTTP request made on node i itself (to its Puma on loopback, as a job or a
  # console there would): the response code.
  def http_inside(i, method, path, params = {})
    script = <<~RUBY
      require "json"
      require "net/http"
      uri = URI(ARGV[0])
      req = Net::HTTP.const_get(ARGV[1]).new(uri)
      params = JSON.parse(ARGV[2])
      req.set_form_data(params) unless params.empty?
      print Net::HTTP.start(uri.host, uri.port, read_timeout: 20) { |h| h.request(req) }.code
    RUBY
    IO.popen(["ip", "netns", "exec", node_namespace(i), "ruby", "-e", script, "--",
      "http://127.0.0.1:#{PUMA_PORT}#{path}", method.to_s.capitalize, JSON.generate(params)], &:read).strip
  end

  # Node i cut off the network (its link to the bridge down) and back.
  def cut(i)
    sh("ip", "-n", namespace("hub"), "link", "set", "h#{i}", "down")
  end

  def heal(i)
    sh("ip", "-n", namespace("hub"), "link", "set", "h#{i}", "up")
  end

  def namespace_pids(i)
    out = IO.popen(["ip", "netns", "pids", node_namespace(i)], err: File::NULL, &:read)
    out.split.map(&:to_i)
  end

  def http(i, method, path, params = {})
    uri = URI("http://#{address(i)}:#{PUMA_PORT}#{path}")
    Net::HTTP.start(uri.host, uri.port, open_timeout: 3, read_timeout: 10) do |h|
      req = Net::HTTP.const_get(method.to_s.capitalize).new(uri)
      req.set_form_data(params) unless params.empty?
      h.request(req)
    end
  end

  # Every node's processes killed, the namespaces deleted.
  def down
    (1..nodes).each { |i| kill(i) }
    (["client", "hub"] + (1..nodes).map { |i| "n#{i}" }).each do |name|
      system("ip", "netns", "delete", namespace(name), err: File::NULL)
    end
  end

  # Runs command in the client namespace with ANYCABLE_BED set; returns its status.
  def run_in_client(command)
    pid = Process.spawn({"ANYCABLE_BED" => dir}, "ip", "netns", "exec", namespace("client"), *command)
    Process.wait(pid)
    $?
  end

  private

  def create_network
    hub = namespace("hub")
    sh("ip", "netns", "add", hub)
    sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", hub, "link", "set", "br0", "up")
    sh("ip", "-n", hub, "link", "set", "lo", "up")
    attach("client", "hc", CLIENT_ADDRESS)
    (1..nodes).each { |i| attach("n#{i}", "h#{i}", address(i)) }
  end

  # A namespace whose eth0 is one end of a veth pair, the other end (hub_end) on the
  # bridge.
  def attach(name, hub_end, addr)
    ns = namespace(name)
    hub = namespace("hub")
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", hub, "link", "add", hub_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", hub, "link", "set", hub_end, "master", "br0")
    sh("ip", "-n", hub, "link", "set", hub_end, "up")
    sh("ip", "-n", ns, "addr", "add", "#{addr}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
  end

  def puma_pid(i)
    path = File.join(node_dir(i), "puma.pid")
    File.exist?(path) ? File.read(path).to_i : nil
  end

  def wait_until_up(i, pid, timeout)
    deadline = monotonic + timeout
    while monotonic < deadline
      raise "node #{i}: puma exited:\n#{log(i)[-4000..] || log(i)}" unless alive?(pid)

      return if serving?(i)

      sleep 0.1
    end
    raise "node #{i}: puma did not come up in #{timeout} s:\n#{log(i)[-4000..] || log(i)}"
  end

  def alive?(pid)
    Process.kill(0, pid)
    true
  rescue Errno::ESRCH
    false
  end

  def sh(*command)
    system(*command, exception: true)
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
