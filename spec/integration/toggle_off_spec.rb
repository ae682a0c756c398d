# frozen_string_literal: true

require "spec_helper"

RSpec.describe "Without ANYCABLE_EMBEDDED (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_EMBEDDED" => nil, "ANYCABLE_JWT_SECRET" => "jwt-s3cret"})

  it "leaves the app on plain Action Cable" do
    c = connected(name: "alice")
    id = subscribed(c, channel: "StateChannel", room: "plain")
    c.perform(id, "increment")
    expect(message_for(c, id)).to include("count" => 1)
    stats = JSON.parse(puma.http(:get, "/stats").body)
    expect(stats["sessions"]).to eq(0)
    expect(puma.rails_log).not_to include("anycable-rs: serving")
  end

  it "identifies AnyCable JWTs in connect (identify_from_anycable_jwt!), rejecting expired and forged ones" do
    t = puma.http(:get, "/token?name=plainjwt").body
    c = client(path: "/cable?jid=#{t}")
    c.welcome!
    id = subscribed(c, channel: "StateChannel", room: "p")
    c.perform(id, "whoami")
    expect(message_for(c, id)).to eq("user" => "plainjwt", "tab" => "jwt")
    expired = puma.http(:get, "/token?name=plainjwt&exp=#{Time.now.to_i - 5}").body
    e = client(path: "/cable?jid=#{expired}")
    expect(e.receive).to include("type" => "disconnect", "reason" => "token_expired", "reconnect" => false)
    f = client(path: "/cable?jid=#{t.sub(/.{4}\z/, "AAAA")}")
    expect(f.receive).to include("type" => "disconnect", "reason" => "unauthorized")
  end
end
