# frozen_string_literal: true

# Per unit of work (reset by the Rails executor), for the specs that check each command
# runs in one of its own.
class Current < ActiveSupport::CurrentAttributes
  attribute :marker
end
