# frozen_string_literal: true

# Counts Action Cable's instrumentation events (perform_action, transmit, …), so specs
# can check that they fire for every action, whatever the log level.
NOTIFICATION_COUNTS = Concurrent::Map.new

ActiveSupport::Notifications.subscribe(/\.action_cable\z/) do |name, *|
  NOTIFICATION_COUNTS.compute(name) { |count| (count || 0) + 1 }
end
