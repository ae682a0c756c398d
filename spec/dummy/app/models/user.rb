# frozen_string_literal: true

class User < ApplicationRecord
  # A restored session's records are located again (GlobalID: `find`); "sloth" takes
  # its time there, as a slow database would (spec/integration/session_restore_spec.rb).
  def self.find(*args)
    found = super
    if found.is_a?(User) && found.name == "sloth"
      sleep 2
      Event.record("located", found.name)
    end
    found
  end
end
