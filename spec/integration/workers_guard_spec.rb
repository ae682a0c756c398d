# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Puma workers each serve their own sockets: with in-process broadcasting, or an HTTP
# broadcast that reaches one worker, the other workers' clients would miss broadcasts.
# Boot refuses such a setup, under `puma` and under `rails server` alike.
RSpec.describe "Puma workers and a broadcast adapter that cannot reach them all" do
  it "refuses the http adapter with workers under puma, naming the fix" do
    server = PumaServer.new(workers: 2, env: {"ANYCABLE_BROADCAST_ADAPTER" => "http"})
    expect { server.start }.to raise_error(/ANYCABLE_BROADCAST_ADAPTER is http: a broadcast POST reaches one worker.*=nats/)
  ensure
    server&.stop
    server&.cleanup
  end

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
      chdir: PumaServer::DUMMY, out: log, err: log, pgroup: true
    )
    [pid, port, log, dir]
  end

  def stop(pid)
    Process.kill("KILL", -pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  it "stops `rails server` with workers and the local adapter, saying why" do
    pid, _port, log, dir = rails_server({})
    status = Timeout.timeout(60) { Process.wait2(pid).last }
    out = File.read(log)
    expect(status).not_to be_success, out
    expect(out).to match(/Puma runs 2 workers.*ANYCABLE_BROADCAST_ADAPTER is local.*ANYCABLE_BROADCAST_ADAPTER=nats/)
  ensure
    stop(pid) if pid
    FileUtils.rm_rf(dir) if dir
  end

  it "lets `rails server` with workers run on a pub/sub adapter" do
    pid, port, log, dir = rails_server("ANYCABLE_BROADCAST_ADAPTER" => "redis", "ANYCABLE_REDIS_URL" => "redis://127.0.0.1:1")
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
    sleep 1 # both workers are up
    expect(Process.waitpid(pid, Process::WNOHANG)).to be_nil
    expect(File.read(log)).to include("Puma starting in cluster mode").and(include("Workers: 2"))
  ensure
    stop(pid) if pid
    FileUtils.rm_rf(dir) if dir
  end
end
