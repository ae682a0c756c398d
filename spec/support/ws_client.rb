# frozen_string_literal: true

require "socket"
require "json"
require "uri"
require "websocket/driver"

# A real WebSocket client over TCP (websocket-driver does the framing), with helpers
# for the Action Cable protocol.
class WsClient
  class Timeout < StandardError; end

  # Queue with a timed pop (Ruby 3.1's Queue#pop has no timeout).
  class TimedQueue
    def initialize
      @items = []
      @lock = Mutex.new
      @cond = ConditionVariable.new
    end

    def <<(item)
      @lock.synchronize do
        @items << item
        @cond.broadcast
      end
      self
    end

    def pop(timeout)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      @lock.synchronize do
        while @items.empty?
          left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
          return nil if left <= 0

          @cond.wait(@lock, left)
        end
        @items.shift
      end
    end
  end

  attr_reader :url, :driver, :close_event, :error

  def initialize(url, headers: {}, protocols: ["actioncable-v1-json", "actioncable-unsupported"])
    @url = url
    uri = URI(url)
    @socket = TCPSocket.new(uri.host, uri.port)
    @queue = TimedQueue.new
    @open = TimedQueue.new
    @driver = WebSocket::Driver.client(self, protocols: protocols)
    headers.each { |k, v| @driver.set_header(k, v) }
    @driver.on(:open) { @open << :open }
    @driver.on(:message) { |e| @queue << e.data }
    @driver.on(:error) { |e| @error = e.message }
    @driver.on(:close) do |e|
      @close_event = e
      @queue << :closed
      @open << :closed
    end
    @driver.start
    @reader = Thread.new { read_loop }
  end

  def write(data)
    @socket.write(data)
  rescue IOError, SystemCallError
    nil # the server closed first; the close event says so
  end

  # Waits for the handshake; true when open.
  def open?(timeout: 5)
    pop(@open, timeout) == :open
  end

  def protocol
    @driver.protocol
  end

  def send_json(hash)
    @driver.text(JSON.generate(hash))
  end

  def send_raw(text)
    @driver.text(text)
  end

  # The next message that is not a ping (parsed), or :closed.
  def receive(timeout: 5, pings: false)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      item = pop(@queue, left.positive? ? left : 0)
      return item if item == :closed

      msg = JSON.parse(item)
      next if !pings && msg["type"] == "ping"

      return msg
    end
  end

  # Asserts nothing but pings arrives for `seconds`.
  def silent_for?(seconds)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
    loop do
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      return true if left <= 0

      begin
        msg = receive(timeout: left)
        return false unless msg.is_a?(Hash) && msg["type"] == "ping"
      rescue Timeout
        return true
      end
    end
  end

  def welcome!
    raise "handshake failed: #{@error}" unless open?

    msg = receive
    raise "expected welcome, got #{msg.inspect}" unless msg.is_a?(Hash) && msg["type"] == "welcome"

    msg
  end

  def subscribe(identifier)
    id = identifier.is_a?(String) ? identifier : JSON.generate(identifier)
    send_json(command: "subscribe", identifier: id)
    id
  end

  def perform(identifier, action, data = {})
    send_json(command: "message", identifier: identifier, data: JSON.generate(data.merge(action: action)))
  end

  def close
    @driver.close
    @reader.join(2)
    @socket.close unless @socket.closed?
  end

  def closed?
    !@close_event.nil?
  end

  private

  def pop(queue, timeout)
    queue.pop(timeout) || raise(Timeout, "nothing received within #{timeout}s")
  end

  def read_loop
    loop do
      data = @socket.readpartial(16_384)
      @driver.parse(data)
    end
  rescue EOFError, IOError, Errno::ECONNRESET
    @queue << :closed unless @close_event
    @open << :closed
  end
end
