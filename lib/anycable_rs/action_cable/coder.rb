# frozen_string_literal: true

require "json"
require "active_support/json"

module AnyCableRs
  module ActionCable
    # The JSON coder of anycable-rs connections. For plain data (Hash, Array, String,
    # Symbol, Integer, finite Float, true, false, nil) it produces the same bytes as
    # ActiveSupport::JSON — including its HTML-entity escaping — at a fraction of the
    # cost; anything else (records, times, objects with as_json) goes to
    # ActiveSupport::JSON unchanged.
    module Coder
      ESCAPES = {"\u2028" => "\\u2028", "\u2029" => "\\u2029", ">" => "\\u003e", "<" => "\\u003c", "&" => "\\u0026"}.freeze
      ESCAPE_RE = /[\u2028\u2029><&]/u

      module_function

      def encode(value)
        return ActiveSupport::JSON.encode(value) unless plain?(value)

        json = ::JSON.generate(value)
        escape?(json) ? json.gsub(ESCAPE_RE, ESCAPES) : json
      rescue ::JSON::GeneratorError, EncodingError
        ActiveSupport::JSON.encode(value)
      end

      # String#include? is a memchr; a Unicode regexp scan costs several times more.
      def escape?(json)
        ActiveSupport.escape_html_entities_in_json &&
          (json.include?("<") || json.include?(">") || json.include?("&") ||
            json.include?("\u2028") || json.include?("\u2029"))
      end

      def decode(json)
        return ActiveSupport::JSON.decode(json) if ActiveSupport.parse_json_times

        ::JSON.parse(json, quirks_mode: true)
      end

      def plain?(value)
        case value
        when String then value.encoding == Encoding::UTF_8 || value.ascii_only?
        when Symbol, Integer, true, false, nil then true
        when Float then value.finite?
        when Hash
          # each_pair yields key and value without packing them in an Array (all? does).
          value.each_pair { |k, v| return false unless (k.is_a?(String) || k.is_a?(Symbol)) && plain?(v) }
          true
        when Array then value.all? { |v| plain?(v) }
        else false
        end
      end
    end
  end
end
