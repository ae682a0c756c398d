# frozen_string_literal: true

require "spec_helper"

# Action Cable builds a debug line for every transmit and an info line for every
# action. anycable-rs skips building lines the logger would drop; what the app sees
# (actions, rescue_from, instrumentation events) and what gets logged must not change.
RSpec.describe "Action dispatch at each log level (real Puma)", type: :cable do
  def notification_counts
    JSON.parse(puma.http(:get, "/notifications").body)
  end

  def run_actions
    c = connected
    id = subscribed(c, channel: "ActionsChannel")
    before = notification_counts
    c.perform(id, "with_data", {"value" => 42})
    expect(message_for(c, id)).to eq("got" => 42)
    c.perform(id, "without_data")
    expect(message_for(c, id)).to eq("no_args" => true)
    c.perform(id, "handled")
    expect(message_for(c, id)).to eq("rescued" => "handled here")
    after = notification_counts
    delta = ->(name) { after.fetch(name, 0) - before.fetch(name, 0) }
    expect(delta.call("perform_action.action_cable")).to eq(3)
    expect(delta.call("transmit.action_cable")).to eq(3)
  end

  context "at :info (Rails' production default)" do
    with_puma(env: {"DUMMY_LOG_LEVEL" => "info"})

    it "runs actions, rescue_from and instrumentation as Action Cable does, logging the info lines only" do
      run_actions
      # The action lines are info up to 7.0, debug since 7.1.
      info = !action_cable_at_least?("7.1")
      expect(log_lines("ActionsChannel#with_data({\"value\"=>42})").any?).to eq(info)
      expect(log_lines("ActionsChannel#without_data").any?).to eq(info)
      expect(log_lines("ActionsChannel transmitting")).to be_empty
    end
  end

  context "at :debug" do
    with_puma(env: {"DUMMY_LOG_LEVEL" => "debug"})

    it "logs Action Cable's debug transmit lines too" do
      run_actions
      expect(log_lines("ActionsChannel#with_data({\"value\"=>42})")).not_to be_empty
      expect(log_lines("ActionsChannel transmitting {\"got\"=>42}")).not_to be_empty
      expect(log_lines("ActionsChannel transmitting {\"rescued\"=>\"handled here\"}")).not_to be_empty
    end
  end

  context "at :warn" do
    with_puma(env: {"DUMMY_LOG_LEVEL" => "warn"})

    it "still runs every action and fires every event, with no action lines logged" do
      run_actions
      expect(log_lines("ActionsChannel#with_data")).to be_empty
    end
  end
end
