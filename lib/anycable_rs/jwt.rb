# frozen_string_literal: true

require "openssl"
require "json"
require "base64"

module AnyCableRs
  # AnyCable's JWT identification, Ruby side: tokens made as AnyCable's Ruby library
  # makes them (HS256, header exactly {"alg":"HS256"}, claims {"ext": <identifiers
  # JSON>, "exp": …}), and the connection built from a verified token's identifiers
  # (the Rust server verified it; the app's `connect` does not run).
  #
  #   token = AnyCableRs::JWT.encode({current_user: user}, expires_at: 1.hour.from_now)
  #   # client: new WebSocket(`wss://host/cable?jid=${token}`), or @anycable/web's auth: {token}
  module JWT
    module_function

    def encode(identifiers, expires_at: nil, ttl: AnyCableRs.config.jwt_ttl, secret: AnyCableRs.config.effective_jwt_secret)
      raise ArgumentError, "anycable-rs: set ANYCABLE_JWT_SECRET (or ANYCABLE_SECRET) to make tokens" if secret.to_s.empty?

      claims = {ext: JSON.generate(identifiers.to_h { |k, v| [k.to_s, serialize(v)] })}
      exp = expires_at ? expires_at.to_i : (ttl.to_i.positive? ? Time.now.to_i + ttl.to_i : nil)
      claims[:exp] = exp if exp
      signing_input = "#{b64(JSON.generate(alg: "HS256"))}.#{b64(JSON.generate(claims))}"
      "#{signing_input}.#{b64(OpenSSL::HMAC.digest("SHA256", secret.to_s, signing_input))}"
    end

    # A model by its GlobalID param (as AnyCable serializes identifiers), else the value.
    def serialize(value)
      value.respond_to?(:to_gid_param) ? value.to_gid_param : value
    end

    # Sets the connection's `identified_by` values from a token's identifiers JSON,
    # GlobalID params located as records (as anycable-rails does on first use).
    def identify!(connection, identifiers_json)
      names = connection.class.identifiers.map(&:to_s)
      JSON.parse(identifiers_json).each do |name, value|
        next unless names.include?(name)

        connection.public_send(:"#{name}=", locate(value))
      end
    end

    def locate(value)
      return value unless value.is_a?(String) && defined?(::GlobalID::Locator)

      ::GlobalID::Locator.locate(value) || value
    end

    def b64(bytes)
      Base64.urlsafe_encode64(bytes, padding: false)
    end
  end
end
