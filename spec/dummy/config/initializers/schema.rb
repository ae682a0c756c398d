# frozen_string_literal: true

# The test database is made at boot; the specs point DUMMY_DATABASE at a temp file.
ActiveRecord::Schema.verbose = false
ActiveRecord::Schema.define do
  create_table :users, if_not_exists: true do |t|
    t.string :name
  end
  create_table :events, if_not_exists: true do |t|
    t.string :name
    t.string :detail
    t.timestamps
  end
end
ActiveRecord::Base.connection.execute("PRAGMA journal_mode=WAL")
