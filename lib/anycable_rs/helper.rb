# frozen_string_literal: true

module AnyCableRs
  # View helpers for JWT identification, as anycable-rails names them: a page carries
  # the token, and @anycable/web (or a cable URL with ?jid=) hands it to the server.
  module Helper
    # <meta name="cable-token" content="<token>"> (@anycable/web reads it).
    def anycable_token_meta_tag(**identifiers)
      tag.meta(name: "cable-token", content: AnyCableRs::JWT.encode(identifiers))
    end

    # <meta name="action-cable-url" content="<cable url>?jid=<token>"> (Action Cable's
    # and @anycable/web's clients read it).
    def action_cable_with_jwt_meta_tag(**identifiers)
      config = ::ActionCable.server.config
      base = config.url || config.mount_path
      token = AnyCableRs::JWT.encode(identifiers)
      tag.meta(name: "action-cable-url",
        content: "#{base}#{base.to_s.include?("?") ? "&" : "?"}#{AnyCableRs.config.jwt_param}=#{token}")
    end
  end
end
