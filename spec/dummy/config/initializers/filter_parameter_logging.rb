# frozen_string_literal: true

# As a generated Rails app has it: the log hides these parameters' values, including in
# the "Started GET \"/cable?token=…\" [WebSocket]" lines.
Rails.application.config.filter_parameters += %i[passw secret token _key crypt salt certificate otp ssn]
