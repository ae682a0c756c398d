# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"

RSpec.describe AnyCableRs::WorkersRelay do
  around do |example|
    Dir.mktmpdir("relay-spec") do |tmp|
      @tmp = tmp
      example.run
    end
  end

  it "makes the relay directory private, and refuses one that others could write to" do
    path = File.join(@tmp, "mine")
    AnyCableRs::PrivateDir.ensure!(path, "test")
    expect(File.stat(path).mode & 0o777).to eq(0o700)
    open = File.join(@tmp, "open")
    Dir.mkdir(open, 0o777)
    File.chmod(0o777, open)
    expect { AnyCableRs::PrivateDir.ensure!(open, "test") }.to raise_error(AnyCableRs::Error, /must be a directory owned by uid .* with mode 0700/)
    link = File.join(@tmp, "link")
    File.symlink(path, link)
    expect { AnyCableRs::PrivateDir.ensure!(link, "test") }.to raise_error(AnyCableRs::Error, /must be a directory/)
  end

  it "removes the directories of Puma masters that no longer run" do
    gone = File.join(@tmp, "puma-999999999")
    live = File.join(@tmp, "puma-#{Process.pid}")
    [gone, live].each { |d| Dir.mkdir(d, 0o700) }
    File.write(File.join(gone, "123.sock"), "")
    described_class.remove_stale(@tmp)
    expect([File.exist?(gone), File.exist?(live)]).to eq([false, true])
  end

  it "is needed only for the in-process adapters with several Puma workers" do
    config = AnyCableRs::Config.new(broadcast_adapter: "local")
    allow(described_class).to receive(:puma_workers).and_return(2)
    expect(described_class.needed?(config)).to be(true)
    expect(described_class.needed?(AnyCableRs::Config.new(broadcast_adapter: "http"))).to be(true)
    expect(described_class.needed?(AnyCableRs::Config.new(broadcast_adapter: "nats"))).to be(false)
    allow(described_class).to receive(:puma_workers).and_return(0)
    expect(described_class.needed?(config)).to be(false)
  end
end
