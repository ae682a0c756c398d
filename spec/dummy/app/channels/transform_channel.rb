# frozen_string_literal: true

# stream_from with a block and with a coder: messages pass through Ruby first.
class TransformChannel < ApplicationCable::Channel
  def subscribed
    stream_from "shout" do |message|
      transmit({ shouted: message.upcase })
    end
    stream_from "decoded", coder: ActiveSupport::JSON do |message|
      transmit({ decoded_class: message.class.name, text: message["text"] })
    end
  end
end
