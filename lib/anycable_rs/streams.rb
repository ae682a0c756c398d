# frozen_string_literal: true

require "openssl"
require "json"
require "base64"

module AnyCableRs
  # Signed stream names for AnyCable's `$pubsub` channel, as AnyCable's servers and
  # Rails' MessageVerifier (SHA256, JSON serializer) make them:
  # `strict_base64(JSON(name)) + "--" + hex(HMAC-SHA256(secret, that base64 text))`.
  # The standard base64 alphabet, as Rails and AnyCable-Go produce (AnyCable's Ruby
  # helper uses the URL-safe one, which AnyCable-Go then fails to decode for names
  # whose base64 holds + or /); the server accepts both.
  #
  #   AnyCableRs::Streams.signed("chat_42")
  #   AnyCableRs::Streams.signed_stream_name(room, :messages)  # "gid://app/Room/1:messages"
  #
  # In a view, with @anycable/web: `cable.streamFromSigned("<%= AnyCableRs::Streams.signed(...) %>")`.
  module Streams
    module_function

    def signed(name, secret: AnyCableRs.config.effective_streams_secret)
      raise ArgumentError, "anycable-rs: set ANYCABLE_STREAMS_SECRET (or ANYCABLE_SECRET) to sign stream names" if secret.to_s.empty?

      data = Base64.strict_encode64(JSON.generate(name.to_s))
      "#{data}--#{OpenSSL::HMAC.hexdigest("SHA256", secret.to_s, data)}"
    end

    # The stream name in `signed`, or nil.
    def verified(signed, secret: AnyCableRs.config.effective_streams_secret)
      return nil if secret.to_s.empty? || signed.to_s.length < 66

      data = signed[0...-66]
      digest = signed[-64..]
      return nil unless signed[-66, 2] == "--" && digest.match?(/\A[0-9a-f]{64}\z/)
      return nil unless OpenSSL.fixed_length_secure_compare(OpenSSL::HMAC.hexdigest("SHA256", secret.to_s, data), digest)

      name = JSON.parse(Base64.decode64(data.tr("-_", "+/")))
      name.is_a?(String) ? name : nil
    rescue JSON::ParserError
      nil
    end

    # Signs the stream name made of `streamables` as turbo-rails and AnyCable do:
    # joined by ":", each by its GlobalID param, else to_param.
    def signed_stream_name(*streamables, secret: AnyCableRs.config.effective_streams_secret)
      signed(stream_name(*streamables), secret: secret)
    end

    def stream_name(*streamables)
      streamables.flatten.map do |s|
        if s.respond_to?(:to_gid_param) then s.to_gid_param
        elsif s.respond_to?(:to_param) then s.to_param
        else s.to_s
        end
      end.join(":")
    end
  end
end
