# frozen_string_literal: true

require "socket"

# A Server-Sent Events client over a plain socket: sends one request, reads the
# response head, then events as the WHATWG spec frames them (`event:`, `data:` lines
# joined by newlines, `id:`, `retry:`; a blank line ends one).
class SseClient
  class Timeout < StandardError; end

  Event = Struct.new(:event, :data, :id, :retry, keyword_init: true) do
    def json
      JSON.parse(data)
    end
  end

  attr_reader :status, :headers

  def initialize(port, target, method: "GET", headers: {}, body: nil, host: "127.0.0.1")
    @socket = TCPSocket.new(host, port)
    request = +"#{method} #{target} HTTP/1.1\r\nHost: #{host}:#{port}\r\n"
    headers.each { |k, v| request << "#{k}: #{v}\r\n" }
    request << "Content-Length: #{body.bytesize}\r\n" if body
    request << "\r\n"
    request << body if body
    @socket.write(request)
    @buf = +"".b
    read_head
  end

  # The body of a response that is not a stream (a refusal): what comes until the
  # connection closes.
  def body(timeout: 5)
    loop { fill(timeout) }
  rescue EOFError
    @buf.dup.force_encoding("UTF-8")
  end

  # The next event (pings skipped unless `pings`), or :closed when the stream ended.
  def next_event(timeout: 5, pings: false)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      while (at = @buf.index("\n\n"))
        block = @buf.slice!(0, at + 2).force_encoding("UTF-8")
        event = parse(block)
        next if event.nil? || (event.event == "ping" && !pings)

        return event
      end
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise Timeout, "no event within #{timeout}s (buffered: #{@buf.inspect})" unless left.positive?

      fill(left)
    end
  rescue EOFError
    :closed
  end

  # True when nothing but pings comes for `seconds`.
  def silent_for?(seconds)
    event = next_event(timeout: seconds)
    return false if event == :closed

    raise "got #{event.inspect}"
  rescue Timeout
    true
  end

  def close
    @socket.close unless @socket.closed?
  end

  private

  def read_head
    until (at = @buf.index("\r\n\r\n"))
      fill(5)
    end
    head = @buf.slice!(0, at + 4).force_encoding("UTF-8")
    lines = head.split("\r\n")
    @status = lines.first.split(" ")[1].to_i
    @headers = lines.drop(1).to_h do |line|
      name, value = line.split(":", 2)
      [name.downcase, value.to_s.strip]
    end
  end

  def fill(timeout)
    raise Timeout, "nothing within #{timeout}s" unless IO.select([@socket], nil, nil, timeout)

    @buf << @socket.readpartial(65_536)
  end

  def parse(block)
    fields = {data: []}
    block.split("\n").each do |line|
      name, value = line.split(":", 2)
      value = value.to_s.delete_prefix(" ")
      case name
      when "data" then fields[:data] << value
      when "event", "id", "retry" then fields[name.to_sym] = value
      end
    end
    return nil if fields[:data].empty? && fields[:retry].nil?

    Event.new(event: fields[:event], data: fields[:data].join("\n"), id: fields[:id], retry: fields[:retry])
  end
end
