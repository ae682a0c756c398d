# frozen_string_literal: true

Rails.application.routes.draw do
  root "chat#show"
  post "/nickname" => "chat#nickname"
  get "/actioncable.js" => "chat#client"
end
