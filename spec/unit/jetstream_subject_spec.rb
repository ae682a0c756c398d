# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"

# ANYCABLE_BROKER=nats: a job process stores a broadcast on the subject the servers read
# the stream's history from. Ruby and Rust (anycable_core::jetstream::subject_for, whose
# test has the same vectors) must name it alike.
RSpec.describe AnyCableRs::JetStream do
  it "names a stream's history subject as the Rust side does" do
    expect(described_class.subject_for("chat_42")).to eq("anycable_history.sY2hhdF80Mg")
    expect(described_class.subject_for("")).to eq("anycable_history.s")
    expect(described_class.subject_for("a b.c>*")).to eq("anycable_history.sYSBiLmM-Kg")
    expect(described_class.subject_for("ü/é")).to eq("anycable_history.sw7wvw6k")
    expect(described_class.subject_for("ü/é".encode("ISO-8859-1"))).to eq("anycable_history.sw7wvw6k")
    expect(described_class.subject_for("x" * 768).size).to eq(1042)
    expect(described_class.subject_for("x" * 2000))
      .to eq("anycable_history.h5c0e0ea421571c300b5df6aec0a118b5c3dc02e0683a546341d5efc689df2f58")
  end

  it "stores stream messages and passes transient ones and commands on" do
    payload = JSON.generate([{stream: "a", data: "{}", meta: {exclude_socket: "s1"}},
      {stream: "a", data: "{}", meta: {transient: true}},
      {command: "disconnect", payload: {identifier: "{}"}}])
    stored, rest = described_class.split(payload)
    # The skipped socket by its sid's digest (the Rust side's vector, for "sid1").
    expect(stored).to eq([[described_class.subject_for("a"),
      %({"stream":"a","data":"{}","meta":{"exclude_socket":"sha256:#{Digest::SHA256.hexdigest("s1")}"}})]])
    expect(AnyCableRs::Broadcasting.exclude_digest("sid1"))
      .to eq("sha256:53453a19cbc7f60351e13709237b6025007b6bf5a6974aabaa03d5e19ea1ada3")
    expect(JSON.parse(rest).size).to eq(2)
    expect(described_class.split('{"stream":"b","data":"1"}')).to eq([[[described_class.subject_for("b"), '{"stream":"b","data":"1"}']], nil])
  end

  it "names a skipped socket by its sid's digest on every payload that leaves the process" do
    digest = AnyCableRs::Broadcasting.exclude_digest("sid1")
    out = AnyCableRs::Broadcasting.digest_excludes(JSON.generate([{stream: "a", data: "1", meta: {exclude_socket: "sid1", transient: true}},
      {stream: "b", data: "2", meta: {exclude_socket: digest}}, {stream: "c", data: "3"}]))
    expect(JSON.parse(out).map { |m| m.dig("meta", "exclude_socket") }).to eq([digest, digest, nil])
    expect(out).not_to include('"sid1"')
    plain = '{"stream":"a","data":"1"}'
    expect(AnyCableRs::Broadcasting.digest_excludes(plain)).to equal(plain)
  end
end
