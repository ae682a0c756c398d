# frozen_string_literal: true

# Actions with and without a data argument, and one whose error a rescue_from handles:
# the dispatch paths anycable-rs takes when the logger drops Action Cable's lines.
class ActionsChannel < ApplicationCable::Channel
  rescue_from(ArgumentError) { |e| transmit({"rescued" => e.message}) }

  def with_data(data)
    transmit({"got" => data["value"]})
  end

  def without_data
    transmit({"no_args" => true})
  end

  def handled
    raise ArgumentError, "handled here"
  end
end
