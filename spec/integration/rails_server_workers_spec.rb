# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# `rails server` with Puma workers: the app boots in the master before Puma reads its
# config, so the server must start in each worker as it is forked (never in the
# master), and broadcasts must reach every worker's clients whatever the adapter.
RSpec.describe "`rails server` with Puma workers", type: :cable do
  # `rails server`: the app boots before Puma reads its config (workers from
  # WEB_CONCURRENCY here, as in Rails' generated config/puma.rb).
  def rails_server(env)
    dir = Dir.mktmpdir("anycable-rs-rails-s")
    port = PumaServer.free_port
    log = File.join(dir, "out.log")
    script = 'APP_PATH = File.expand_path("config/application", Dir.pwd); require "rails/commands"'
    pid = Process.spawn(
      {"RAILS_ENV" => "test", "ANYCABLE_EMBEDDED" => "true", "WEB_CONCURRENCY" => "2",
       "DUMMY_DATABASE" => File.join(dir, "db.sqlite3"), "DUMMY_LOG" => File.join(dir, "rails.log")}.merge(env),
      "ruby", "-e", script, "--", "server", "-p", port.to_s, "-b", "127.0.0.1", "-e", "test",
      "-P", File.join(dir, "server.pid"),
      chdir: PumaServer::DUMMY, out: log, err: [:child, :out], pgroup: true
    )
    [pid, port, log, dir]
  end

  def stop(pid)
    Process.kill("KILL", -pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  def wait_for_http(port, log)
    deadline = Time.now + 60
    code = nil
    until code == "200" || Time.now > deadline
      begin
        code = Net::HTTP.get_response(URI("http://127.0.0.1:#{port}/stats")).code
      rescue SystemCallError, EOFError
        sleep 0.2
      end
    end
    expect(code).to eq("200"), File.read(log)
  end

  # cable_helpers' client and /stats helpers, pointed at this server.
  def puma
    @rails_s
  end

  it "relays local broadcasts among the workers, and listens on the own port in the workers only" do
    own_port = PumaServer.free_port
    pid, port, log, dir = rails_server("ANYCABLE_PORT" => own_port.to_s)
    wait_for_http(port, log)
    @rails_s = Struct.new(:port) do
      def http(method, path, params = {})
        uri = URI("http://127.0.0.1:#{port}#{path}")
        Net::HTTP.start(uri.host, uri.port, read_timeout: 10) do |h|
          req = Net::HTTP.const_get(method.to_s.capitalize).new(uri)
          req.set_form_data(params) unless params.empty?
          h.request(req)
        end
      end
    end.new(port)
    relay = File.join(Dir.tmpdir, "anycable-rs-#{Process.uid}", "puma-#{pid}")
    wait_for(timeout: 30) { Dir[File.join(relay, "*.sock")].size == 2 }
    expect(File.read(log)).to include("Puma starting in cluster mode").and(include("Workers: 2"))
    clients = Array.new(10) { |i| connected(name: "r#{i}", port: i.even? ? port : own_port) }
    ids = clients.map { |c| subscribed(c, channel: "EchoChannel") }
    expect(sessions_per_worker.values).to all(be_positive)
    4.times do |i|
      expect(puma.http(:post, "/broadcast", stream: "all", payload: %({"n":#{i}})).code).to eq("201")
      clients.zip(ids).each { |c, id| expect(message_for(c, id)).to eq("n" => i) }
    end
    expect(clients.map { |c| c.silent_for?(0.2) }).to all(be(true))
    master_threads = Dir["/proc/#{pid}/task/*/comm"].map { |f| File.read(f).strip }
    expect(master_threads.grep(/anycable-rs/)).to be_empty
  ensure
    stop(pid) if pid
    FileUtils.rm_rf(dir) if dir
  end

  it "lets `rails server` with workers run on a pub/sub adapter, and says where long polling will not work" do
    pid, port, log, dir = rails_server("ANYCABLE_BROADCAST_ADAPTER" => "redis", "ANYCABLE_REDIS_URL" => "redis://127.0.0.1:1",
      "ANYCABLE_POLL" => "true")
    wait_for_http(port, log)
    sleep 1 # both workers are up
    expect(Process.waitpid(pid, Process::WNOHANG)).to be_nil
    expect(File.read(log)).to include("Puma starting in cluster mode").and(include("Workers: 2"))
    rails_log = File.read(File.join(dir, "rails.log"))
    expect(rails_log).to include("long polling (ANYCABLE_POLL) with 2 Puma workers")
  ensure
    stop(pid) if pid
    FileUtils.rm_rf(dir) if dir
  end
end
