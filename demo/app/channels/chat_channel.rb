# frozen_string_literal: true

# The room: messages through Ruby (stored, then broadcast), who is typing as whispers
# (client to clients, served by the Rust server without Ruby), who is online as
# presence (each client asks to join; the channel joins it under its own nickname).
class ChatChannel < ApplicationCable::Channel
  def subscribed
    @room = params[:room].presence || "lobby"
    stream_from "chat:#{@room}", whisper: true, presence: :ask
    @said = 0
  end

  # Whatever id the page asked for, it is shown under the nickname its cookie holds.
  def presence_join_requested(_id, _info)
    join_presence(id: nickname, info: {name: nickname})
  end

  def speak(data)
    message = Message.create!(nickname: nickname, body: data["body"].to_s.strip)
    @said += 1
    ActionCable.server.broadcast "chat:#{@room}", message.as_cable_json.merge(said: @said)
    Activity.said(message)
  rescue ActiveRecord::RecordInvalid => e
    transmit({error: e.record.errors.full_messages.to_sentence})
  end
end
