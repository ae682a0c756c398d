# frozen_string_literal: true

require "spec_helper"
require "open3"

# `anycable-rs` (exe/): the app's channels served without Puma.
RSpec.describe "The standalone server (exe/anycable-rs)", type: :cable do
  before(:all) do
    @dir = Dir.mktmpdir("anycable-rs-standalone")
    @port = PumaServer.free_port
    @env = {
      "RAILS_ENV" => "test", "ANYCABLE_PORT" => @port.to_s,
      "DUMMY_DATABASE" => File.join(@dir, "db.sqlite3"), "DUMMY_LOG" => File.join(@dir, "rails.log")
    }
    lib = File.expand_path("../../lib", __dir__)
    out, status = Open3.capture2e(@env, "ruby", "-I", lib, "-e",
      'require "./config/environment"; User.create!(name: "solo")', chdir: PumaServer::DUMMY)
    raise out unless status.success?

    @log = File.join(@dir, "out.log")
    @pid = Process.spawn(@env, "ruby", "-I", lib, File.expand_path("../../exe/anycable-rs", __dir__),
      chdir: PumaServer::DUMMY, out: @log, err: @log)
    deadline = Time.now + 30
    sleep 0.1 until File.read(@log).include?("listening on") || Time.now > deadline
  end

  after(:all) do
    Process.kill("KILL", @pid) rescue nil # rubocop:disable Style/RescueModifier
    FileUtils.rm_rf(@dir)
  end

  it "serves the app's channels, then tells clients server_restart and exits on TERM" do
    expect(File.read(@log)).to include("listening on 127.0.0.1:#{@port}")
    expect(Net::HTTP.get_response(URI("http://127.0.0.1:#{@port}/health")).code).to eq("200")
    c = WsClient.new("ws://127.0.0.1:#{@port}/cable?user=solo", headers: {"Origin" => "http://allowed.test"})
    (@clients = []) << c
    c.welcome!
    id = c.subscribe(channel: "StateChannel", room: "solo")
    expect(c.receive["type"]).to eq("confirm_subscription")
    c.perform(id, "increment")
    expect(c.receive["message"]).to include("count" => 1, "room" => "solo")

    Process.kill("TERM", @pid)
    expect(c.receive).to eq("type" => "disconnect", "reason" => "server_restart", "reconnect" => true)
    _, status = Process.wait2(@pid)
    expect(status.exitstatus).to eq(0)
  end
end
