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

    class Expired < StandardError; end
    class Invalid < StandardError; end

    ALGORITHMS = {"HS256" => "SHA256", "HS384" => "SHA384", "HS512" => "SHA512"}.freeze

    # The identifiers JSON (`ext`) of a valid token; raises Expired or Invalid. The
    # same rules as the Rust server's (HS256/384/512, exp and nbf, ext a string).
    def decode(token, secret: AnyCableRs.config.effective_jwt_secret)
      decode_with_expiry(token, secret: secret).first
    end

    # [identifiers JSON, exp (unix seconds) or nil] of a valid token.
    def decode_with_expiry(token, secret: AnyCableRs.config.effective_jwt_secret)
      raise Invalid, "no secret" if secret.to_s.empty?

      head, body, signature = token.to_s.split(".", -1)
      raise Invalid, "malformed" unless head && body && signature && token.count(".") == 2

      header = JSON.parse(unb64(head))
      digest = ALGORITHMS[header["alg"]] or raise Invalid, "algorithm #{header["alg"].inspect}"
      expected = b64(OpenSSL::HMAC.digest(digest, secret.to_s, "#{head}.#{body}"))
      unless expected.bytesize == signature.bytesize && OpenSSL.fixed_length_secure_compare(expected, signature)
        raise Invalid, "signature"
      end

      claims = JSON.parse(unb64(body))
      raise Invalid, "claims are not an object" unless claims.is_a?(Hash)

      now = Time.now.to_f
      # NumericDates: a number, or the claim is refused (a string exp would never expire).
      %w[exp nbf].each do |name|
        raise Invalid, "#{name} is not a number" if claims.key?(name) && !claims[name].is_a?(Numeric)
      end
      raise Expired, "expired" if claims.key?("exp") && now >= claims["exp"]
      raise Invalid, "not yet valid" if claims.key?("nbf") && now < claims["nbf"]
      raise Invalid, "no ext" unless claims["ext"].is_a?(String)
      raise Invalid, "ext is not a JSON object" unless JSON.parse(claims["ext"]).is_a?(Hash)

      [claims["ext"], claims["exp"]&.to_i]
    rescue JSON::ParserError, ArgumentError => e
      raise Invalid, e.message
    end

    def unb64(text)
      Base64.urlsafe_decode64(text + ("=" * ((4 - text.size % 4) % 4)))
    end

    # For plain Action Cable (the embedded toggle off, or a connection without a token
    # on it): include in ApplicationCable::Connection and call from `connect`:
    #
    #   def connect
    #     return identify_from_anycable_jwt! if anycable_jwt_present?
    #     ...
    module Identification
      def anycable_jwt_present?
        !anycable_jwt_token.to_s.empty?
      end

      # A session restored by its sid keeps the token's expiry: a restore past it gets
      # token_expired, as with the server's own JWT check.
      def identify_from_anycable_jwt!
        identifiers, exp = AnyCableRs::JWT.decode_with_expiry(anycable_jwt_token)
        AnyCableRs::JWT.identify!(self, identifiers)
        AnyCableRs.restorable_until(self, exp) if exp
      rescue AnyCableRs::JWT::Expired
        close(reason: "token_expired", reconnect: false) if respond_to?(:close)
        reject_unauthorized_connection
      rescue AnyCableRs::JWT::Invalid
        reject_unauthorized_connection
      end

      private

      def anycable_jwt_token
        param = AnyCableRs.config.jwt_param
        request.headers["X-#{param.upcase}"].presence || request.params[param]
      end
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
