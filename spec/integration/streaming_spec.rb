# frozen_string_literal: true

require "spec_helper"
require "erb"
require "active_support"
require "active_support/message_verifier"
require_relative "../support/sse_client"

# Issue "Beyond WebSockets", step 4: what a job broadcasts — an LLM's answer token by
# token, a Turbo Stream — reaches a WebSocket client, an EventSource (/events) and a
# Durable Streams reader (/ds) the same way, at the same positions; a DS reader that lost
# its connection reads on from its offset. The job is a plain Ruby process (the gem
# loaded, no server), broadcasting over HTTP to the node's own port.
RSpec.describe "A job's token stream and Turbo Stream over WebSocket, SSE and Durable Streams (real Puma)",
  type: :cable do

  with_puma(env: {"ANYCABLE_PORT" => PumaServer.free_port.to_s, "ANYCABLE_BROKER" => "memory",
                  "ANYCABLE_SSE" => "true", "ANYCABLE_DS" => "true", "ANYCABLE_BROADCAST_KEY" => "job-broadcast-key",
                  "ANYCABLE_STREAMS_SECRET" => "streams-s3cret", "ANYCABLE_TURBO_STREAMS" => "true",
                  "ANYCABLE_TURBO_STREAMS_SECRET" => "turbo-s3cret"})

  def job(script)
    env = {"ANYCABLE_BROADCAST_ADAPTER" => "http", "ANYCABLE_BROADCAST_KEY" => "job-broadcast-key",
           "ANYCABLE_HTTP_BROADCAST_URL" => "http://127.0.0.1:#{own_port}/_broadcast"}
    out, status = ruby_with_gem(env, script)
    expect(status).to be_success, out
  end

  def sse(target)
    c = SseClient.new(puma.port, target, headers: {"Origin" => "http://allowed.test", "Cookie" => cookies_for("alice")})
    (@sse_clients ||= []) << c
    expect(c.status).to eq(200)
    c
  end

  after { (@sse_clients || []).each(&:close) }

  def ds_path(name)
    "/ds/#{ERB::Util.url_encode(name)}"
  end

  # A catch-up read as alice.
  def ds_read(port, name, **params)
    request = Net::HTTP::Get.new(URI("http://127.0.0.1:#{port}#{ds_path(name)}?#{URI.encode_www_form(params)}"))
    request["Cookie"] = cookies_for("alice")
    Net::HTTP.start("127.0.0.1", port) { |http| http.request(request) }
  end

  # The messages and places of `count` broadcasts on a DS SSE read: each `data` event's
  # messages, and the offset its `control` names (the last message's).
  def ds_messages(reader, count)
    messages = []
    places = []
    while messages.size < count
      event = reader.next_event
      next unless event.event == "data"

      batch = event.json
      control = reader.next_event
      expect(control.event).to eq("control")
      messages.concat(batch)
      places << [messages.size - 1, control.json["streamNextOffset"]]
    end
    [messages, places]
  end

  it "delivers an LLM's tokens to all three in order at the same positions, and a DS reader resumes after a blip" do
    name = "llm/answer-7"
    token = signed(name)
    ws = connected(name: "alice")
    id = subscribed(ws, channel: "$pubsub", signed_stream_name: token)
    events = sse("/events?#{URI.encode_www_form(signed_stream: token)}")
    expect(events.next_event.event).to eq("welcome")
    expect(events.next_event.event).to eq("confirm_subscription")
    reader = sse("#{ds_path(name)}?#{URI.encode_www_form(offset: "now", live: "sse", signed: token)}")
    expect(reader.next_event.event).to eq("control") # caught up, nothing yet

    tokens = Array.new(20) { |i| "tok#{i} " }
    job("#{tokens.inspect}.each { |t| AnyCableRs.broadcast(#{name.inspect}, {\"token\" => t}) }")

    over_ws = Array.new(20) { ws.receive }
    expect(over_ws.map { |m| [m["identifier"], m["message"]["token"]] }).to eq(tokens.map { |t| [id, t] })
    offsets = over_ws.map { |m| m["offset"] }
    epoch = over_ws.first["epoch"]
    expect(offsets).to eq(offsets.sort)
    expect(over_ws.map { |m| [m["stream_id"], m["epoch"]] }.uniq).to eq([[name, epoch]])

    over_sse = Array.new(20) { events.next_event }
    expect(over_sse.map { |e| e.json["token"] }).to eq(tokens)
    expect(over_sse.map(&:id)).to eq(offsets.map { |o| "#{o}/#{epoch}/#{name}" })

    over_ds, places = ds_messages(reader, 20)
    expect(over_ds.map { |m| m["token"] }).to eq(tokens)
    places.each do |index, offset|
      expect(offset).to eq(format("%020d::%s", offsets[index], epoch)), "the place after token #{index}"
    end

    # The reader's connection drops after the tenth token: it reads on from there (on
    # the other port: the place is the stream's, not the connection's).
    reader.close
    rest = ds_read(own_port, name, offset: format("%020d::%s", offsets[9], epoch), signed: token)
    expect(JSON.parse(rest.body).map { |m| m["token"] }).to eq(tokens[10..])
    expect(rest["stream-next-offset"]).to eq(format("%020d::%s", offsets.last, epoch))
  end

  it "delivers a Turbo Stream from a job the same way: its HTML as Turbo wants it on each" do
    name = "gid://dummy/Room/1"
    token = signed(name, "turbo-s3cret")
    html = %(<turbo-stream action="append" target="messages">\n<template><p>hi</p></template>\n</turbo-stream>)
    ws = connected(name: "alice")
    id = subscribed(ws, channel: "Turbo::StreamsChannel", signed_stream_name: token)
    # Turbo's <turbo-stream-source> is an EventSource on this URL: messages only.
    events = sse("/events?#{URI.encode_www_form(turbo_signed_stream_name: token, raw: 1)}")

    job("AnyCableRs.broadcast(#{name.inspect}, JSON.generate(#{html.inspect}))")

    message = ws.receive
    expect([message["identifier"], message["message"]]).to eq([id, html])
    event = events.next_event
    expect(event.data).to eq(html)
    expect(event.id).to eq("#{message["offset"]}/#{message["epoch"]}/#{name}")
    read = ds_read(puma.port, name, offset: "-1", signed: token)
    expect(JSON.parse(read.body)).to eq([html])
    expect(read["stream-next-offset"]).to eq(format("%020d::%s", message["offset"], message["epoch"]))
  end
end
