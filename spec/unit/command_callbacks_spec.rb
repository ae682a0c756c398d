# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"
require "rack/mock"
require "anycable_rs"
require "anycable_rs/dispatcher"
require "anycable_rs/action_cable/patches"

# The dispatcher runs client commands with its own decode and dispatch, not through
# Connection::Base#handle_channel_command, so it must run the connection's :command
# callbacks itself (Rails 7.1+). Rails 6.1 has no such callbacks: the connection class
# here gets them the way 7.1's Connection::Callbacks defines them.
RSpec.describe AnyCableRs::Dispatcher, "commands and connection command callbacks" do
  ac = AnyCableRs::ActionCable
  ::ActionCable::Channel::Base.prepend(ac::ChannelPatch) unless ::ActionCable::Channel::Base <= ac::ChannelPatch

  native_class = Class.new do
    attr_reader :sent

    def initialize = @sent = []
    def transmit(data) = @sent << JSON.parse(data)
    def closed? = false
    def close_quietly = nil
    def stream(*) = nil
    def unstream(*) = nil
    def whisper_to(*) = nil
    def add_subscription(*) = nil
    def remove_subscription(*) = nil
    def pin_subscription(*) = nil
    def sid = "stub-sid"
  end

  stub_job = Struct.new(:kind, :session_id, :command, :identifier, :data, :answers) do
    def ok = answers << :ok
  end

  let(:job_class) { stub_job }
  let(:log) { StringIO.new }
  let(:dispatcher) { described_class.new(Object.new) }
  let(:native) { native_class.new }
  let(:trail) { [] }
  let(:connection_class) do
    trail = self.trail
    Class.new(::ActionCable::Connection::Base) do
      include ActiveSupport::Callbacks
      define_callbacks :command
      set_callback(:command, :before) { trail << :before }
      set_callback(:command, :around) do |_connection, block|
        trail << :around_in
        block.call
        trail << :around_out
      end
      set_callback(:command, :after) { trail << :after }
    end
  end
  let(:identifier) { {channel: "CommandTrailChannel"}.to_json }

  around do |example|
    config = ::ActionCable.server.config
    saved = [config.logger, config.log_tags, AnyCableRs.logger]
    config.logger = AnyCableRs.logger = Logger.new(log)
    config.log_tags = []
    example.run
  ensure
    config.logger, config.log_tags, AnyCableRs.logger = saved
  end

  before do
    trail = self.trail
    stub_const("CommandTrailChannel", Class.new(::ActionCable::Channel::Base) do
      define_method(:subscribed) { trail << :subscribed }
      define_method(:unsubscribed) { trail << :unsubscribed }
      define_method(:speak) { |data| trail << [:speak, data["text"]] }
    end)
  end

  def open_session(klass)
    env = Rack::MockRequest.env_for("/cable")
    ac = AnyCableRs::ActionCable
    websocket = ac::WebSocket.new(native, "actioncable-v1-json")
    connection = ac::Compat.build_connection(klass, dispatcher.cable_server, env, websocket, coder: ac::Coder)
    # As the dispatcher registers it: the server's session (Native::Session) and the connection.
    dispatcher.instance_variable_get(:@sessions)[7] = described_class::Entry.new(native, connection)
    connection
  end

  def run(command, data = nil)
    job = job_class.new(:command, 7, command, identifier, data, [])
    dispatcher.dispatch(job)
    expect(job.answers).to eq([:ok])
  end

  it "runs subscribe, message and unsubscribe each inside the :command callbacks" do
    open_session(connection_class)
    run(:subscribe)
    run(:message, {action: "speak", text: "hi"}.to_json)
    run(:unsubscribe)
    command = ->(inner) { [:before, :around_in, inner, :after, :around_out] }
    expect(trail).to eq(command.call(:subscribed) + command.call([:speak, "hi"]) + command.call(:unsubscribed))
    expect(native.sent.first).to eq("identifier" => identifier, "type" => "confirm_subscription")
  end

  it "runs no command a before_command callback halts" do
    connection_class.set_callback(:command, :before) { throw :abort }
    open_session(connection_class)
    run(:subscribe)
    expect(trail).not_to include(:subscribed)
    expect(native.sent).to be_empty
  end

  it "runs commands as before on a connection class without the callbacks" do
    open_session(Class.new(::ActionCable::Connection::Base))
    run(:subscribe)
    run(:message, {action: "speak", text: "plain"}.to_json)
    expect(trail).to eq([:subscribed, [:speak, "plain"]])
  end

  it "answers the job and logs when a callback raises" do
    connection_class.set_callback(:command, :before) { raise "callback exploded" }
    open_session(connection_class)
    run(:subscribe)
    expect(trail).not_to include(:subscribed)
    expect(log.string).to include("callback exploded")
  end
end
