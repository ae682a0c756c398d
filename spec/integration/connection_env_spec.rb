# frozen_string_literal: true

require "spec_helper"

# After `connect`, a connection keeps a snapshot of its request instead of the whole Rack
# env (ANYCABLE_RETAIN_ENV keeps the env); a channel that reads the request later gets it
# rebuilt: cookies (signed, encrypted, plain), the session, params, headers, env.
RSpec.describe "A connection's request after connect (real Puma)", type: :cable do
  # Puma's port reaches the app's mounted /cable (SCRIPT_NAME "/cable"; PATH_INFO "/"
  # before Rails 7.1, "" since).
  def expected(name, tab, middleware:, path: RunningVersions.cable_path_on_puma, original: "/cable?tab=#{tab}")
    {
      "secret" => "s3cret-#{name}", "signed_user_id" => a_kind_of(Integer), "plain" => "plain-#{name}",
      "session_user" => name, "header" => "custom-#{name}", "env_header" => "custom-#{name}",
      "remote_ip" => "127.0.0.1", "param" => tab, "path" => path, "middleware" => middleware,
      "original_fullpath" => original
    }
  end

  def facts_later(name:, tab:, **opts)
    c = connected(name: name, path: "/cable?tab=#{tab}", headers: {"X-Custom" => "custom-#{name}"}, **opts)
    id = subscribed(c, channel: "StateChannel", room: "later")
    c.perform(id, "facts_now")
    facts = message_for(c, id)
    c.perform(id, "request_held")
    [facts, message_for(c, id)["request_held"]]
  end

  describe "by default: a snapshot" do
    with_puma(env: {"ANYCABLE_PORT" => PumaServer.free_port.to_s})

    it "rebuilds request, cookies, session, params and env for a channel action on Puma's port, and lets them go" do
      facts, held = facts_later(name: "alice", tab: "t1")
      # A middleware's env key is what the snapshot does not keep (README).
      expect(facts).to match(expected("alice", "t1", middleware: nil))
      expect(held).to be(false)
    end

    it "does the same on the server's own port" do
      facts, held = facts_later(name: "frank", tab: "own", port: Integer(puma.env["ANYCABLE_PORT"]))
      expect(facts).to match(expected("frank", "own", middleware: nil, path: "/cable"))
      expect(held).to be(false)
    end

    it "still logs the connection's filtered path when it closes" do
      c = connected(name: "alice", path: "/cable?tab=closing")
      subscribed(c, channel: "StateChannel", room: "closing")
      c.close
      path = RunningVersions.cable_path_on_puma
      expect(wait_for { log_lines(%(Finished "#{path}?tab=closing" [WebSocket])).any? }).to be(true)
    end

    it "gives Action Cable's connection statistics, request id included" do
      c = connected(name: "alice", headers: {"X-Request-Id" => "req-stats-1"})
      id = subscribed(c, channel: "StateChannel", room: "stats")
      c.perform(id, "statistics")
      expect(message_for(c, id)).to eq("request_id" => "req-stats-1", "subscriptions" => [id])
    end

    it "does not take the identifier readers for actions a client can perform" do
      c = connected(name: "alice")
      id = subscribed(c, channel: "StateChannel", room: "ids")
      c.perform(id, "current_user")
      c.perform(id, "whoami")
      expect(message_for(c, id)).to eq("user" => "alice", "tab" => "main")
      expect(log_lines("Unable to process StateChannel#current_user")).not_to be_empty
    end

    it "gives channels the connection's identifiers without a singleton class per channel object" do
      c = connected(name: "alice", path: "/cable?tab=ids")
      id = subscribed(c, channel: "StateChannel", room: "ids")
      c.perform(id, "identifier_readers")
      expect(message_for(c, id)).to eq("singleton_methods" => [], "user" => "alice", "tab" => "ids")
    end
  end

  describe "ANYCABLE_RETAIN_ENV=true: the whole env" do
    with_puma(env: {"ANYCABLE_RETAIN_ENV" => "true"})

    it "keeps what middleware put in the env, and Action Cable's memoized request" do
      facts, held = facts_later(name: "alice", tab: "t2")
      expect(facts).to match(expected("alice", "t2", middleware: "seen"))
      expect(held).to be(true)
    end
  end
end
