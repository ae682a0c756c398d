# frozen_string_literal: true

# A room whose clients may whisper (typing indicators) without Ruby on each whisper.
class WhisperChannel < ApplicationCable::Channel
  def subscribed
    stream_from "whisper:#{params[:room]}", whisper: params[:room] != "quiet"
  end

  def hush
    stop_all_streams
    transmit({"hushed" => true})
  end
end
