# frozen_string_literal: true

# AnyCable's presence on an app's channel: `stream_from …, presence: true` names the
# set clients join (`channel.presence` in @anycable/web); join_presence/leave_presence
# do it from Ruby.
class LobbyChannel < ApplicationCable::Channel
  def subscribed
    stream_from "lobby:#{params[:room]}", presence: true
    join_presence(id: current_user.name, info: {name: current_user.name}) if params[:auto_join]
  end

  def go_away
    leave_presence
  end
end
