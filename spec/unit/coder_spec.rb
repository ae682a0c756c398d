# frozen_string_literal: true

require "spec_helper"
require "active_support"
require "active_support/core_ext/object/json"
require "anycable_rs/action_cable/coder"

RSpec.describe AnyCableRs::ActionCable::Coder do
  samples = [
    {"identifier" => "{\"channel\":\"A\"}", "message" => {"text" => "hi <b>&</b>", "n" => 1, "f" => 1.5}},
    {type: :welcome, list: [1, nil, true, false, "x\u2028y"], nested: {"a" => {b: []}}},
    ["unicode ✓", -3, 1e20, 0.1],
    "just a string",
    {1 => "integer key"},
    {"at" => Time.utc(2026, 1, 2, 3, 4, 5)},
    {"nan" => Float::NAN}
  ]

  samples.each do |value|
    it "encodes #{value.inspect[0, 60]} exactly as ActiveSupport::JSON" do
      expect(described_class.encode(value)).to eq(ActiveSupport::JSON.encode(value))
    end
  end

  it "decodes as ActiveSupport::JSON does" do
    json = '{"a":[1,2.5,"x",null,true],"b":{"c":"2026-01-02T03:04:05Z"}}'
    expect(described_class.decode(json)).to eq(ActiveSupport::JSON.decode(json))
    expect(described_class.decode('"scalar"')).to eq("scalar")
  end
end
