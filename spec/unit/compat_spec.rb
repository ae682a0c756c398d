# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"
require "rack/mock"
require "action_cable"
require "anycable_rs"
require "anycable_rs/action_cable/websocket"
require "anycable_rs/action_cable/server"
require "anycable_rs/action_cable/patches"
require "anycable_rs/action_cable/coder"

# Only Rails 6.1 installs here, so the branches for later Action Cables run against
# small stand-ins with the shape the compat module detects (see the "checked:" notes in
# lib/anycable_rs/action_cable/compat.rb). Where an example states what the running
# Action Cable does, the expectation comes from the versions read (by version number,
# independently of the feature detection under test), so the file also runs against
# later Rails put on RUBYLIB by hand.
RSpec.describe AnyCableRs::ActionCable::Compat do
  compat = described_class
  ac = AnyCableRs::ActionCable
  version = ::ActionCable.gem_version
  at_least = ->(v) { version >= Gem::Version.new(v) }
  # 7.1.0: connection command callbacks; channel action lines at debug, filtered;
  # transmit's debug line built lazily.
  rails71 = at_least.call("7.1.0")
  # Channel::Base#unsubscribed? and the stream_from guard: 7.2.3, 8.0.3, 8.1.0.
  major, minor, tiny = version.segments
  guard = at_least.call("8.1.0.a") || ([[7, 2], [8, 0]].include?([major, minor]) && tiny.to_i >= 3)
  # What the Railtie does in an app.
  ::ActionCable::Channel::Base.prepend(ac::ChannelPatch) unless ::ActionCable::Channel::Base <= ac::ChannelPatch

  # The server's session (Native::Session), as Ruby sees it.
  native_class = Class.new do
    attr_reader :sent, :streams

    def initialize
      @sent = []
      @streams = []
      @closed = false
    end

    def transmit(data)
      @sent << data
    end

    def closed?
      @closed
    end

    def close_quietly
      @closed = true
    end

    def stream(channel, identifier)
      @streams << [:stream, channel, identifier]
    end

    def unstream(channel, identifier)
      @streams << [:unstream, channel, identifier]
    end
  end

  # Records what channels subscribe, as the pub/sub adapter would see it.
  pubsub_class = Class.new do
    attr_reader :calls

    def initialize
      @calls = []
    end

    def subscribe(channel, callback, success = nil)
      @calls << [:subscribe, channel, callback]
      success&.call
    end

    def unsubscribe(channel, callback)
      @calls << [:unsubscribe, channel, callback]
    end
  end

  let(:log) { StringIO.new }
  let(:logger) { Logger.new(log, level: :debug) }
  let(:pubsub) { pubsub_class.new }
  let(:runtime) { Object.new }
  let(:server) { ac::CableServer.new(runtime, pubsub) }
  let(:native) { native_class.new }
  let(:socket) { ac::WebSocket.new(native, "actioncable-v1-json") }
  let(:env) do
    Rack::MockRequest.env_for("/cable?x=1",
      "HTTP_UPGRADE" => "websocket", "HTTP_CONNECTION" => "Upgrade",
      "HTTP_SEC_WEBSOCKET_KEY" => "dGhlIHNhbXBsZSBub25jZQ==", "HTTP_SEC_WEBSOCKET_VERSION" => "13",
      "HTTP_ORIGIN" => "http://allowed.test")
  end
  let(:connection_class) { Class.new(::ActionCable::Connection::Base) }

  around do |example|
    config = ::ActionCable.server.config
    saved = [config.logger, config.log_tags]
    config.logger = logger
    config.log_tags = []
    compat.reset!
    example.run
  ensure
    config.logger, config.log_tags = saved
    compat.reset!
  end

  def connection_for(klass)
    described_class.build_connection(klass, server, env, socket, coder: AnyCableRs::ActionCable::Coder)
  end

  describe "the tagged logger proxy class" do
    it "is Connection::TaggedLoggerProxy where Action Cable has it there (6.1–8.1)" do
      expect(compat.tagged_logger_proxy_class).to be(::ActionCable::Connection::TaggedLoggerProxy)
    end

    it "is Server::TaggedLoggerProxy where Action Cable moved it (main)" do
      moved = Class.new
      stub_const("ActionCable::Server::TaggedLoggerProxy", moved)
      expect(compat.tagged_logger_proxy_class).to be(moved)
    end
  end

  describe "building a connection" do
    it "uses new(server, env, coder:) and puts our socket and logger in place on 6.1–8.1" do
      expect(compat.socket_owned_connections?).to be(false)
      connection = connection_for(connection_class)

      expect(compat.websocket(connection)).to be(socket)
      expect(connection.protocol).to eq("actioncable-v1-json")
      expect(connection.logger).to be_a(ac::LoggerProxy)
      expect(compat.wrapped_logger(connection.logger)).to be(logger)
      expect(env["HTTP_UPGRADE"]).to eq("websocket")

      connection.transmit(type: "ping", message: 1)
      expect(native.sent).to eq(['{"type":"ping","message":1}'])
      connection.close(reason: "remote", reconnect: false)
      expect(native.closed?).to be(true)
    end

    it "keeps the connection's log tags, request procs included" do
      ::ActionCable.server.config.log_tags = ["cable", ->(request) { request.params["x"] }]
      connection = connection_for(connection_class)
      expect(connection.logger.tags).to eq(["Cable", "1"])
    end

    it "hands a socket stand-in to connections built as new(server, socket) (main)" do
      main_base = Class.new do
        attr_reader :logger

        def initialize(server, socket)
          @server = server
          @socket = socket
          @logger = socket.logger
        end

        def transmit(data)
          @socket.transmit(data)
        end

        def close
          @socket.close
        end

        def env = @socket.env
        def perform_work(...) = @socket.perform_work(...)
      end
      stub_const("ActionCable::Connection::Base", main_base)
      ::ActionCable.server.config.log_tags = [->(request) { request.params["x"] }]

      expect(compat.socket_owned_connections?).to be(true)
      connection = connection_for(Class.new(main_base))

      expect(compat.websocket(connection)).to be(socket)
      holder = connection.instance_variable_get(:@socket)
      expect(holder).to be_a(ac::ServerSocket)
      expect(holder.connection).to be(connection)
      expect(holder.protocol).to eq("actioncable-v1-json")
      expect(connection.env).to be(env)
      expect(connection.logger).to be_a(ac::LoggerProxy)
      expect(connection.logger.tags).to eq(["1"])

      # main's connection transmits Ruby data; the socket encodes it.
      connection.transmit(identifier: "x", message: {"a" => 1})
      expect(native.sent).to eq(['{"identifier":"x","message":{"a":1}}'])

      # Stream and timer callbacks run through perform_work: inline, on this thread.
      ran = []
      connection.perform_work(->(v) { ran << [v, Thread.current] }, :call, 42)
      expect(ran).to eq([[42, Thread.current]])

      connection.close
      expect(native.closed?).to be(true)
      connection.transmit(type: "ping")
      expect(native.sent.size).to eq(1)
    end

    it "gives main's periodic timers and adapters an executor: the event loop" do
      expect(server.executor).to be(server.event_loop)
      ran = []
      server.executor.post { ran << 1 }
      expect(ran).to eq([1])
      expect(server.executor).to respond_to(:timer, :shutdown)
    end

    it "finds no anycable-rs socket under other connections" do
      plain = Object.new
      expect(compat.websocket(plain)).to be_nil
    end
  end

  describe "command callbacks" do
    it "finds :command callbacks on connections exactly where Action Cable has them (7.1+)" do
      connection = connection_for(connection_class)
      expect(compat.command_callbacks?(connection)).to be(rails71)
      expect(compat.with_command_callbacks(connection) { :ran }).to eq(:ran)
    end

    it "runs the command alone on a connection class without :command callbacks (6.1, 7.0)" do
      plain = Object.new
      expect(compat.command_callbacks?(plain)).to be(false)
      expect(compat.with_command_callbacks(plain) { :ran }).to eq(:ran)
    end

    # The shape of Connection::Callbacks in 7.1–8.1 and main.
    let(:callbacks_class) do
      Class.new(::ActionCable::Connection::Base) do
        include ActiveSupport::Callbacks
        define_callbacks :command

        def self.before_command(*args, &block) = set_callback(:command, :before, *args, &block)
        def self.after_command(*args, &block) = set_callback(:command, :after, *args, &block)
        def self.around_command(*args, &block) = set_callback(:command, :around, *args, &block)

        attr_accessor :trail

        before_command { (self.trail ||= []) << :before }
        around_command do |_connection, block|
          trail << :around_in
          block.call
          trail << :around_out
        end
        after_command { trail << :after }
      end
    end

    it "runs each command inside before/around/after_command where the class has them (7.1+)" do
      connection = connection_for(callbacks_class)
      expect(compat.command_callbacks?(connection)).to be(true)
      compat.with_command_callbacks(connection) { connection.trail << :command }
      # ActiveSupport's order: an after callback declared after an around runs inside it.
      expect(connection.trail).to eq(%i[before around_in command after around_out])
    end

    it "skips the command when a before_command callback halts" do
      callbacks_class.before_command { throw :abort }
      connection = connection_for(callbacks_class)
      expect(compat.with_command_callbacks(connection) { connection.trail << :command }).to be(false)
      expect(connection.trail).not_to include(:command)
    end

    it "lets a callback's exception through where handle_channel_command does not rescue (7.1–8.1)" do
      callbacks_class.before_command { raise ArgumentError, "no" }
      callbacks_class.rescue_from(ArgumentError) { |e| (self.trail ||= []) << e.message }
      connection = connection_for(callbacks_class)
      expect { compat.with_command_callbacks(connection) { :ran } }.to raise_error(ArgumentError, "no")
    end

    it "hands a callback's exception to rescue_from where handle_channel_command rescues (main)" do
      callbacks_class.class_eval { alias_method :handle_incoming, :transmit }
      callbacks_class.before_command { raise ArgumentError, "no" }
      callbacks_class.rescue_from(ArgumentError) { |e| trail << "rescued #{e.message}" }
      connection = connection_for(callbacks_class)
      expect { compat.with_command_callbacks(connection) { connection.trail << :command } }.not_to raise_error
      expect(connection.trail.last).to eq("rescued no")
      expect(connection.trail).not_to include(:command)
    end

    it "still raises what rescue_from does not handle (main)" do
      callbacks_class.class_eval { alias_method :handle_incoming, :transmit }
      callbacks_class.before_command { raise IOError, "unhandled" }
      connection = connection_for(callbacks_class)
      expect { compat.with_command_callbacks(connection) { :ran } }.to raise_error(IOError, "unhandled")
    end
  end

  describe "subscriptions" do
    let(:channel_class) do
      stub_const("CompatSpecChannel", Class.new(::ActionCable::Channel::Base) do
        def subscribed
          stream_from "compat_spec"
        end
      end)
    end

    it "reaches the identifier => channel map" do
      connection = connection_for(connection_class)
      id = {channel: channel_class.name}.to_json
      connection.subscriptions.add("identifier" => id)
      channel = compat.channels(connection)[id]
      expect(channel).to be_a(channel_class)
      expect(connection.subscriptions.identifiers).to eq([id])
      expect(compat.rejection_type).to eq("reject_subscription")
    end

    it "accepts Channel::Base itself only where Subscriptions#add does (6.1)" do
      expect(compat.channel_class?(channel_class)).to be(true)
      expect(compat.channel_class?(String)).to be(false)
      expect(compat.channel_class?("CompatSpecChannel")).to be(false)
      expect(compat.channel_class?(::ActionCable::Channel::Base)).to be(!at_least.call("7.0.0"))
      allow(::ActionCable).to receive(:gem_version).and_return(Gem::Version.new("6.1.7"))
      expect(compat.channel_class?(::ActionCable::Channel::Base)).to be(true)
      allow(::ActionCable).to receive(:gem_version).and_return(Gem::Version.new("7.0.0"))
      expect(compat.channel_class?(::ActionCable::Channel::Base)).to be(false)
      expect(compat.channel_class?(channel_class)).to be(true)
    end

    it "delivers a plain stream_from through the Rust hub" do
      connection = connection_for(connection_class)
      connection.subscriptions.add("identifier" => {channel: channel_class.name}.to_json)
      kind, stream, token = pubsub.calls.first
      expect([kind, stream]).to eq([:subscribe, "compat_spec"])
      expect(token).to be_a(ac::DirectStream)
      expect(native.sent.last).to include("confirm_subscription")
    end
  end

  describe "stream_from after unsubscribing" do
    let(:channel_class) do
      stub_const("CompatLateChannel", Class.new(::ActionCable::Channel::Base) do
        def late_stream
          stream_from "late"
        end

        # Where Action Cable has it (7.2.3+, 8.0.3+, 8.1, main), set once unsubscribe
        # begins.
        def unsubscribed?
          true
        end
      end)
    end

    def channel_on(connection)
      id = {channel: channel_class.name}.to_json
      connection.subscriptions.add("identifier" => id)
      described_class.channels(connection)[id]
    end

    it "detects the guard exactly where Action Cable has it" do
      expect(compat.stream_after_unsubscribe_ignored?).to be(guard)
    end

    it "still streams where Action Cable has no guard (6.1–7.2.2, 8.0.0–8.0.2)" do
      allow(compat).to receive(:stream_after_unsubscribe_ignored?).and_return(false)
      channel_on(connection_for(connection_class)).late_stream
      expect(pubsub.calls.map { |c| c[1] }).to eq(["late"])
    end

    it "starts no stream where Action Cable ignores it" do
      allow(compat).to receive(:stream_after_unsubscribe_ignored?).and_return(true)
      channel = channel_on(connection_for(connection_class))
      channel.late_stream
      expect(pubsub.calls).to be_empty
      expect(compat.streams(channel)).to be_empty
    end

    it "detects the guard by Channel::Base#unsubscribed?" do
      stub_const("ActionCable::Channel::Base", Class.new { def unsubscribed? = false })
      expect(compat.stream_after_unsubscribe_ignored?).to be(true)
    end
  end

  describe "transmit and dispatch_action logging" do
    let(:channel_class) do
      stub_const("CompatLogChannel", Class.new(::ActionCable::Channel::Base) do
        def speak(data)
          transmit({"echo" => data["text"]})
        end
      end)
    end

    let(:inspected) { [] }
    let(:payload) do
      seen = inspected
      Class.new do
        define_method(:inspect) { seen << :inspected and "#<payload>" }
        def as_json(*) = {"p" => 1}
      end.new
    end

    def channel_on(connection)
      id = {channel: channel_class.name}.to_json
      connection.subscriptions.add("identifier" => id)
      described_class.channels(connection)[id]
    end

    it "recognizes the running Action Cable's logging (6.1, 7.0: eager, info; 7.1+: lazy, debug, filtered)" do
      expect(compat.filtered_action_logging?).to be(rails71)
      expect(compat.action_log_level).to eq(rails71 ? :debug : :info)
      expect(compat.eager_transmit_log?).to be(!rails71)
      expect(compat.channel_fast_paths?).to be(true)
    end

    it "recognizes 7.1+ logging by Channel::Base#parameter_filter" do
      stub_const("ActionCable::Channel::Base", Class.new do
        private

        def parameter_filter = nil
        def transmit(data, via: nil) = nil
        def dispatch_action(action, data) = nil
      end)
      expect(compat.filtered_action_logging?).to be(true)
      expect(compat.action_log_level).to eq(:debug)
      expect(compat.eager_transmit_log?).to be(false)
      expect(compat.channel_fast_paths?).to be(true)
    end

    it "leaves the fast paths to Rails when the methods it mirrors change shape" do
      stub_const("ActionCable::Channel::Base", Class.new do
        private

        def transmit(data, via: nil, extra: 1) = nil
        def dispatch_action(action, data) = nil
      end)
      expect(compat.channel_fast_paths?).to be(false)
    end

    it "leaves the fast paths to Rails on an Action Cable nobody has checked" do
      allow(::ActionCable).to receive(:gem_version).and_return(compat::FAST_PATHS_CHECKED_BELOW)
      expect(compat.channel_fast_paths?).to be(false)
    end

    it "skips the dropped lines (and data.inspect) when the logger drops them" do
      logger.level = :warn
      channel = channel_on(connection_for(connection_class))
      channel.perform_action("action" => "speak", "text" => payload)
      channel.send(:transmit, payload)
      expect(inspected).to be_empty
      expect(log.string).not_to include("CompatLogChannel#speak")
      expect(native.sent.last).to include('"p":1')
    end

    it "writes the lines Rails writes when the logger keeps them" do
      channel = channel_on(connection_for(connection_class))
      channel.perform_action("action" => "speak", "text" => "hi")
      expect(log.string).to include("CompatLogChannel#speak")
      expect(log.string).to include("CompatLogChannel transmitting")
    end

    it "leaves transmit to Rails where it builds its line lazily (7.1+)" do
      logger.level = :info
      channel = channel_on(connection_for(connection_class))
      allow(compat).to receive(:eager_transmit_log?).and_return(false)
      channel.send(:transmit, payload)
      # Rails' own transmit runs: before 7.1 it inspects eagerly, since then only when
      # the debug line is kept.
      expect(inspected).to eq(rails71 ? [] : [:inspected])
    end

    it "takes the action line's level from the running Action Cable" do
      logger.level = :info
      channel = channel_on(connection_for(connection_class))
      allow(compat).to receive(:action_log_level).and_return(:debug)
      channel.perform_action("action" => "speak", "text" => "hi")
      expect(log.string).not_to include("CompatLogChannel#speak")
      expect(native.sent.last).to include('"echo":"hi"')
    end

    it "keeps transmit and dispatch_action private, as Rails has them" do
      expect(::ActionCable::Channel::Base.private_method_defined?(:transmit)).to be(true)
      expect(::ActionCable::Channel::Base.private_method_defined?(:dispatch_action)).to be(true)
      expect(channel_class.action_methods).to eq(Set["speak"])
    end
  end

  describe "the health check path" do
    it "is none where the configuration has no health_check_path (6.1, 7.0)" do
      expect(compat.health_check?(::ActionCable.server.config, "PATH_INFO" => "/up")).to be(false)
    end

    it "is config.health_check_path where there is one (7.1+)" do
      config = Struct.new(:health_check_path).new("/up")
      expect(compat.health_check?(config, "PATH_INFO" => "/up")).to be(true)
      expect(compat.health_check?(config, "PATH_INFO" => "/")).to be(false)
      config.health_check_path = nil
      expect(compat.health_check?(config, "PATH_INFO" => "/up")).to be(false)
    end
  end

  describe "the logger proxy" do
    it "subclasses the running Action Cable's proxy and drops lines below the level without tagging" do
      expect(ac::LoggerProxy.superclass).to be(compat.tagged_logger_proxy_class)
      logger.level = :info
      tagged = ActiveSupport::TaggedLogging.new(logger)
      proxy = ac::LoggerProxy.new(tagged, tags: ["T"])
      expect(tagged).not_to receive(:tagged)
      proxy.debug("dropped")
      expect(log.string).to be_empty
    end

    it "writes kept lines through Rails' proxy" do
      proxy = ac::LoggerProxy.new(logger, tags: [])
      proxy.info("kept")
      expect(log.string).to include("kept")
    end
  end
end
