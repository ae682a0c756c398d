# frozen_string_literal: true

# The app every server in the comparison runs: Rails' own Action Cable, or
# anycable-rs embedded (ANYCABLE_EMBEDDED=true). No database, no auth.
require "rails"
require "action_controller/railtie"
require "action_cable/engine"

$LOAD_PATH.unshift File.expand_path("../../lib", __dir__)
require "anycable_rs"

class BenchApp < Rails::Application
  config.root = __dir__
  # Production defaults: with both on, Rails' executor skips the code-loading interlock.
  config.eager_load = true
  config.cache_classes = true
  config.secret_key_base = "bench"
  # A production app's logging: Rails' default production level (:info), written
  # (to /dev/null, so the disk is not measured). Action Cable logs through it too.
  config.logger = ActiveSupport::Logger.new(File::NULL)
  config.log_level = :info
  config.hosts.clear
  config.action_cable.disable_request_forgery_protection = true
  config.action_cable.worker_pool_size = Integer(ENV.fetch("RAILS_MAX_THREADS", 5))
end

module ApplicationCable
  class Connection < ActionCable::Connection::Base
  end

  class Channel < ActionCable::Channel::Base
  end
end

class BenchmarkChannel < ApplicationCable::Channel
  def subscribed
    stream_from "all"
  end

  def echo(data)
    transmit data
  end

  def broadcast(data)
    ActionCable.server.broadcast "all", data
    transmit data
  end
end

BenchApp.initialize!
# The floor under a WebSocket connect on Puma's port: a plain request through the same
# Puma and middleware stack (`anycable-bench http`).
BenchApp.routes.draw do
  get "/up", to: ->(_env) { [200, {"Content-Type" => "text/plain"}, ["ok"]] }
end
ActionCable.server.config.cable = {"adapter" => "async"}
run BenchApp
