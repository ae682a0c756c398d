# frozen_string_literal: true

# AnyCable's state_attr_accessor: what a restored session's channel gets back.
class RoomChannel < ApplicationCable::Channel
  state_attr_accessor :room, :owner, :tags

  def subscribed
    self.room = params[:room]
    self.owner = current_user
    self.tags = {"kind" => :chat, "ids" => [1, 2]}
    @plain = "set in subscribed"
    stream_from "room_#{room}"
  end

  def show
    transmit({"room" => room, "owner" => owner.is_a?(User) ? owner.name : owner.inspect, "tags" => tags,
              "plain" => @plain, "locale" => connection.locale})
  end

  def move(data)
    self.room = data["room"]
    transmit({"room" => room})
  end

  # A value that cannot be kept is an error at the write, not a silent loss.
  def keep_object
    self.tags = Object.new
  end
end
