# frozen_string_literal: true

module AnyCableRs
  # Which Origins may open a WebSocket, as the Rust server checks it before answering
  # the upgrade (on Puma's port and the own port alike: the one origin check).
  #
  # ANYCABLE_ALLOWED_ORIGINS (AnyCable's host patterns: `example.com`, `*.example.com`,
  # `localhost:3000`) replaces Action Cable's rule when set. Otherwise Action Cable's
  # own rule (Connection::Base#allow_request_origin?) from the app's settings:
  # `disable_request_forgery_protection`, `allow_same_origin_as_host`,
  # `allowed_request_origins` (Strings compared whole, Regexps matched anywhere).
  module OriginPolicy
    module_function

    # The Hash AnyCableRs::Native takes as `origins:`.
    def build(allowed_origins, cable_config = action_cable_config)
      return {hosts: allowed_origins} if allowed_origins
      # No Action Cable (a plain Ruby process): nothing to serve, nothing to check.
      return {any: true} unless cable_config
      return {any: true} if cable_config.disable_request_forgery_protection

      exact = []
      patterns = []
      Array(cable_config.allowed_request_origins).each do |entry|
        case entry
        when String then exact << entry
        when Regexp then patterns << regexp(entry)
        else
          raise ArgumentError, "anycable-rs: config.action_cable.allowed_request_origins holds " \
            "#{entry.inspect}; the embedded server checks Strings and Regexps only " \
            "(or set ANYCABLE_ALLOWED_ORIGINS)"
        end
      end
      {any: false, same_as_host: !!cable_config.allow_same_origin_as_host, exact: exact, patterns: patterns}
    end

    def regexp(re)
      {
        source: re.source,
        ignore_case: re.options.anybits?(Regexp::IGNORECASE),
        extended: re.options.anybits?(Regexp::EXTENDED),
        multiline: re.options.anybits?(Regexp::MULTILINE)
      }
    end

    def action_cable_config
      defined?(::ActionCable) && ::ActionCable.respond_to?(:server) ? ::ActionCable.server.config : nil
    end
  end
end
