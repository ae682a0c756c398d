# frozen_string_literal: true

# The app RSpec runs in real Puma: every Action Cable feature anycable-rs must run
# unchanged has a channel here (app/channels) and the specs drive it over WebSockets.
require "rails"
require "active_record/railtie"
require "action_controller/railtie"
require "action_cable/engine"
require "global_id/railtie"

$LOAD_PATH.unshift File.expand_path("../../../lib", __dir__)
require "anycable_rs"

module Dummy
  # Something a middleware puts in the env (as Warden does), for the specs of what a
  # connection keeps of its env after connect.
  class MarkEnv
    def initialize(app)
      @app = app
    end

    def call(env)
      env["dummy.middleware"] = "seen"
      @app.call(env)
    end
  end

  class Application < Rails::Application
    config.load_defaults 6.1
    config.root = File.expand_path("..", __dir__)
    config.eager_load = false
    config.cache_classes = true
    config.secret_key_base = "dummy-secret-key-base-for-tests-only-0123456789abcdef"
    config.session_store :cookie_store, key: "_dummy_session"
    config.logger = ActiveSupport::Logger.new(ENV.fetch("DUMMY_LOG", File.expand_path("../log/test.log", __dir__)))
    config.log_level = ENV.fetch("DUMMY_LOG_LEVEL", "debug").to_sym
    config.action_cable.allowed_request_origins = ["http://allowed.test"]
    config.hosts.clear
    config.middleware.use MarkEnv

    # Specs point Action Cable (and the broadcast defaults anycable-rs takes from it) at
    # another cable.yml without touching config/cable.yml.
    initializer "dummy.cable_yml", after: "action_cable.set_configs" do |app|
      app.paths["config/cable"] = ENV["DUMMY_CABLE_YML"] if ENV["DUMMY_CABLE_YML"]
    end
  end
end
