# frozen_string_literal: true

require "spec_helper"
require "base64"
require "active_support"
require "active_support/message_verifier"

# AnyCable's signed and public streams ($pubsub), Turbo Streams' signed names and
# whisper, served by the Rust server with no Ruby job per subscription (issue
# "AnyCable identification and streams"). Signatures are made here by ActiveSupport.
RSpec.describe "Signed, public and Turbo streams, and whisper (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_STREAMS_SECRET" => "streams-s3cret", "ANYCABLE_PUBLIC_STREAMS" => "true",
                  "ANYCABLE_TURBO_STREAMS" => "true", "ANYCABLE_TURBO_STREAMS_SECRET" => "turbo-s3cret",
                  "ANYCABLE_METRICS_HTTP" => "/metrics"})

  def signed(name, secret)
    ActiveSupport::MessageVerifier.new(secret, digest: "SHA256", serializer: JSON).generate(name)
  end

  def ruby_commands
    text = puma.http(:get, "/metrics").body
    _, samples = PrometheusText.parse(text)
    samples.find { |s| s.name == "anycable_rs_jobs_total" && s.labels["kind"] == "command" }&.value || 0
  end

  def reply(c, id)
    msg = c.receive
    expect(msg["identifier"]).to eq(id)
    msg["type"]
  end

  it "subscribes verified names in Rust, rejects forged ones, and delivers broadcasts to them" do
    c = connected(name: "alice")
    commands_before = ruby_commands
    good = c.subscribe(channel: "$pubsub", signed_stream_name: signed("chat_42", "streams-s3cret"))
    expect(reply(c, good)).to eq("confirm_subscription")
    forged = signed("chat_42", "streams-s3cret").sub(/\A(.)(.)/) { "#{Regexp.last_match(1)}#{Regexp.last_match(2) == "A" ? "B" : "A"}" }
    bad = c.subscribe(channel: "$pubsub", signed_stream_name: forged)
    expect(reply(c, bad)).to eq("reject_subscription")
    other = c.subscribe(channel: "$pubsub", signed_stream_name: signed("chat_42", "another-secret"))
    expect(reply(c, other)).to eq("reject_subscription")
    lobby = c.subscribe(channel: "$pubsub", stream_name: "lobby")
    expect(reply(c, lobby)).to eq("confirm_subscription")
    turbo = c.subscribe(channel: "Turbo::StreamsChannel", signed_stream_name: signed("gid://dummy/Room/1", "turbo-s3cret"))
    expect(reply(c, turbo)).to eq("confirm_subscription")

    expect(puma.http(:post, "/broadcast", stream: "chat_42", payload: '{"text":"hi"}').code).to eq("201")
    expect(c.receive).to eq("identifier" => good, "message" => {"text" => "hi"})
    expect(puma.http(:post, "/broadcast", stream: "$public:lobby", payload: '{"text":"all"}').code).to eq("201")
    expect(c.receive).to eq("identifier" => lobby, "message" => {"text" => "all"})
    html = %(<turbo-stream action="append" target="messages"><template>hi</template></turbo-stream>)
    expect(puma.http(:post, "/broadcast", stream: "gid://dummy/Room/1", payload: JSON.generate(html)).code).to eq("201")
    expect(c.receive).to eq("identifier" => turbo, "message" => html)
    # No Ruby command ran for any of it.
    expect(ruby_commands - commands_before).to eq(0)
    # The app's own channels still go to Ruby.
    subscribed(c, channel: "EchoChannel")
    expect(ruby_commands - commands_before).to eq(1)
  end

  # Issue #24 (3): before, a public name was the app's stream name: bob read alice's
  # stream_for broadcasts and whispered a disconnect into her Action Cable internal
  # channel, which closed her socket.
  it "keeps public names out of the app's streams: no stream_for, no action_cable/<id>, no whisper into them" do
    alice_id = Integer(puma.http(:get, "/login?name=alice").body)
    gid = Base64.urlsafe_encode64("gid://dummy/User/#{alice_id}", padding: false)
    a = connected(name: "alice")
    ia = subscribed(a, channel: "ScopedChannel")
    bob = connected(name: "bob")
    theirs = {channel: "$pubsub", stream_name: "scoped:#{gid}"}
    internal = {channel: "$pubsub", stream_name: "action_cable/#{[gid, "main"].sort.join(":")}"}
    [theirs, internal].each { |id| expect(reply(bob, bob.subscribe(id))).to eq("confirm_subscription") }
    bob.send_json(command: "whisper", identifier: JSON.generate(internal), data: {type: "disconnect", reconnect: false})
    bob.send_json(command: "whisper", identifier: JSON.generate(theirs), data: {forged: true})
    expect(puma.http(:post, "/broadcast", user_id: alice_id, payload: '{"secret":1}').code).to eq("201")
    expect(message_for(a, ia)).to eq("secret" => 1)
    expect(a.silent_for?(0.3)).to be(true)
    expect(bob.silent_for?(0.3)).to be(true)
    # The app reaches a public stream by its own name (AnyCableRs.public_stream).
    expect(puma.http(:post, "/broadcast", stream: "$public:scoped:#{gid}", payload: '{"p":1}').code).to eq("201")
    expect(bob.receive).to eq("identifier" => JSON.generate(theirs), "message" => {"p" => 1})
  end

  it "delivers a whisper to the stream's other subscribers, never back to the sender" do
    a = connected(name: "alice")
    b = connected(name: "bob")
    id = {channel: "$pubsub", stream_name: "typing-room"}
    [a, b].each { |c| expect(reply(c, c.subscribe(id))).to eq("confirm_subscription") }
    a.send_json(command: "whisper", identifier: JSON.generate(id), data: {event: "typing", name: "alice"})
    expect(b.receive).to eq("identifier" => JSON.generate(id), "message" => {"event" => "typing", "name" => "alice"})
    expect(a.silent_for?(0.3)).to be(true)
    # Whisper on a signed stream (ANYCABLE_STREAMS_WHISPER off) goes nowhere.
    sid = {channel: "$pubsub", signed_stream_name: signed("quiet", "streams-s3cret")}
    [a, b].each { |c| expect(reply(c, c.subscribe(sid))).to eq("confirm_subscription") }
    a.send_json(command: "whisper", identifier: JSON.generate(sid), data: {event: "typing"})
    expect(b.silent_for?(0.3)).to be(true)
  end
