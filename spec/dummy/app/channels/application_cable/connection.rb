# frozen_string_literal: true

module ApplicationCable
  class Connection < ActionCable::Connection::Base
    identified_by :current_user, :tab
    # AnyCable JWTs under plain Action Cable too (with the toggle on, the server
    # verifies tokens before connect runs).
    include AnyCableRs::JWT::Identification

    rescue_from ArgumentError do |e|
      Event.record("connection.rescue_from", e.message)
    end

    def connect
      raise "connect exploded" if request.params[:explode]
      return identify_from_anycable_jwt! if anycable_jwt_present?

      self.current_user = User.find_by(id: cookies.signed[:user_id]) ||
        User.find_by(name: request.params[:user]) ||
        reject_unauthorized_connection
      self.tab = request.params[:tab] || "main"
      @request_facts = {
        "secret" => cookies.encrypted[:secret],
        "plain" => cookies[:plain],
        "session_user" => request.session[:user_name],
        "header" => request.headers["X-Custom"],
        "remote_ip" => request.remote_ip,
        "param" => request.params[:tab]
      }
      Event.record("connect", current_user.name)
    end

    def disconnect
      Event.record("disconnect", current_user&.name)
    end

    attr_reader :request_facts
  end
end
