# frozen_string_literal: true

# stream_for / broadcast_to with an ActiveRecord record.
class ScopedChannel < ApplicationCable::Channel
  def subscribed
    stream_for current_user
  end
end
