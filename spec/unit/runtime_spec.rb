# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"

RSpec.describe AnyCableRs::Runtime do
  subject(:runtime) { described_class.new(AnyCableRs::Config.new) }

  it "hands each stashed env out once" do
    token = runtime.stash_env({"a" => 1})
    expect(runtime.take_env(token)).to eq("a" => 1)
    expect(runtime.take_env(token)).to be_nil
    expect(runtime.take_env(0)).to be_nil
  end

  it "drops envs whose socket never reached connect" do
    stub_const("AnyCableRs::Runtime::ENV_TTL", 0.05)
    stale = runtime.stash_env({"stale" => true})
    sleep 0.1
    fresh = runtime.stash_env({"fresh" => true})
    expect(runtime.stashed_env_count).to eq(1)
    expect(runtime.take_env(stale)).to be_nil
    expect(runtime.take_env(fresh)).to eq("fresh" => true)
  end

  it "starts no thread until start!" do
    before = Thread.list.size
    runtime
    expect(Thread.list.size).to eq(before)
    expect(runtime.started?).to be(false)
  end
end
