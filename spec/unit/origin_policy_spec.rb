# frozen_string_literal: true

require "spec_helper"
require "anycable_rs/origin_policy"

RSpec.describe AnyCableRs::OriginPolicy do
  def cable_config(origins: nil, same_host: true, disabled: false)
    Struct.new(:allowed_request_origins, :allow_same_origin_as_host, :disable_request_forgery_protection)
      .new(origins, same_host, disabled)
  end

  it "carries Action Cable's rule: Strings whole, Regexps with their options, same-origin-as-host" do
    policy = described_class.build(nil, cable_config(origins: ["https://a.test", %r{\Ahttps://(www\.)?b\.test\z}i]))
    expect(policy).to eq(
      any: false, same_as_host: true, exact: ["https://a.test"],
      patterns: [{source: "\\Ahttps://(www\\.)?b\\.test\\z", ignore_case: true, extended: false, multiline: false}]
    )
    expect(AnyCableRs::Native.check_origins(policy)).to be_nil
  end

  it "wraps a single entry as Action Cable does, and lets everything in when forgery protection is off" do
    expect(described_class.build(nil, cable_config(origins: "https://a.test"))[:exact]).to eq(["https://a.test"])
    expect(described_class.build(nil, cable_config(origins: /x/, disabled: true))).to eq(any: true)
  end

  it "takes ANYCABLE_ALLOWED_ORIGINS' host patterns instead of Rails' rule when set" do
    expect(described_class.build(["example.com", "*.example.com"], cable_config(origins: ["https://a.test"])))
      .to eq(hosts: ["example.com", "*.example.com"])
  end

  it "refuses at boot what the server cannot check, naming it" do
    expect { described_class.build(nil, cable_config(origins: [->(o) { o }])) }
      .to raise_error(ArgumentError, /allowed_request_origins holds #<Proc.*Strings and Regexps only/)
    policy = described_class.build(nil, cable_config(origins: [/(?<=a)b/]))
    expect { AnyCableRs::Native.check_origins(policy) }
      .to raise_error(ArgumentError, %r{/\(\?<=a\)b/ cannot be checked by anycable-rs})
  end

  it "translates Rails' development default (/https?:\\/\\/localhost:\\d+/)" do
    policy = described_class.build(nil, cable_config(origins: /https?:\/\/localhost:\d+/)) # rubocop:disable Style/RegexpLiteral
    expect(AnyCableRs::Native.check_origins(policy)).to be_nil
  end

  it "is refused by Native.new with an unknown setting" do
    expect { AnyCableRs::Native.new(path: "/cable", allowed_origin: "x") }
      .to raise_error(ArgumentError, /unknown AnyCableRs::Native settings: allowed_origin/)
  end
end
