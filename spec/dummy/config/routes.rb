# frozen_string_literal: true

Rails.application.routes.draw do
  get "/login" => "test#login"
  get "/token" => "test#token"
  post "/broadcast" => "test#broadcast"
  get "/events" => "test#events"
  delete "/events" => "test#clear_events"
  post "/remote_disconnect" => "test#remote_disconnect"
  get "/stats" => "test#stats"
  get "/notifications" => "test#notifications"
  get "/sse_page" => "test#sse_page"
  # Writes for the Durable Streams conformance tests (the server only reads streams).
  match "/ds/*name" => "test#ds_write", via: %i[put post], format: false
end
