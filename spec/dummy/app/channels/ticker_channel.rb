# frozen_string_literal: true

class TickerChannel < ApplicationCable::Channel
  periodically every: 0.2 do
    @ticks = (@ticks || 0) + 1
    transmit({ tick: @ticks })
  end
end
