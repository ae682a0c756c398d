# frozen_string_literal: true

require "spec_helper"

RSpec.describe "Without ANYCABLE_EMBEDDED (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_EMBEDDED" => nil})

  it "leaves the app on plain Action Cable" do
    c = connected(name: "alice")
    id = subscribed(c, channel: "StateChannel", room: "plain")
    c.perform(id, "increment")
    expect(message_for(c, id)).to include("count" => 1)
    stats = JSON.parse(puma.http(:get, "/stats").body)
    expect(stats["sessions"]).to eq(0)
    expect(puma.rails_log).not_to include("anycable-rs: serving")
  end
end
