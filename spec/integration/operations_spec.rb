# frozen_string_literal: true

require "spec_helper"

# What operators watch and bound (issue "Operations on Fly"): Prometheus metrics in
# AnyCable's names, connection limits and age, and skipping disconnect callbacks.
RSpec.describe "Operations (real Puma)", type: :cable do
  def metrics(port)
    text = Net::HTTP.get_response(URI("http://127.0.0.1:#{port}/metrics")).tap { |r| expect(r.code).to eq("200") }.body
    types, samples = PrometheusText.parse(text)
    [types, samples.to_h { |s| [[s.name, s.labels.reject { |k, _| k == "region" }], s] }]
  end

  def value(samples, name, labels = {})
    sample = samples[[name, labels]] or raise "no #{name}#{labels} in the metrics"
    expect(sample.labels["region"]).to eq("test")
    sample.value
  end

  describe "metrics at ANYCABLE_METRICS_HTTP, on the own port and Puma's" do
    own_port = PumaServer.free_port
    with_puma(env: {"ANYCABLE_PORT" => own_port.to_s, "ANYCABLE_METRICS_HTTP" => "/metrics",
                    "ANYCABLE_METRICS_TAGS" => "region:test", "ANYCABLE_METRICS_ON_PUMA_PORT" => "true"})

    it "counts clients, messages, broadcasts, failed auths and Ruby jobs as they happened" do
      puma.http(:get, "/stats") # the server runs before the first scrape
      _, before = metrics(own_port)
      counter = ->(samples, name, labels = {}) { samples[[name, labels]]&.value || 0.0 }
      clients = [connected(name: "alice"), connected(name: "alice"), connected(name: "bob", port: own_port)]
      ids = clients.map { |c| subscribed(c, channel: "EchoChannel") }
      clients.zip(ids).each do |c, id|
        2.times do |n|
          c.perform(id, "echo", "n" => n)
          expect(message_for(c, id)).to include("n" => n)
        end
      end
      clients.first.send_raw("{not json")
      rejected = client(name: nil)
      expect(rejected.receive).to include("type" => "disconnect", "reason" => "unauthorized")
      expect(puma.http(:post, "/broadcast", stream: "all", payload: '{"to":"all"}').code).to eq("201")
      clients.zip(ids).each { |c, id| expect(message_for(c, id)).to eq("to" => "all") }

      types, after = metrics(own_port)
      delta = ->(name, labels = {}) { value(after, name, labels) - counter.call(before, name, labels) }
      expect(types).to include("anycable_go_clients_num" => "gauge", "anycable_go_client_msg_total" => "counter",
        "anycable_rs_jobs_total" => "counter")
      expect(value(after, "anycable_go_clients_num")).to eq(3)
      expect(value(after, "anycable_go_clients_uniq_num")).to eq(2)
      expect(value(after, "anycable_go_broadcast_streams_num")).to be >= 1
      expect(delta.call("anycable_go_client_msg_total")).to eq(9) # 3 subscribes, 6 echoes
      expect(delta.call("anycable_go_failed_client_msg_total")).to eq(1)
      expect(delta.call("anycable_go_failed_auths_total")).to eq(1)
      expect(delta.call("anycable_go_publications_total")).to eq(1)
      expect(delta.call("anycable_go_broadcast_msg_total")).to eq(1)
      expect(delta.call("anycable_go_data_rcvd_total")).to be > 0
      expect(delta.call("anycable_go_data_sent_total")).to be > 0
      expect(delta.call("anycable_rs_jobs_total", "kind" => "command")).to eq(9)
      expect(delta.call("anycable_rs_jobs_total", "kind" => "connect")).to eq(4)
      expect(delta.call("anycable_rs_job_seconds_total", "kind" => "command")).to be > 0
      expect(value(after, "anycable_rs_ruby_threads")).to eq(4)
      expect(value(after, "anycable_go_rpc_pending_num")).to eq(0)
      # The same process's numbers on Puma's port.
      _, via_puma = metrics(puma.port)
      expect(value(via_puma, "anycable_go_clients_num")).to eq(3)
    end
  end

  describe "ANYCABLE_MAX_CONN" do
    own_port = PumaServer.free_port
    with_puma(env: {"ANYCABLE_MAX_CONN" => "2", "ANYCABLE_PORT" => own_port.to_s})

    it "refuses connections over the limit before the upgrade (503), on either port, and takes them again below it" do
      first = connected(name: "alice")
      connected(name: "bob", port: own_port)
      [puma.port, own_port].each do |port|
        over = client(name: "carol", port: port)
        expect(over.open?).to be(false)
        expect(over.error).to match(/503/)
      end
      expect(puma.log).to match(/refused a WebSocket connection: 2 are open, ANYCABLE_MAX_CONN is 2/)
      first.close
      wait_for { JSON.parse(puma.http(:get, "/stats").body)["sessions"] == 1 }
      expect(connected(name: "carol")).to be_a(WsClient)
    end
  end

  describe "ANYCABLE_MAX_CONN_AGE" do
    with_puma(env: {"ANYCABLE_MAX_CONN_AGE" => "1"})

    it "tells a connection older than that to reconnect (server_restart), with its callbacks run" do
      puma.http(:delete, "/events")
      c = connected(name: "dora")
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      subscribed(c, channel: "EchoChannel")
      expect(c.receive(timeout: 5)).to eq("type" => "disconnect", "reason" => "server_restart", "reconnect" => true)
      # 1 s plus up to 10 % jitter; the upper bound leaves room for a loaded machine.
      expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be_between(0.8, 3.0)
      expect(c.receive).to eq(:closed)
      wait_for { events.include?(["disconnect", "dora"]) }
      expect(connected(name: "dora")).to be_a(WsClient)
    end
  end

  describe "ANYCABLE_DISABLE_DISCONNECT" do
    with_puma(env: {"ANYCABLE_DISABLE_DISCONNECT" => "true"})

    it "runs no unsubscribed and no disconnect callback, and still lets the connection go" do
      puma.http(:delete, "/events")
      c = connected(name: "erin")
      subscribed(c, channel: "StateChannel", room: "x")
      c.close
      wait_for { JSON.parse(puma.http(:get, "/stats").body)["sessions"].zero? }
      sleep 0.3
      expect(events.map(&:first)).to eq(%w[connect subscribed])
    end
  end
end
