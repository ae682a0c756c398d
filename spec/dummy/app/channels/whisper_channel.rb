# frozen_string_literal: true

# A room whose clients may whisper (typing indicators) without Ruby on each whisper.
class WhisperChannel < ApplicationCable::Channel
  def subscribed
    stream_from "whisper:#{params[:room]}", whisper: params[:room] != "quiet"
  end

  # AnyCable's to_others: everyone in the room but the sender.
  def shout(data)
    ActionCable.server.broadcast("whisper:#{params[:room]}", {"shout" => data["text"]}, to_others: true)
  end

  def hush
    stop_all_streams
    transmit({"hushed" => true})
  end
end
