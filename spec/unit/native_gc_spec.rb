# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"

# The Rust↔Ruby seam under GC.stress (a collection at every allocation): every job
# kind is taken with next_job and every reader called while the GC runs as often as it
# can. A Ruby value that the seam keeps where the GC cannot see it (a Rust heap Vec,
# say) is freed here at once, and using it crashes the process or raises.
RSpec.describe "the Native seam under GC.stress" do
  let(:config) { AnyCableRs::Config.new(port: 0, ping_interval: 60) }
  let(:native) { AnyCableRs::Native.new(config.native_options.merge(origins: {any: true})) }
  let(:seen) { Hash.new(0) }
  let(:errors) { [] }

  def read_job(job)
    kind = job.kind
    seen[kind] += 1
    case kind
    when :connect
      values = [job.session_id, job.env_token, job.request_method, job.target, job.headers, job.remote_ip]
      raise "bad connect job #{values.inspect}" unless values[2] == "GET" && values[4].is_a?(Array)

      session = job.session
      session.identifiers = JSON.generate(user: "u#{session.id}")
      session.stream("gc_stream", '{"channel":"GcChannel"}')
      job.ok
    when :command
      values = [job.session_id, job.command, job.identifier, job.data]
      raise "bad command job #{values.inspect}" unless values[1].is_a?(Symbol) && values[2].is_a?(String)

      job.ok
    when :disconnect
      job.session_id
      job.ok
    when :callback
      raise "bad callback job" unless job.target_id == 7 && job.payload.start_with?("{")
    when :timer
      raise "bad timer job" unless job.target_id == 9
    when :release_env
      job.env_token
    end
  rescue => e
    errors << "#{e.class}: #{e.message}"
    job.fail(e.message) rescue nil # rubocop:disable Style/RescueModifier
  end

  it "takes and answers every job kind while the GC runs at every allocation" do
    port = native.start("127.0.0.1", 0)
    native.subscribe_callback("gc_callback", 7)
    native.add_timer(9, 0.02)
    stop = false
    worker = Thread.new do
      until stop
        job = native.next_job(20)
        next unless job

        # Stressed while this thread holds the GVL only: GC.stress is process-wide,
        # and the clients in this process would crawl under it. Minor collections at
        # every allocation (flag 1: no major GC; ~1 ms each instead of ~45 ms) free
        # exactly what matters here: young objects that nothing visible holds.
        GC.stress = 1
        read_job(job)
        GC.stress = false
      end
    ensure
      GC.stress = false
    end

    5.times do |i|
      c = WsClient.new("ws://127.0.0.1:#{port}/cable")
      expect(c.welcome!["type"]).to eq("welcome")
      id = c.subscribe(channel: "GcChannel", n: i)
      c.perform(id, "echo", text: "x" * 100)
      native.broadcast("gc_stream", JSON.generate(n: i), nil)
      native.broadcast("gc_callback", JSON.generate(n: i), nil)
      expect(c.receive(timeout: 10)).to include("message" => {"n" => i})
      c.close
    end
    deadline = Time.now + 20
    sleep 0.05 until (seen[:disconnect] >= 5 && seen[:timer].positive?) || Time.now > deadline
    stop = true
    worker.join(10)
    native.shutdown(1.0)
    worker = nil

    expect(errors).to eq([])
    expect(seen).to include(:connect, :command, :disconnect, :callback, :timer)
    expect(seen[:connect]).to eq(5)
    expect(seen[:command]).to eq(10)
    expect(seen[:disconnect]).to eq(5)
  ensure
    stop = true
    if worker
      worker.join(10)
      native.shutdown(0.1)
    end
  end

  it "refuses a handoff of anything but a connected TCP socket's IO" do
    request = {method: "GET", target: "/cable", headers: [], tls: false, env_token: 0}
    native.start("127.0.0.1", nil)
    expect { native.handoff(1, request) }.to raise_error(TypeError, /hijacked IO/)
    File.open(__FILE__) do |file|
      expect { native.handoff(file, request) }.to raise_error(ArgumentError, /not a connected TCP socket/)
    end
    native.shutdown(0.1)
  end
end
