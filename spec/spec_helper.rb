# frozen_string_literal: true

$LOAD_PATH.unshift File.expand_path("../lib", __dir__)
require "timeout"
require "openssl"
require_relative "support/ws_client"
require_relative "support/puma_server"
require_relative "support/cable_helpers"
require_relative "support/broker_servers"
require_relative "support/prometheus_text"
require_relative "support/running_versions"

RSpec.configure do |config|
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.disable_monkey_patching!
  config.order = :defined
  # A spec that cannot run here must fail, never pass quietly.
  config.fail_if_no_examples = true
  # No example may hang the suite (`timeout:` metadata for one that loops on purpose).
  config.around do |example|
    Timeout.timeout(example.metadata.fetch(:timeout, 90)) { example.run }
  end
end
