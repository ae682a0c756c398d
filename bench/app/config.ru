# frozen_string_literal: true

# The app every server in the comparison runs: Rails' own Action Cable, or
# anycable-rs embedded (ANYCABLE_EMBEDDED=true). Its connection class is the one the
# Rails guides and a generated app lead to: `identified_by :current_user`, the user
# looked up through Active Record (SQLite) from `cookies.encrypted[:user_id]`, which
# `/login` sets (with a cookie-store session, as a signed-in browser would carry).
require "rails"
require "active_record/railtie"
require "action_controller/railtie"
require "action_cable/engine"
require "global_id/railtie"
require "tmpdir"

$LOAD_PATH.unshift File.expand_path("../../lib", __dir__)
require "anycable_rs"

class BenchApp < Rails::Application
  config.load_defaults 6.1
  config.root = __dir__
  # Production defaults: with both on, Rails' executor skips the code-loading interlock.
  config.eager_load = true
  config.cache_classes = true
  config.secret_key_base = "bench-secret-key-base-0123456789abcdef0123456789abcdef"
  config.session_store :cookie_store, key: "_bench_session"
  # A production app's logging: Rails' default production level (:info), written
  # (to /dev/null, so the disk is not measured). Action Cable logs through it too.
  config.logger = ActiveSupport::Logger.new(File::NULL)
  config.log_level = :info
  config.hosts.clear
  config.action_cable.disable_request_forgery_protection = true
  config.action_cable.worker_pool_size = Integer(ENV.fetch("RAILS_MAX_THREADS", 5))
  # One database file per server process, created at boot.
  config.paths.add "config/database", with: File.expand_path("database.yml", __dir__)
end

class ApplicationRecord < ActiveRecord::Base
  self.abstract_class = true
end

class User < ApplicationRecord
end

module ApplicationCable
  class Connection < ActionCable::Connection::Base
    identified_by :current_user

    def connect
      self.current_user = find_verified_user
    end

    private

    def find_verified_user
      User.find_by(id: cookies.encrypted[:user_id]) || reject_unauthorized_connection
    end
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

class SessionsController < ActionController::Base
  def create
    user = User.find_or_create_by!(name: params.fetch(:name, "bench"))
    cookies.encrypted[:user_id] = user.id
    session[:user_id] = user.id
    head :no_content
  end
end

BenchApp.initialize!
ActiveRecord::Schema.verbose = false
ActiveRecord::Schema.define do
  create_table :users, if_not_exists: true do |t|
    t.string :name, null: false
    t.index :name, unique: true
  end
end
BenchApp.routes.draw do
  get "/login", to: "sessions#create"
  # The floor under a WebSocket connect on Puma's port: a plain request through the same
  # Puma and middleware stack (`anycable-bench http`).
  get "/up", to: ->(_env) { [200, {"Content-Type" => "text/plain"}, ["ok"]] }
  # The reconnect storm (bench/storm.rb): a probe broadcast to every subscriber, and
  # (anycable-rs with ANYCABLE_JWT_SECRET) a token for the signed-in bench user.
  post "/probe", to: lambda { |env|
    ActionCable.server.broadcast("all", {probe: Rack::Request.new(env).params["n"].to_i})
    [201, {"Content-Type" => "text/plain"}, [""]]
  }
  if ENV["ANYCABLE_JWT_SECRET"]
    get "/token", to: lambda { |_env|
      user = User.find_or_create_by!(name: "bench")
      [200, {"Content-Type" => "text/plain"}, [AnyCableRs::JWT.encode({current_user: user}, ttl: 3600)]]
    }
  end
  # The probes' stream, signed (a `$pubsub` subscription: no channel class, no Ruby).
  if ENV["ANYCABLE_STREAMS_SECRET"]
    get "/signed", to: ->(_env) { [200, {"Content-Type" => "text/plain"}, [AnyCableRs::Streams.signed("all")]] }
  end
  # Where the memory goes (bench/memory_breakdown.rb, bench/churn_leak.rb): RSS and live
  # heap slots after a full GC (/heap); live objects by class and, with BENCH_TRACE=1,
  # by allocation site (/objects). Only with BENCH_PROBE=1.
  if ENV["BENCH_PROBE"] == "1"
    get "/heap", to: lambda { |_env|
      GC.start(full_mark: true, immediate_sweep: true)
      body = {rss_kib: File.read("/proc/self/status")[/VmRSS:\s+(\d+)/, 1].to_i,
              heap_live_slots: GC.stat(:heap_live_slots),
              sessions: AnyCableRs.stats[:sessions] || ActionCable.server.connections.size}
      [200, {"Content-Type" => "application/json"}, [body.to_json]]
    }
    get "/objects", to: lambda { |_env|
      require "objspace"
      GC.start(full_mark: true, immediate_sweep: true)
      by_class = Hash.new { |h, k| h[k] = [0, 0] }
      by_site = Hash.new { |h, k| h[k] = [0, 0] }
      ObjectSpace.each_object do |o|
        klass = (o.class rescue BasicObject).to_s # rubocop:disable Style/RescueModifier
        size = ObjectSpace.memsize_of(o)
        row = by_class[klass]
        row[0] += 1
        row[1] += size
        file = ObjectSpace.allocation_sourcefile(o)
        next unless file

        site = by_site["#{klass} #{file.sub(%r{.*/gems/}, "")}:#{ObjectSpace.allocation_sourceline(o)}"]
        site[0] += 1
        site[1] += size
      end
      body = {rss_kib: File.read("/proc/self/status")[/VmRSS:\s+(\d+)/, 1].to_i,
              heap_live_slots: GC.stat(:heap_live_slots), classes: by_class, sites: by_site}
      [200, {"Content-Type" => "application/json"}, [body.to_json]]
    }
  end
end
ActionCable.server.config.cable = {"adapter" => "async"}
if ENV["BENCH_TRACE"] == "1"
  require "objspace"
  ObjectSpace.trace_object_allocations_start
end
run BenchApp
