# frozen_string_literal: true

module AnyCableRs
  VERSION = "0.1.0"
end
