# frozen_string_literal: true

require "json"

module AnyCableRs
  # AnyCable's `state_attr_accessor`, for channels and connections: attributes that a
  # restored session gets back (AnyCable's istate and cstate). An attribute is a plain
  # instance variable while the socket lives; each write also gives the server the
  # value as JSON (records as GlobalIDs), which the server keeps with the session
  # when its socket closes. A restored channel or connection reads it back on first
  # use (records located again then, from their GlobalID).
  #
  #   class ChatChannel < ApplicationCable::Channel
  #     state_attr_accessor :room
  #     def subscribed
  #       self.room = Room.find(params[:id])
  #       stream_for room
  #     end
  #   end
  #
  # Values: nil, true, false, finite numbers, strings, symbols (read back as strings),
  # records with a GlobalID (read back as nil if deleted meanwhile), and arrays and
  # hashes of those (keys read back as strings); anything else is an ArgumentError at
  # the write. The writer is private (`self.room = …`): a public one would be an action
  # clients could perform. Under plain Action Cable these are plain attributes.
  module State
    # Extended into ActionCable::Channel::Base and ActionCable::Connection::Base.
    module Accessors
      def state_attr_accessor(*names)
        names.each do |name|
          name = name.to_s
          ivar = :"@#{name}"
          define_method(name) do
            return instance_variable_get(ivar) if instance_variable_defined?(ivar)

            raw = State.take_restored(self, name)
            instance_variable_set(ivar, raw.nil? ? nil : State.load(raw))
          end
          define_method(:"#{name}=") do |value|
            json = State.dump(value, name)
            instance_variable_set(ivar, value)
            State.record(self, name, json)
          end
          # A public writer would be an action a client could perform (Action Cable
          # takes a channel's public methods as its actions): `self.name = …` only.
          private :"#{name}="
        end
      end
    end

    # Only sessions on AnyCable's extended protocol can be restored.
    RESTORABLE_PROTOCOL = "actioncable-v1-ext-json"
    RESTORED = :@__anycable_rs_restored_state
    # A record is kept as {GID_KEY => its GlobalID}; only such a hash is located when
    # read back (a string that merely looks like a GlobalID stays a string).
    GID_KEY = "_anycable_rs_gid"

    module_function

    def dump(value, name)
      JSON.generate(serialize(value, name))
    rescue JSON::GeneratorError => e
      raise ArgumentError, "state_attr_accessor :#{name} cannot keep #{value.inspect} (#{e.message})"
    end

    def load(json)
      deserialize(JSON.parse(json))
    end

    def serialize(value, name)
      case value
      when nil, true, false, String, Integer, Float then value
      when Symbol then value.to_s
      when Array then value.map { |v| serialize(v, name) }
      when Hash then value.to_h { |k, v| [k.to_s, serialize(v, name)] }
      else
        return {GID_KEY => value.to_global_id.to_s} if value.respond_to?(:to_global_id)

        raise ArgumentError, "state_attr_accessor :#{name} cannot keep a #{value.class} " \
          "(nil, booleans, numbers, strings, records with a GlobalID, and arrays and hashes of those)"
      end
    end

    def deserialize(value)
      case value
      when Array then value.map { |v| deserialize(v) }
      when Hash
        return locate(value[GID_KEY]) if value.size == 1 && value.key?(GID_KEY)

        value.transform_values { |v| deserialize(v) }.with_indifferent_access
      else value
      end
    end

    # The record, or nil when it is gone (deleted since it was kept).
    def locate(gid)
      return gid unless defined?(::GlobalID::Locator)

      ::GlobalID::Locator.locate(gid)
    rescue StandardError => e
      raise unless e.class.name == "ActiveRecord::RecordNotFound"

      nil
    end

    # Gives the server the value, on an extended-protocol socket of ours (only those
    # can be restored); elsewhere the attribute is all there is.
    def record(owner, name, json)
      connection = owner.is_a?(::ActionCable::Channel::Base) ? owner.connection : owner
      websocket = ActionCable::Compat.websocket(connection)
      return unless websocket && websocket.protocol == RESTORABLE_PROTOCOL

      scope = owner.equal?(connection) ? "" : owner.identifier
      websocket.session.set_state(scope, name, json)
    end

    # What a restore gave back for `owner`: name => JSON text.
    def restore(owner, values)
      owner.instance_variable_set(RESTORED, values.dup) unless values.nil? || values.empty?
    end

    def take_restored(owner, name)
      values = owner.instance_variable_get(RESTORED) if owner.instance_variable_defined?(RESTORED)
      values&.delete(name)
    end
  end
end