end

RSpec.describe "Whisper on the app's channels (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_METRICS_HTTP" => "/metrics"})

  it "delivers whispers on a stream_from … whisper: true subscription to the others only, without a Ruby job" do
    a = connected(name: "alice")
    b = connected(name: "bob")
    ia = subscribed(a, channel: "WhisperChannel", room: "r1")
    ib = subscribed(b, channel: "WhisperChannel", room: "r1")
    commands = lambda do
      _, samples = PrometheusText.parse(puma.http(:get, "/metrics").body)
      samples.find { |s| s.name == "anycable_rs_jobs_total" && s.labels["kind"] == "command" }.value
    end
    before = commands.call
    a.send_json(command: "whisper", identifier: ia, data: {typing: true})
    expect(b.receive).to eq("identifier" => ib, "message" => {"typing" => true})
    expect(a.silent_for?(0.3)).to be(true)
    expect(commands.call).to eq(before)
    # After stop_all_streams, its whispers go nowhere.
    a.perform(ia, "hush")
    expect(message_for(a, ia)).to eq("hushed" => true)
    a.send_json(command: "whisper", identifier: ia, data: {typing: false})
    expect(b.silent_for?(0.3)).to be(true)
  end

  it "ignores whispers where the channel did not allow them" do
    a = connected(name: "alice")
    b = connected(name: "bob")
    ia = subscribed(a, channel: "WhisperChannel", room: "quiet")
    subscribed(b, channel: "WhisperChannel", room: "quiet")
    a.send_json(command: "whisper", identifier: ia, data: {typing: true})
    expect(b.silent_for?(0.3)).to be(true)
  end
end

RSpec.describe "Broadcasts to others (to_others: true, real Puma)", type: :cable do
  with_puma

  it "skips the sender in a channel action, and the X-Socket-ID client in a controller" do
    a = connected(name: "alice")
    b = client(name: "bob")
    sid_b = b.welcome!["sid"]
    ia = subscribed(a, channel: "WhisperChannel", room: "o")
    ib = subscribed(b, channel: "WhisperChannel", room: "o")
    a.perform(ia, "shout", "text" => "hi")
    expect(message_for(b, ib)).to eq("shout" => "hi")
    expect(a.silent_for?(0.3)).to be(true)

    res = puma.http(:post, "/broadcast", {stream: "whisper:o", payload: '{"n":1}', to_others: "1"}, {"X-Socket-ID" => sid_b})
    expect(res.code).to eq("201")
    expect(message_for(a, ia)).to eq("n" => 1)
    expect(b.silent_for?(0.3)).to be(true)
    # Without to_others, everyone.
    puma.http(:post, "/broadcast", {stream: "whisper:o", payload: '{"n":2}'}, {"X-Socket-ID" => sid_b})
    expect(message_for(b, ib)).to eq("n" => 2)
  end
end
