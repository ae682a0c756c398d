# frozen_string_literal: true

# AnyCable's presence on an app's channel: `stream_from …, presence: :clients` names
# the set clients join themselves (`channel.presence` in @anycable/web);
# `presence: true` (the `app_only` param) a set only the channel joins them to;
# join_presence/leave_presence do it from Ruby.
class LobbyChannel < ApplicationCable::Channel
  def subscribed
    stream_from "lobby:#{params[:room]}", presence: params[:app_only] ? true : :clients
    join_presence(id: current_user.name, info: {name: current_user.name}) if params[:auto_join]
  end

  def go_away
    leave_presence
  end
end
