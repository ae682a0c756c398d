# frozen_string_literal: true

# Raises where app code can raise.
class FaultyChannel < ApplicationCable::Channel
  def subscribed
    stream_from "faulty"
    raise "subscribed exploded" if params[:explode]
  end

  def boom
    raise "action exploded"
  end

  def rescued
    raise ArgumentError, "handled by rescue_from"
  end

  def ping
    transmit({ pong: true })
  end
end
