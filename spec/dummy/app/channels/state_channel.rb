# frozen_string_literal: true

# Instance state that lives as long as the socket, and what the connection saw.
class StateChannel < ApplicationCable::Channel
  def subscribed
    @count = 0
    @room = params[:room]
    Event.record("subscribed", "#{current_user.name}:#{@room}")
  end

  def unsubscribed
    Event.record("unsubscribed", "#{current_user.name}:#{@room}")
  end

  def increment
    @count += 1
    transmit({ count: @count, room: @room, object_id: object_id })
  end

  # What `subscribed` left in the object, beside what the identifier says.
  def ivars
    transmit({"room" => @room, "count" => @count, "params_room" => params[:room], "user" => current_user.name})
  end

  def whoami
    transmit({"user" => current_user.name, "tab" => tab})
  end

  def facts
    transmit connection.request_facts.merge("user" => current_user.name, "tab" => tab)
  end

  def facts_now
    transmit connection.request_facts_now
  end

  # Each command is a unit of work of its own (the Rails executor): what one sets in
  # Current, or caches in Active Record's query cache, the next does not see.
  def remember(data)
    Current.marker = data["marker"]
    transmit({"users" => User.count, "marker" => Current.marker})
  end

  def recall
    transmit({"users" => User.count, "marker" => Current.marker,
              "query_cache" => ActiveRecord::Base.connection.query_cache_enabled})
  end

  def identifier_readers
    transmit({"singleton_methods" => singleton_methods.map(&:to_s), "user" => current_user.name, "tab" => tab})
  end

  def statistics
    stats = connection.statistics
    transmit({"request_id" => stats[:request_id], "subscriptions" => stats[:subscriptions]})
  end

  def request_held
    transmit({"request_held" => connection.request_held?})
  end

  def stream(data)
    stream_from data["name"]
    transmit({ streaming: data["name"] })
  end

  def stop(data)
    stop_stream_from data["name"]
    transmit({ stopped: data["name"] })
  end

  def stop_all
    stop_all_streams
    transmit({ stopped: "all" })
  end

  def touch_db
    transmit({ users: User.count })
  end
end
