# frozen_string_literal: true

module ApplicationCable
  # Authenticated by the app's own signed cookie: the socket is served on the app's
  # origin, so the browser sends it.
  class Connection < ActionCable::Connection::Base
    identified_by :nickname

    def connect
      self.nickname = cookies.signed[:nickname].presence || reject_unauthorized_connection
    end
  end
end
