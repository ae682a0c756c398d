# frozen_string_literal: true

require "spec_helper"
require_relative "../support/sse_client"

# Server-Sent Events without a broker (ANYCABLE_BROKER unset): broadcasts stream as
# they come, with no place in a history, so no event ids; an EventSource coming back
# with a Last-Event-ID is told reject_history and the stream goes on (as AnyCable's
# legacy broker does). The other transports without a broker: long_polling_spec.rb.
RSpec.describe "Server-Sent Events without a broker (real Puma)", type: :cable do
  with_puma(env: {"ANYCABLE_SSE" => "true"})

  def sse(headers = {})
    c = SseClient.new(puma.port, "/events?channel=EchoChannel",
      headers: {"Origin" => "http://allowed.test", "Cookie" => cookies_for("alice")}.merge(headers))
    (@sse_clients ||= []) << c
    expect(c.status).to eq(200)
    c
  end

  after { (@sse_clients || []).each(&:close) }

  it "streams broadcasts without ids, and answers a Last-Event-ID with reject_history" do
    c = sse
    expect([c.next_event.event, c.next_event.event]).to eq(%w[welcome confirm_subscription])
    broadcast("all", {"n" => 1})
    event = c.next_event
    expect([event.json, event.id]).to eq([{"n" => 1}, nil])
    back = sse("Last-Event-ID" => "1/some-epoch/all")
    expect(Array.new(3) { back.next_event.event }).to eq(%w[welcome confirm_subscription reject_history])
    broadcast("all", {"n" => 2})
    expect(back.next_event.json).to eq("n" => 2)
  end
end
