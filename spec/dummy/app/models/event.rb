# frozen_string_literal: true

# What channel and connection callbacks did, in order, for the specs to read.
class Event < ApplicationRecord
  def self.record(name, detail = nil)
    create!(name: name, detail: detail.to_s)
  end
end
