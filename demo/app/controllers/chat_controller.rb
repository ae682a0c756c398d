# frozen_string_literal: true

class ChatController < ActionController::Base
  # A script file, not a JSONP endpoint: nothing secret is in it.
  skip_forgery_protection only: :client
  def show
    @nickname = cookies.signed[:nickname]
    @messages = Message.order(:id).last(50)
  end

  def nickname
    name = params[:nickname].to_s.strip.first(30)
    cookies.signed[:nickname] = {value: name, httponly: true} if name.present?
    redirect_to root_path
  end

  # The official client, from the @rails/actioncable npm package.
  def client
    path = Rails.root.join("node_modules/@rails/actioncable/app/assets/javascripts/actioncable.js")
    send_file path, type: "text/javascript", disposition: "inline"
  end
end
