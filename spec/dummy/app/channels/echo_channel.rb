# frozen_string_literal: true

# The benchmark shape: a plain stream, an echo and a broadcast action.
class EchoChannel < ApplicationCable::Channel
  def subscribed
    stream_from "all"
  end

  def echo(data)
    transmit data
  end

  def broadcast(data)
    ActionCable.server.broadcast "all", data
    transmit data
  end
end
