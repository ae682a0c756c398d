# frozen_string_literal: true

# The page's activity feed: Turbo Stream elements broadcast to a signed stream, which
# the page reads over Server-Sent Events (<turbo-stream-source>) and Turbo applies.
module Activity
  STREAM = "demo:activity"

  module_function

  # The stream's signed name, for the page's /events URL.
  def signed_stream
    AnyCableRs::Streams.signed(STREAM)
  end

  def said(message)
    words = message.body.split.size
    add("#{message.nickname} said #{words} #{"word".pluralize(words)}")
  end

  def add(text)
    at = Time.now.utc.strftime("%H:%M:%S")
    html = %(<turbo-stream action="prepend" target="activity"><template>) +
      %(<li><time>#{at}</time> #{ERB::Util.html_escape(text)}</li></template></turbo-stream>)
    ActionCable.server.broadcast(STREAM, html)
  end
end
