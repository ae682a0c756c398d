# frozen_string_literal: true

class PickyChannel < ApplicationCable::Channel
  def subscribed
    reject unless params[:ok]
  end
end
