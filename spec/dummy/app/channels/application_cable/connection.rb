# frozen_string_literal: true

module ApplicationCable
  class Connection < ActionCable::Connection::Base
    identified_by :current_user, :tab
    # Kept with a restorable session (AnyCable's cstate).
    state_attr_accessor :locale
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
      # As an app whose own token expires: a restore past it gets token_expired.
      AnyCableRs.restorable_until(self, Integer(request.params[:valid_until])) if request.params[:valid_until]
      self.locale = request.params[:locale] || "en"
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

    # The same reads after connect, from a channel action: anycable-rs rebuilds the
    # request, cookies and session from the connection's env snapshot. "middleware" is
    # what a middleware put in the env (config/application.rb), which only a retained
    # env still has.
    def request_facts_now
      {
        "secret" => cookies.encrypted[:secret],
        "signed_user_id" => cookies.signed[:user_id],
        "plain" => cookies[:plain],
        "session_user" => request.session[:user_name],
        "header" => request.headers["X-Custom"],
        "env_header" => env["HTTP_X_CUSTOM"],
        "remote_ip" => request.remote_ip,
        "param" => request.params[:tab],
        "path" => "#{env["SCRIPT_NAME"]}#{env["PATH_INFO"]}",
        "original_fullpath" => request.original_fullpath,
        "middleware" => env["dummy.middleware"]
      }
    end

    # Whether the connection holds a request (or a Rack env rebuilt) between calls.
    def request_held?
      !@request.nil? || !@anycable_rs_env.nil? || !@anycable_rs_request.nil?
    end
  end
end
