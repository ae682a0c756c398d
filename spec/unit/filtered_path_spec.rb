# frozen_string_literal: true

require "spec_helper"
require "anycable_rs/rack_env"
require "action_dispatch"

# The "Started GET … [WebSocket]" lines must hide what the app's parameter filter hides,
# exactly as Rails' own request.filtered_path does.
RSpec.describe AnyCableRs::RackEnv, ".filtered_fullpath" do
  def env_for(query, filters, script_name: "")
    {"SCRIPT_NAME" => script_name, "PATH_INFO" => "/cable", "QUERY_STRING" => query,
     "action_dispatch.parameter_filter" => filters}
  end

  it "filters query values like ActionDispatch::Request#filtered_path" do
    filters = [:token, "jid", /secret/, "user.password"]
    [
      "token=abc&room=1", "jid=eyJ.x.y", "a=1;my_secret=2", "room=1&x", "token", "t%6Fken=abc",
      "access_token=zzz&token=", "user[password]=p", "room=lobby"
    ].each do |query|
      env = env_for(query, filters)
      expected = ActionDispatch::Request.new(env.dup).filtered_path
      expect(described_class.filtered_fullpath(env)).to eq(expected), query
    end
    expect(described_class.filtered_fullpath(env_for("token=abc&room=1", filters)))
      .to eq("/cable?token=[FILTERED]&room=1")
  end

  it "keeps the path and query as they are without a filter or a query" do
    expect(described_class.filtered_fullpath(env_for("token=abc", nil))).to eq("/cable?token=abc")
    expect(described_class.filtered_fullpath(env_for("token=abc", []))).to eq("/cable?token=abc")
    expect(described_class.filtered_fullpath(env_for("", [:token], script_name: "/app"))).to eq("/app/cable")
  end

  it "compiles the filter once per filter list" do
    filters = [:token]
    allow(ActiveSupport::ParameterFilter).to receive(:new).and_call_original
    3.times { described_class.filtered_fullpath(env_for("token=a", filters)) }
    described_class.filtered_fullpath(env_for("token=a", [:jid]))
    expect(ActiveSupport::ParameterFilter).to have_received(:new).twice
  end
end
