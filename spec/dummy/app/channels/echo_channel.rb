# frozen_string_literal: true

# The benchmark shape: a plain stream, an echo and a broadcast action. With the
# `farewell` param, its unsubscribed broadcasts one last message (as apps announce a
# user who left), which needs the broker while the server shuts down.
class EchoChannel < ApplicationCable::Channel
  def subscribed
    stream_from "all"
  end

  def unsubscribed
    ActionCable.server.broadcast "all", {"farewell" => current_user&.name} if params[:farewell]
  end

  def echo(data)
    transmit data
  end

  def broadcast(data)
    ActionCable.server.broadcast "all", data
    transmit data
  end
end
