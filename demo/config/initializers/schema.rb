# frozen_string_literal: true

ActiveRecord::Schema.verbose = false
ActiveRecord::Schema.define do
  create_table :messages, if_not_exists: true do |t|
    t.string :nickname, null: false
    t.text :body, null: false
    t.timestamps
  end
end
