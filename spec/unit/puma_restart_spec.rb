# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"
require "anycable_rs/railtie"

# Issue #21: Puma's USR2 handler wrote to its server's wake-up pipe from the trap,
# which could hang the hot restart for good on Ruby 3.3/3.4. The gem moves the
# handler onto a thread of its own; the handler itself is Puma's, unchanged.
RSpec.describe AnyCableRs::PumaRestart do
  around do |example|
    previous = Signal.trap("USR2", "DEFAULT")
    example.run
  ensure
    Signal.trap("USR2", previous || "DEFAULT")
  end

  it "runs a Proc handler on a thread of its own, once, however often it is moved" do
    ran = Queue.new
    Signal.trap("USR2") { |signo| ran << [Thread.current, signo] }
    2.times { described_class.off_the_trap("SIGUSR2") }
    Process.kill("USR2", Process.pid)
    thread, signo = Timeout.timeout(5) { ran.pop }
    expect(thread).not_to eq(Thread.main)
    expect(signo).to eq(Signal.list["USR2"])
    sleep 0.2
    expect(ran).to be_empty
  end

  it "leaves a handler that is not a Proc as it was" do
    Signal.trap("USR2", "IGNORE")
    described_class.off_the_trap("SIGUSR2")
    expect(Signal.trap("USR2", "DEFAULT")).to eq("IGNORE")
  end
end
