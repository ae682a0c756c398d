# frozen_string_literal: true

module AnyCableRs
  # Log lines a client can cause from the Ruby side (an unknown identifier, a message
  # to a subscription it does not hold, an exception its input sets off): each kind at
  # most once a second in the process, the count of the lines dropped told with the
  # next one, and client-made text cut to MAX_TEXT bytes. Without it, 2 000 messages
  # to a 32 KB identifier wrote 62.7 MiB of Rails log in 1.4 s from one socket. The
  # Rust side bounds its own lines the same way (anycable_core::logging).
  module BoundedLog
    MAX_TEXT = 512
    INTERVAL = 1.0

    @lock = Mutex.new
    # kind => [when its last line was written (monotonic seconds), lines dropped since]
    @kinds = {}

    class << self
      # `text` cut to MAX_TEXT bytes (on a character boundary), saying how long it was.
      def clip(text)
        text = text.to_s
        return text if text.bytesize <= MAX_TEXT

        "#{text.byteslice(0, MAX_TEXT).scrub("")}… (#{text.bytesize} bytes)"
      end

      # Writes `message` (a String, or a block that makes it: only built when written)
      # at `level` unless a line of `kind` was written within the last second.
      def write(logger, level, kind, message = nil)
        dropped = admit(kind)
        return false unless dropped

        text = message || yield
        text = "#{text} (#{dropped} more such lines dropped since the last)" if dropped.positive?
        logger.public_send(level, text)
        true
      end

      def error(logger, kind, message = nil, &block)
        write(logger, :error, kind, message, &block)
      end

      # For tests: forget what was written.
      def reset!
        @lock.synchronize { @kinds.clear }
      end

      private

      # The count of lines dropped since the last one, or nil when this one is dropped too.
      def admit(kind)
        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        @lock.synchronize do
          last, dropped = @kinds[kind]
          if last && now - last < INTERVAL
            @kinds[kind] = [last, dropped + 1]
            return nil
          end
          @kinds[kind] = [now, 0]
          dropped || 0
        end
      end
    end
  end
end
