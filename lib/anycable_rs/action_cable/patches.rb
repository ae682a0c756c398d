# frozen_string_literal: true

require "anycable_rs/action_cable/compat"
require "anycable_rs/action_cable/pubsub"
require "anycable_rs/action_cable/connection_env"
require "anycable_rs/state"
require "anycable_rs/bounded_log"

module AnyCableRs
  module ActionCable
    # Prepended to ActionCable::Server::Base. Each method falls through to Action Cable
    # unless anycable-rs is embedded, so without the toggle the app is plain Rails.
    module ServerPatch
      # The mounted `/cable` endpoint: hand the socket to the Rust server (Action
      # Cable's health check path, where the Rails version has one, stays Rails').
      def call(env)
        return super unless AnyCableRs.embedded?
        return super if Compat.health_check?(config, env)

        AnyCableRs.runtime.handoff(env)
      end

      def pubsub
        AnyCableRs.embedded? ? AnyCableRs.runtime.pubsub : super
      end

      # AnyCable's `to_others: true`: every subscriber but the current socket
      # (AnyCableRs.current_socket_id). Action Cable's own broadcast runs (its log line
      # and instrumentation); our pub/sub reads the socket to skip.
      def broadcast(broadcasting, message, to_others: false, **options)
        exclude = to_others && AnyCableRs.embedded? ? AnyCableRs.current_socket_id : nil
        return super(broadcasting, message, **options) unless exclude

        PubSub.excluding(exclude) { super(broadcasting, message, **options) }
      end

      # Code reloading in development restarts the cable server: close our sockets too
      # (clients reconnect and get the reloaded classes), as Action Cable does.
      def restart
        AnyCableRs.runtime.dispatcher.close_all if AnyCableRs.embedded? && AnyCableRs.runtime?
        super
      end
    end

    # Prepended to ActionCable::Channel::Base's singleton: `broadcast_to(model, data,
    # to_others: true)`, as AnyCable's.
    module ChannelBroadcastPatch
      # Identifier readers (IdentifierReaders) are not actions a client can perform.
      def action_methods
        methods = super
        return methods unless IdentifierReaders.readers_of(self)

        cached = @_anycable_rs_action_methods
        return cached.last if cached && cached.first.equal?(methods)

        result = methods - IdentifierReaders.hidden_actions(self)
        @_anycable_rs_action_methods = [methods, result]
        result
      end

      def broadcast_to(model, message, to_others: false)
        return super(model, message) unless to_others

        ::ActionCable.server.broadcast(broadcasting_for(model), message, to_others: true)
      end
    end

    # Per channel class, a prepended module with one reader per connection identifier
    # (kept in the class, so a class reloaded in development takes its module along).
    module IdentifierReaders
      LOCK = Mutex.new

      module_function

      def define(klass, identifiers)
        mod = readers_of(klass)
        return if mod && identifiers.all? { |name| mod.method_defined?(name, false) }

        LOCK.synchronize do
          mod = readers_of(klass) ||
            Module.new.tap do |m|
              klass.prepend(m)
              klass.instance_variable_set(:@_anycable_rs_identifier_readers, m)
            end
          identifiers.each do |name|
            next if mod.method_defined?(name, false)

            # A connection of another class (without this identifier) gets what the
            # channel class itself answers, as it would without the reader.
            mod.define_method(name) do
              connection.identifiers.include?(name) ? connection.send(name) : super()
            end
          end
        end
      end

      def readers_of(klass)
        klass.instance_variable_get(:@_anycable_rs_identifier_readers)
      end

      # Reader names that are not actions: Action Cable's action_methods takes the
      # class's public methods and its ancestors' (our modules' among them), but never
      # saw singleton methods; a public method of the class's own stays an action.
      def hidden_actions(klass)
        names = klass.ancestors.grep(Class).flat_map do |c|
          readers_of(c)&.public_instance_methods(false) || []
        end
        names.map(&:to_s) - klass.public_instance_methods(false).map(&:to_s)
      end
    end

    # Prepended to ActionCable::Channel::Base: a plain `stream_from` (no block, no
    # coder) is delivered by Rust without entering Ruby.
    module ChannelPatch
      # `stream_from`'s `presence:` values, as the server names them.
      PRESENCE_JOINS = {true => "app", clients: "clients", ask: "ask"}.freeze
      # Hooks the server calls, never actions a client may `perform`.
      HOOKS = %w[presence_join_requested].freeze

      # AnyCable's `whisper: true`: the client's whispers on this subscription go to
      # the stream's other subscribers (one whisper stream per subscription).
      # `presence: true`: the subscription has this stream's presence set, one per
      # subscription; the channel joins its clients to it (`join_presence`).
      # `presence: :clients`: clients may also join it themselves, with ids and info
      # of their own (`channel.presence.join(id, info)` in @anycable/web, as AnyCable
      # lets them); an id stays its first joiner's (their connection's identifiers).
      # `presence: :ask`: a client's join goes to the channel's
      # `presence_join_requested(id, info)`, which joins it as the app sees fit
      # (`join_presence(id: current_user.id, info: …)`) or not at all (the client then
      # hears `error`).
      def stream_from(broadcasting, callback = nil, coder: nil, whisper: false, presence: false, &block)
        websocket = Compat.websocket(connection)
        if callback.nil? && block.nil? && coder.nil? && websocket
          # As Rails does where it has the guard: a channel that has been unsubscribed
          # starts no new stream.
          return if Compat.unsubscribed?(self)

          broadcasting = String(broadcasting)
          token = DirectStream.new(websocket.session, identifier)
          Compat.streams(self)[broadcasting] = token
          pubsub.subscribe(broadcasting, token)
          logger.info "#{self.class.name} is streaming from #{broadcasting}"
        else
          # A stream the hub does not know: a restore cannot bring this one back.
          websocket&.session&.pin_subscription(identifier)
          super(broadcasting, callback, coder: coder, &block)
        end
        whispers_to(broadcasting) if whisper
        presence_on(broadcasting, PRESENCE_JOINS.fetch(presence) { raise ArgumentError, "presence: must be true, :clients or :ask, not #{presence.inspect}" }) if presence
      end

      # Action Cable logs every action with its arguments (`Channel#speak({...})`, up to
      # a whole client message): cut to BoundedLog::MAX_TEXT bytes.
      if Compat.action_signature?
        def action_signature(action, data)
          BoundedLog.clip(super)
        end
        private :action_signature
      end

      def stream_for(model, callback = nil, coder: nil, whisper: false, presence: false, &block)
        stream_from(broadcasting_for(model), callback || block, coder: coder, whisper: whisper, presence: presence)
      end

      # AnyCable's: this session joins the subscription's presence set (the stream given,
      # else the one `stream_from …, presence: true` named), as `id` (default: the
      # connection's identifier) with `info` (anything JSON can hold). Every
      # subscriber of the stream, this one included, gets `join` when the id is new
      # there. From `subscribed`, the join follows the confirmation (as AnyCable's).
      # False when there is no presence here (no broker, plain Action Cable).
      def join_presence(stream = nil, id: nil, info: nil)
        session = anycable_session
        return false unless session

        presence_on(stream) if stream
        join = [(id || connection.connection_identifier).to_s, info.nil? ? nil : ActiveSupport::JSON.encode(info)]
        return @_anycable_presence_joined = session.presence_join(identifier, *join) if Compat.confirmation_sent?(self)

        @_anycable_presence_join = join
        true
      end

      # After the dispatcher's subscribe confirmed this subscription: a join that
      # `subscribed` asked for.
      def anycable_rs_after_confirm
        join = @_anycable_presence_join or return
        @_anycable_presence_join = nil
        anycable_session&.presence_join(identifier, *join)
      end

      # The hook of `stream_from …, presence: :ask`: a client asked to join this
      # subscription's presence set as `id` with `info` (what it sent, unchecked).
      # Join it — as whom the app decides — with `join_presence`, or do nothing to
      # refuse. By default nobody joins. Never an action a client may `perform` (HOOKS).
      def presence_join_requested(id, info)
        nil
      end

      # The dispatcher's `join`: whether the hook joined anyone.
      def anycable_rs_presence_requested(id, info)
        @_anycable_presence_joined = false
        presence_join_requested(id, info)
        @_anycable_presence_joined
      end

      # Leaves it (`leave` to the subscribers when this was the id's last socket).
      def leave_presence
        anycable_session&.presence_leave(identifier)
      end


      # AnyCable's name for turning whisper on for a stream this channel streams from.
      def whispers_to(broadcasting)
        session = anycable_session
        return unless session

        @_anycable_whisper = String(broadcasting)
        session.whisper_to(@_anycable_whisper, identifier)
      end

      def stop_stream_from(broadcasting)
        super
        stop_whisper if @_anycable_whisper == String(broadcasting)
      end

      def stop_all_streams
        super
        stop_whisper if @_anycable_whisper
      end

      private

      # The server's session (Native::Session) under this channel's connection, or nil.
      def anycable_session
        Compat.websocket(connection)&.session
      end

      def presence_on(broadcasting, joins = "app")
        anycable_session&.presence_to(String(broadcasting), identifier, joins)
      end

      # Action Cable defines a singleton method per connection identifier on every
      # channel object (`current_user`): a singleton class, ~2.5 KiB per subscription.
      # On our connections the same readers are defined once, in a module prepended to
      # the channel's class — prepended, so they win over a method of the class's own,
      # as singleton methods do.
      def delegate_connection_identifiers
        return super unless Compat.websocket(connection) && Compat.identifier_singletons?

        IdentifierReaders.define(self.class, connection.identifiers)
      end

      def stop_whisper
        @_anycable_whisper = nil
        anycable_session&.whisper_to("", identifier)
      end

      # Action Cable before 7.1 builds `data.inspect` for a debug line on every
      # transmit, and every Action Cable builds an action signature for every action
      # (an info line before 7.1; a debug line with filtered parameters since),
      # whether or not the logger keeps them (~12 % of an echo's Ruby time on 6.1;
      # bench/results/2026-11-26-targets.md). When our connection's logger would drop
      # the line, the same work runs without building it; otherwise — and on any
      # Action Cable these were not checked against (Compat.channel_fast_paths?) —
      # Rails' own method runs. 7.1+ build the transmit line lazily: nothing to skip.
      # Both stay private, as Rails' are.
      def transmit(data, via: nil)
        return super unless Compat.eager_transmit_log? && Compat.channel_fast_paths?
        return super if logged?(:debug)

        payload = {channel_class: self.class.name, data: data, via: via}
        ActiveSupport::Notifications.instrument("transmit.action_cable", payload) do
          connection.transmit identifier: @identifier, message: data
        end
      end

      def dispatch_action(action, data)
        return super unless Compat.channel_fast_paths?
        return super if logged?(Compat.action_log_level)

        dispatch_action_unlogged(action, data)
      end

      # Rails' dispatch_action minus its log line (the same in 6.1–8.1 and main).
      def dispatch_action_unlogged(action, data)
        if method(action).arity == 1
          public_send action, data
        else
          public_send action
        end
      rescue Exception => e # rubocop:disable Lint/RescueException
        rescue_with_handler(e) || raise
      end

      # True unless this is an anycable-rs connection whose logger drops `severity`.
      def logged?(severity)
        # The connection's logger (Channel#logger delegates there, through an Array).
        log = connection.logger
        !log.is_a?(LoggerProxy) || log.logs?(severity)
      end
    end
  end
end
