# frozen_string_literal: true

Rails.application.routes.draw do
  root "chat#show"
  post "/nickname" => "chat#nickname"
  # The page's JS modules (@anycable/web, Turbo), from the demo's node_modules.
  get "/vendor/*path" => "vendor#show", format: false
end
