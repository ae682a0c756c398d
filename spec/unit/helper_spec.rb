# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"
require "action_view"
require "action_cable"
require "anycable_rs/helper"

RSpec.describe AnyCableRs::Helper do
  let(:view) { ActionView::Base.empty.extend(described_class) }

  around do |example|
    old = AnyCableRs.config
    AnyCableRs.config = AnyCableRs::Config.new(jwt_secret: "k", jwt_param: "jid")
    example.run
  ensure
    AnyCableRs.config = old
  end

  def claims(token)
    JSON.parse(Base64.urlsafe_decode64(token.split(".")[1]))
  end

  it "renders the token meta tag @anycable/web reads" do
    html = view.anycable_token_meta_tag(user: "u1")
    token = html[/content="([^"]+)"/, 1]
    expect(html).to start_with('<meta name="cable-token"')
    expect(JSON.parse(claims(token)["ext"])).to eq("user" => "u1")
  end

  it "renders the cable URL with the token as ?jid=, or &jid= after a query" do
    ActionCable.server.config.url = nil
    ActionCable.server.config.mount_path = "/cable"
    expect(view.action_cable_with_jwt_meta_tag(user: "u1")).to match(%r{content="/cable\?jid=[\w-]+\.[\w-]+\.[\w-]+"})
    ActionCable.server.config.url = "wss://cable.example/cable?x=1"
    expect(view.action_cable_with_jwt_meta_tag(user: "u1")).to match(%r{content="wss://cable.example/cable\?x=1&amp;jid=})
  ensure
    ActionCable.server.config.url = nil
  end
end
