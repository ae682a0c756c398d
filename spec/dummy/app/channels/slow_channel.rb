# frozen_string_literal: true

# An action that blocks its Ruby thread (an HTTP call, a slow query), recording when it
# starts and ends, for the specs that check nothing else waits behind it.
class SlowChannel < ApplicationCable::Channel
  def subscribed
    stream_from "slow"
    # A slow unsubscribed callback, for the shutdown specs.
    @linger = params["linger"].to_f
  end

  def nap(data)
    Event.record("nap.start", data["tag"])
    sleep data.fetch("seconds", 1).to_f
    Event.record("nap.end", data["tag"])
    transmit({"napped" => data["tag"]})
  end

  def unsubscribed
    sleep @linger if @linger.positive?
    Event.record("slow.unsubscribed", current_user.name)
  end
end
