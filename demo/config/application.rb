# frozen_string_literal: true

# The demo: a chat room served by Puma, its WebSockets by anycable-rs inside the same
# process (ANYCABLE_EMBEDDED=true). The page uses the official @anycable/web client.
require "rails"
require "active_record/railtie"
require "action_controller/railtie"
require "action_view/railtie"
require "action_cable/engine"
require "global_id/railtie"

$LOAD_PATH.unshift File.expand_path("../../lib", __dir__)
require "anycable_rs"

module Demo
  class Application < Rails::Application
    config.load_defaults 6.1
    config.root = File.expand_path("..", __dir__)
    config.eager_load = false
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE", "demo-only-secret-key-base-change-me-0123456789")
    config.session_store :cookie_store, key: "_demo_session"
    config.logger = ActiveSupport::Logger.new($stdout)
    config.log_level = ENV.fetch("LOG_LEVEL", "info").to_sym
    config.hosts.clear
    # Same origin as the page: the browser sends the app's cookies with the socket.
    config.action_cable.allowed_request_origins = [%r{\Ahttps?://(localhost|127\.0\.0\.1)(:\d+)?\z}]
  end
end
