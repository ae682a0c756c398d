# frozen_string_literal: true

require "spec_helper"
require "active_support"
require "active_support/message_verifier"
require_relative "../support/sse_client"

# AnyCable's Server-Sent Events (issue "Beyond WebSockets", step 1): GET /events (an
# EventSource's request) and POST /events (commands in the body) on Puma's port and the
# own port, identified as a WebSocket client is, with the memory broker's positions as
# event ids. Plain sockets here; Chromium's EventSource in spec/js.
RSpec.describe "Server-Sent Events (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_SSE" => "true", "ANYCABLE_PORT" => PumaServer.free_port.to_s,
                  "ANYCABLE_BROKER" => "memory", "ANYCABLE_STREAMS_SECRET" => "streams-s3cret",
                  "ANYCABLE_PUBLIC_STREAMS" => "true", "ANYCABLE_METRICS_HTTP" => "/metrics"})

  def sse(target = "/events?channel=EchoChannel", port: puma.port, name: "alice", origin: "http://allowed.test",
    headers: {}, **opts)
    headers = (origin ? {"Origin" => origin} : {}).merge(headers)
    headers["Cookie"] = cookies_for(name) if name
    c = SseClient.new(port, target, headers: headers, **opts)
    (@sse_clients ||= []) << c
    c
  end

  after { (@sse_clients || []).each(&:close) }

  def sse_clients_num
    body = Net::HTTP.get(URI("http://127.0.0.1:#{own_port}/metrics"))
    _, samples = PrometheusText.parse(body)
    samples.find { |s| s.name == "anycable_go_sse_clients_num" }&.value
  end

  it "streams a channel to a GET on Puma's port and the own port, the app's connect reading its cookies" do
    [puma.port, own_port].each do |port|
      c = sse(port: port)
      expect(c.status).to eq(200)
      expect(c.headers["content-type"]).to eq("text/event-stream; charset=utf-8")
      expect(c.headers["cache-control"]).to include("no-cache")
      expect(c.headers["access-control-allow-origin"]).to eq("http://allowed.test")
      welcome = c.next_event
      expect([welcome.event, welcome.json["type"]]).to eq(%w[welcome welcome])
      confirm = c.next_event
      expect(confirm.event).to eq("confirm_subscription")
      expect(confirm.json).to eq("type" => "confirm_subscription", "identifier" => '{"channel":"EchoChannel"}')
      broadcast("all", {"n" => port})
      event = c.next_event
      expect([event.event, event.json]).to eq([nil, {"n" => port}])
      expect(event.id).to match(%r{\A\d+/[^/]+/all\z})
      expect(c.next_event(pings: true, timeout: 5).event).to eq("ping")
    end
    expect(sse_clients_num).to eq(2)
  end

  it "refuses what a WebSocket would be refused, and says why" do
    expect([sse(name: nil).status, sse(name: nil).body]).to eq([401, "unauthorized"])
    # A subscribe that is neither confirmed nor rejected (an identifier that is not
    # JSON): refused too, not a stream that never says anything.
    expect(sse("/events?identifier=nope").status).to eq(400)
    picky = sse("/events?channel=PickyChannel")
    expect(picky.status).to eq(400)
    expect(picky.body).to include("subscription rejected")
    # A page of another site: refused before the app's connect runs (no cookie of
    # alice's reaches Ruby), with or without an Origin (an <img> sends none, but its
    # browser says where it comes from).
    expect(sse(origin: "http://evil.test").status).to eq(403)
    expect(sse(origin: nil, headers: {"Sec-Fetch-Site" => "cross-site"}).status).to eq(403)
    expect(sse(origin: nil, headers: {"Sec-Fetch-Site" => "same-origin"}).status).to eq(200)
    expect(sse("/events", name: nil).status).to eq(400)
    expect(sse("/events?stream=x", method: "PUT", port: own_port).status).to eq(405)
    # On Puma's port, other methods at the path stay the app's (here its DELETE /events).
    expect(sse("/events", method: "DELETE").status).to eq(204)
    [puma.port, own_port].each do |port|
      big = sse("/events", port: port, method: "POST", body: "#{" " * (64 * 1024)}{}")
      expect(big.status).to eq(413), "port #{port}"
      other = sse("/events", port: port, method: "POST", body: JSON.generate(command: "message", identifier: "{}", data: "{}"))
      expect([other.status, other.body]).to eq([400, "line 1: only subscribe commands are taken here"])
    end
    forged = ActiveSupport::MessageVerifier.new("another-secret", digest: "SHA256", serializer: JSON).generate("chat")
    expect(sse("/events?signed_stream=#{CGI.escape(forged)}").status).to eq(400)
  end

  it "gives a reconnecting EventSource what it missed, once, in order (Last-Event-ID)" do
    first = sse
    2.times { first.next_event }
    broadcast("all", {"k" => 1})
    last = first.next_event
    expect(last.json).to eq("k" => 1)
    first.close
    broadcast("all", {"k" => 2})
    broadcast("all", {"k" => 3})
    again = sse(headers: {"Last-Event-ID" => last.id})
    events = Array.new(5) { again.next_event }
    expect(events.map(&:event)).to eq(["welcome", "confirm_subscription", nil, nil, "confirm_history"])
    expect(events[2..3].map(&:json)).to eq([{"k" => 2}, {"k" => 3}])
    broadcast("all", {"k" => 4})
    expect(again.next_event.json).to eq("k" => 4)
    expect(again.silent_for?(0.5)).to be(true)
    # Another epoch (a restarted memory broker's): reject_history, and the stream goes on.
    stale = sse(headers: {"Last-Event-ID" => "1/another-epoch/all"})
    expect(Array.new(3) { stale.next_event.event }).to eq(%w[welcome confirm_subscription reject_history])
  end

  it "takes subscribe commands in a POST's body and sends every frame whole" do
    signed = ActiveSupport::MessageVerifier.new("streams-s3cret", digest: "SHA256", serializer: JSON).generate("chat_7")
    body = [JSON.generate(command: "subscribe", identifier: JSON.generate(channel: "EchoChannel")),
      JSON.generate(identifier: JSON.generate(channel: "$pubsub", signed_stream_name: signed))].join("\n")
    c = sse("/events", method: "POST", body: body, port: own_port)
    expect(c.status).to eq(200)
    expect(Array.new(3) { c.next_event.event }).to eq(%w[welcome confirm_subscription confirm_subscription])
    broadcast("chat_7", {"text" => "hi"})
    event = c.next_event
    expect(event.json).to include("identifier" => JSON.generate(channel: "$pubsub", signed_stream_name: signed),
      "message" => {"text" => "hi"}, "stream_id" => "chat_7")
  end

  it "sends a Turbo Stream's HTML unquoted, line by line, and only messages with raw=1" do
    c = sse("/events?stream=lobby&raw=1")
    expect(c.status).to eq(200)
    html = "<turbo-stream action=\"append\" target=\"messages\">\n<template><p>hi</p></template>\n</turbo-stream>"
    broadcast("$public:lobby", html)
    event = c.next_event(pings: true)
    expect([event.event, event.data]).to eq([nil, html])
    expect(c.silent_for?(1.2)).to be(true) # no pings either
  end
end
