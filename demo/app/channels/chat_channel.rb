# frozen_string_literal: true

class ChatChannel < ApplicationCable::Channel
  def subscribed
    @room = params[:room].presence || "lobby"
    stream_from "chat:#{@room}"
    @said = 0
  end

  def speak(data)
    message = Message.create!(nickname: nickname, body: data["body"].to_s.strip)
    @said += 1
    ActionCable.server.broadcast "chat:#{@room}", message.as_cable_json.merge(said: @said)
  rescue ActiveRecord::RecordInvalid => e
    transmit({error: e.record.errors.full_messages.to_sentence})
  end
end
