# frozen_string_literal: true

require "spec_helper"
require "set"
require "action_cable"
require "anycable_rs"
require "anycable_rs/action_cable/patches"

# The connection-identifier readers anycable-rs gives channels in place of Action
# Cable's singleton methods: what a channel object answers, and which are actions.
RSpec.describe AnyCableRs::ActionCable::IdentifierReaders do
  conn_class = Struct.new(:identifiers, :current_user, :tab)

  def channel_class(&body)
    klass = Class.new(ActionCable::Channel::Base, &body)
    klass.singleton_class.prepend(AnyCableRs::ActionCable::ChannelBroadcastPatch)
    klass
  end

  def channel_for(klass, connection)
    channel = klass.allocate
    channel.instance_variable_set(:@connection, connection) # Channel::Base#connection reads it
    channel
  end

  it "answers the connection's identifiers, winning over a method of the class's own as singleton methods do" do
    klass = channel_class { def tab = "own" }
    described_class.define(klass, Set[:current_user, :tab])
    channel = channel_for(klass, conn_class.new(Set[:current_user, :tab], "alice", "t1"))
    expect([channel.current_user, channel.tab]).to eq(%w[alice t1])
    expect(channel.singleton_methods).to be_empty
  end

  it "falls back to the class's own method for a connection of a class without that identifier" do
    klass = channel_class { def tab = "own" }
    described_class.define(klass, Set[:current_user, :tab])
    other = channel_for(klass, conn_class.new(Set[:current_user], "bob", nil))
    expect([other.current_user, other.tab]).to eq(%w[bob own])
    bare = channel_for(channel_class.tap { |k| described_class.define(k, Set[:tab]) }, conn_class.new(Set[], nil, nil))
    expect { bare.tab }.to raise_error(NoMethodError)
  end

  it "keeps the readers out of the actions a client may perform, but not a public method of the class's own" do
    klass = channel_class do
      def speak = nil
      def tab = "own"
    end
    described_class.define(klass, Set[:current_user, :tab])
    expect(klass.action_methods).to include("speak", "tab")
    expect(klass.action_methods).not_to include("current_user")
    sub = Class.new(klass)
    described_class.define(sub, Set[:current_user])
    expect(sub.action_methods).not_to include("current_user")
  end
end
