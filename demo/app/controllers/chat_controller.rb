# frozen_string_literal: true

class ChatController < ActionController::Base
  def show
    @nickname = cookies.signed[:nickname]
    @messages = Message.order(:id).last(50)
  end

  def nickname
    name = params[:nickname].to_s.strip.first(30)
    if name.present?
      cookies.signed[:nickname] = {value: name, httponly: true}
      Activity.add("#{name} joined")
    end
    redirect_to root_path
  end
end
