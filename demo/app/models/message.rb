# frozen_string_literal: true

class Message < ApplicationRecord
  validates :body, presence: true, length: {maximum: 1000}

  def as_cable_json
    {id: id, nickname: nickname, body: body, at: created_at.utc.iso8601}
  end
end
