# frozen_string_literal: true

# AnyCable's presence on an app's channel: `stream_from …, presence: :clients` names
# the set clients join themselves (`channel.presence` in @anycable/web);
# `presence: true` (the `app_only` param) a set only the channel joins them to;
# `presence: :ask` (the `ask` param) a set clients ask to join, the channel deciding
# as whom (presence_join_requested); join_presence/leave_presence do it from Ruby.
class LobbyChannel < ApplicationCable::Channel
  def subscribed
    joins = if params[:app_only] then true
    elsif params[:ask] then :ask
    else :clients
    end
    stream_from "lobby:#{params[:room]}", presence: joins
    join_presence(id: current_user.name, info: {name: current_user.name}) if params[:auto_join]
  end

  # Whatever id a client asks for, it joins as its user, with the one info field
  # the app takes from it; mallory is not let in.
  def presence_join_requested(_id, info)
    return if current_user.name == "mallory"

    status = info["status"].to_s[0, 20] if info.is_a?(Hash)
    join_presence(id: current_user.name, info: {name: current_user.name, status: status})
  end

  def go_away
    leave_presence
  end
end
