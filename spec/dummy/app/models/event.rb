# frozen_string_literal: true

# What channel and connection callbacks did, in order, for the specs to read.
class Event < ApplicationRecord
  # One writer per process at a time: sqlite3 1.4 waits for a busy database while
  # holding the GVL, so two threads writing at once stalled every thread for up to
  # the busy timeout (and raised BusyException). With the journal in WAL mode
  # (initializers/schema.rb) readers never wait for the writer.
  WRITE_LOCK = Mutex.new

  def self.record(name, detail = nil)
    WRITE_LOCK.synchronize { create!(name: name, detail: detail.to_s) }
  end
end
