# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"
require "active_support"
require "active_support/message_verifier"

RSpec.describe AnyCableRs::Streams do
  def rails_signed(name, secret)
    ActiveSupport::MessageVerifier.new(secret, digest: "SHA256", serializer: JSON).generate(name)
  end

  it "signs as Rails' MessageVerifier (SHA256, JSON) does, byte for byte" do
    ["chat_42", "user>42", "gid://app/Room/1:messages", "ü"].each do |name|
      expect(described_class.signed(name, secret: "s3cr3t")).to eq(rails_signed(name, "s3cr3t"))
    end
    expect(described_class.signed("chat_42", secret: "s3cr3t"))
      .to eq("ImNoYXRfNDIi--71625ebab8df987529d7c5bc3ebb418c713db58ca94bb86dc538190b33f07734")
  end

  it "verifies its own names, and nothing forged" do
    signed = described_class.signed("user>42", secret: "k")
    expect(described_class.verified(signed, secret: "k")).to eq("user>42")
    expect(described_class.verified(signed, secret: "other")).to be_nil
    expect(described_class.verified(signed.sub("InVz", "InVy"), secret: "k")).to be_nil
    expect(described_class.verified("junk", secret: "k")).to be_nil
  end

  it "joins streamables as turbo-rails does, and refuses to sign without a secret" do
    record = Struct.new(:to_gid_param).new("Z2lkOi8vYXBwL1Jvb20vMQ")
    expect(described_class.stream_name(record, :messages)).to eq("Z2lkOi8vYXBwL1Jvb20vMQ:messages")
    expect { described_class.signed("x", secret: nil) }.to raise_error(ArgumentError, /ANYCABLE_STREAMS_SECRET/)
  end
end
