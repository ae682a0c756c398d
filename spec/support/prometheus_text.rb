# frozen_string_literal: true

# A strict reader of Prometheus' text exposition format (version 0.0.4): every line a
# HELP, a TYPE or a sample; sample names declared by a TYPE line first; label values
# quoted and escaped; values numbers. Raises on anything else, so a malformed /metrics
# fails the spec that reads it.
module PrometheusText
  Sample = Struct.new(:name, :labels, :value)
  SAMPLE = /\A([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?\z/
  LABEL = /\A([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|\z)/

  module_function

  def parse(text)
    types = {}
    samples = []
    text.each_line(chomp: true) do |line|
      next if line.empty?

      if line.start_with?("# HELP ")
        next
      elsif (m = line.match(/\A# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)\z/))
        types[m[1]] = m[2]
      elsif line.start_with?("#")
        raise ArgumentError, "unexpected comment line: #{line}"
      else
        m = line.match(SAMPLE) or raise ArgumentError, "not a sample line: #{line}"
        name, raw_labels, value = m.captures
        family = name.sub(/_(bucket|sum|count)\z/, "")
        raise ArgumentError, "sample #{name} has no TYPE line before it" unless types.key?(name) || types.key?(family)

        samples << Sample.new(name, labels(raw_labels.to_s), Float(value))
      end
    end
    [types, samples]
  end

  def labels(raw)
    out = {}
    rest = raw
    until rest.empty?
      m = rest.match(LABEL) or raise ArgumentError, "bad labels: #{raw}"
      out[m[1]] = m[2].gsub(/\\(.)/) { Regexp.last_match(1) == "n" ? "\n" : Regexp.last_match(1) }
      rest = m.post_match
    end
    out
  end
end
