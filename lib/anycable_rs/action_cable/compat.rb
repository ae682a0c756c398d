# frozen_string_literal: true

module AnyCableRs
  module ActionCable
    # Every Action Cable internal anycable-rs relies on — private methods, instance
    # variables, constructor shapes, classes it subclasses, behaviours its fast paths
    # mirror — lives here and nowhere else in lib/. Each method names the Rails
    # versions whose Action Cable source it was read against ("checked:"); branches
    # test for the feature (method_defined?, const_defined?, parameter lists) rather
    # than for version numbers, so a patch release that backports a change is handled
    # the day it ships.
    #
    # Versions read for this file (rails/rails tags, plus main):
    #   6.1.0, 6.1.7.10, 7.0.0, 7.0.10, 7.1.0, 7.1.6, 7.2.0, 7.2.3.2, 8.0.0, 8.0.5.1,
    #   8.1.0, 8.1.3.1, main@2a2db1e8 (2026-08-22, Action Cable 8.2.0.alpha).
    # "6.1–8.1" below means every one of those tags; "main" the commit above.
    module Compat
      # The versions the fast paths in ChannelPatch were read against. On a newer
      # Action Cable they step aside (Rails' own method runs) until someone reads the
      # new source and raises this bound.
      FAST_PATHS_CHECKED_BELOW = Gem::Version.new("8.3")

      module_function

      # --- classes anycable-rs subclasses or stands in for -----------------------

      # The tagged logger every connection logs through; LoggerProxy subclasses it.
      # checked: 6.1–8.1 ActionCable::Connection::TaggedLoggerProxy;
      # main: moved to ActionCable::Server::TaggedLoggerProxy (the old name is gone).
      # Constructor `new(logger, tags:)`, `tags` reader, the wrapped logger in
      # `@logger`, private `log(type, message)` — 7.1+ also passes a block: all
      # versions.
      def tagged_logger_proxy_class
        if ::ActionCable::Server.const_defined?(:TaggedLoggerProxy, false)
          ::ActionCable::Server::TaggedLoggerProxy
        else
          ::ActionCable::Connection::TaggedLoggerProxy
        end
      end

      # The logger a TaggedLoggerProxy wraps. checked: 6.1–8.1, main (`@logger`).
      def wrapped_logger(proxy)
        proxy.instance_variable_get(:@logger)
      end

      # The worker pool InlineWorker subclasses: `work(connection) { }` runs the :work
      # callbacks (the Rails executor, Active Record's tagged logging through
      # `connection.logger.tag`); `invoke(receiver, method, *args, connection:)`;
      # `async_invoke`, `async_exec` (6.1–8.1 periodic timers), `halt`, `stopping?`.
      # checked: 6.1–8.1, main (same interface; only the thread pool's name changed).
      def worker_class
        ::ActionCable::Server::Worker
      end

      # --- connections -------------------------------------------------------------

      # How Connection::Base is built.
      # checked: 6.1–8.1 `new(server, env, coder:)`; the connection makes its own
      # WebSocket wrapper (in `@websocket`), reads `server.worker_pool`,
      # `server.logger`, `server.config.log_tags`, `server.event_loop`, and its
      # tagged logger (in `@logger`, `protocol` in `@protocol`).
      # main: `new(server, socket)`, where socket (ActionCable::Server::Socket) owns
      # env, request, protocol, logger, perform_work, transmit (it encodes) and close.
      def socket_owned_connections?
        return @socket_owned if defined?(@socket_owned)

        params = ::ActionCable::Connection::Base.instance_method(:initialize).parameters
        @socket_owned = params.none? { |type, name| type == :key && name == :coder } &&
          params.count { |type, _| type == :req } == 2
      end

      # A connection of `klass` over our `websocket` (a WebSocket),
      # logging through a LoggerProxy.
      def build_connection(klass, server, env, websocket, coder:)
        if socket_owned_connections?
          holder = ServerSocket.new(server, env, websocket, coder)
          holder.logger = new_logger_proxy(server, holder)
          holder.connection = klass.new(server, holder)
        else
          # 6.1–8.1: the constructor wraps a driver socket of its own whenever the env
          # looks like an upgrade (WebSocket::Driver.websocket?: the Upgrade header);
          # without the header it builds none, and ours takes its place.
          upgrade = env.delete("HTTP_UPGRADE")
          begin
            connection = klass.new(server, env, coder: coder)
          ensure
            env["HTTP_UPGRADE"] = upgrade if upgrade
          end
          connection.instance_variable_set(:@websocket, websocket)
          connection.instance_variable_set(:@protocol, websocket.protocol)
          connection.instance_variable_set(:@logger, LoggerProxy.from(connection.logger))
          connection
        end
      end

      # main: the socket computes the connection's log tags; procs get the request.
      def new_logger_proxy(server, holder)
        tags = server.config.log_tags.map do |tag|
          tag.respond_to?(:call) ? tag.call(holder.request) : tag.to_s.camelize
        end
        LoggerProxy.new(server.logger, tags: tags)
      end

      # Our WebSocket under a connection, or nil for any other connection (a plain
      # Action Cable one, a test stub).
      # checked: 6.1–8.1 `@websocket`; main `@socket` (our ServerSocket).
      def websocket(connection)
        websocket = connection.instance_variable_get(:@websocket)
        return websocket if websocket.is_a?(WebSocket)

        holder = connection.instance_variable_get(:@socket)
        holder.websocket if holder.is_a?(ServerSocket)
      end

      # Private InternalChannel methods: the `action_cable/<connection_identifier>`
      # subscription that remote disconnects (`ActionCable.server.remote_connections`)
      # arrive on. checked: 6.1–8.1 (through `server.event_loop.post`, which runs at
      # once here), main (direct). The disconnect it handles: 6.1–7.0 close the socket
      # silently; 7.1+ `close(reason: "remote", reconnect:)`.
      # AnyCable, and Rails 7.1+, tell a remotely disconnected client why before closing:
      # {"type":"disconnect","reason":"remote","reconnect":…}. 6.1–7.0's private
      # InternalChannel#process_internal_message closes silently ("disconnect" ->
      # websocket.close); on those this makes our connections send the frame, through
      # Connection::Base#close(reason:, reconnect:) (6.1+). checked: 6.1.0, 6.1.7.10,
      # 7.0.0, 7.0.10; 7.1+ send it themselves (not installed there). By version.
      module RemoteDisconnectFrame
        private

        def process_internal_message(message)
          return super unless message["type"] == "disconnect" && Compat.websocket(self)

          logger.info "Removing connection (#{connection_identifier})"
          close(reason: "remote", reconnect: message.fetch("reconnect", true))
        end
      end

      def install_remote_disconnect_frame
        return if ::ActionCable.gem_version >= Gem::Version.new("7.1.0")
        return if ::ActionCable::Connection::Base <= RemoteDisconnectFrame

        ::ActionCable::Connection::Base.prepend(RemoteDisconnectFrame)
      end

      def subscribe_to_internal_channel(connection)
        connection.__send__(:subscribe_to_internal_channel)
      end

      def unsubscribe_from_internal_channel(connection)
        connection.__send__(:unsubscribe_from_internal_channel)
      end

      # What `reject_unauthorized_connection` raises. checked: 6.1–8.1, main.
      def unauthorized_error
        ::ActionCable::Connection::Authorization::UnauthorizedError
      end

      # --- commands ------------------------------------------------------------------

      # Does this connection class have Action Cable's command callbacks
      # (`before_command`, `after_command`, `around_command`)?
      # checked: absent in 6.1, 7.0; 7.1–8.1 and main: Connection::Callbacks defines
      # the :command chain, and Connection::Base#handle_channel_command runs every
      # subscribe/unsubscribe/message inside `run_callbacks :command`.
      def command_callbacks?(connection)
        klass = connection.class
        klass.respond_to?(:__callbacks) && klass.__callbacks.key?(:command)
      end

      # Runs one client command (the block) the way the running Rails'
      # handle_channel_command would: inside the :command callbacks where they exist.
      # main also hands an exception that escapes the callbacks to the connection's
      # rescue_from before giving up (7.1–8.1 let it reach the worker, which logs it);
      # `handle_incoming` marks that version (it arrived in the same change).
      def with_command_callbacks(connection, &block)
        return yield unless command_callbacks?(connection)

        begin
          connection.run_callbacks(:command, &block)
        rescue Exception => e # rubocop:disable Lint/RescueException
          raise unless rescues_command_errors?(connection) && connection.rescue_with_handler(e)
        end
      end

      # checked: main only (Connection::Base#handle_incoming; rescue in
      # handle_channel_command); 7.1–8.1 do not rescue there.
      def rescues_command_errors?(connection)
        connection.respond_to?(:handle_incoming)
      end

      # --- a connection's env after connect (ConnectionEnv) ---------------------------

      # The env a connection holds, if ConnectionEnv may swap it for a snapshot.
      # checked: 6.1–8.1 `env` is an attr_reader of @env; private `request` memoizes
      # `ActionDispatch::Request.new(Rails.application.env_config.merge(env))` in
      # @request; private `cookies` is `request.cookie_jar` (the jar memoized in that
      # request's env), `request.session` the env's rack.session; public `statistics`
      # reads @env["action_dispatch.request_id"] itself. Channel::Base.action_methods
      # takes every public method of the class and its ancestors (so our identifier
      # readers are taken out: ChannelBroadcastPatch). main: the socket owns env and
      # request (socket_owned_connections?): left as they are.
      def held_env(connection)
        return nil if socket_owned_connections?

        env = connection.instance_variable_get(:@env)
        env.is_a?(Hash) ? env : nil
      end

      def drop_env(connection)
        connection.instance_variable_set(:@env, nil)
        connection.instance_variable_set(:@request, nil)
      end

      # Does Channel::Base give each channel object singleton readers of the
      # connection's identifiers? checked: 6.1–8.1, main: private
      # `delegate_connection_identifiers`, called from `initialize`, defines one
      # singleton method per identifier (`connection.send(identifier)`).
      def identifier_singletons?
        ::ActionCable::Channel::Base.private_method_defined?(:delegate_connection_identifiers)
      end

      # --- subscriptions -------------------------------------------------------------

      # identifier => channel, the live subscriptions of a connection.
      # checked: 6.1–8.1, main: Connection::Subscriptions keeps them in a Hash behind
      # a private `subscriptions` reader; `identifiers`, `add("identifier" => id)`,
      # `remove("identifier" => id)` and `remove_subscription(channel)` are public.
      def channels(connection)
        connection.subscriptions.__send__(:subscriptions)
      end

      # A restored session's subscription, rebuilt without `subscribed`: the channel
      # object Subscriptions#add would make, registered under its identifier, with the
      # streams the hub already delivers to it (so stop_stream_from and
      # stop_all_streams let them go) and its periodic timers running.
      # checked: 6.1–8.1, main: Subscriptions#add builds `klass.new(connection,
      # identifier, params.with_indifferent_access)` and Channel::Base#initialize runs
      # no callback (subscribe_to_channel runs `subscribed`, then confirms);
      # `@subscription_confirmation_sent` guards every confirmation (a later
      # stream_from with a block must not confirm again); `start_periodic_timers` is
      # the private after_subscribe callback that starts `periodically` timers.
      def restore_channel(connection, klass, identifier, params, streams:, whisper:)
        channel = klass.new(connection, identifier, params.with_indifferent_access)
        channel.instance_variable_set(:@subscription_confirmation_sent, true)
        session = websocket(connection).session
        streams.each { |stream| self.streams(channel)[stream] = DirectStream.new(session, identifier) }
        channel.instance_variable_set(:@_anycable_whisper, whisper) if whisper
        channel.__send__(:start_periodic_timers)
        channels(connection)[identifier] = channel
      end

      # Stops a channel's `periodically` timers without its unsubscribe callbacks.
      # checked: 6.1–8.1, main (private PeriodicTimers#stop_periodic_timers, the
      # after_unsubscribe callback).
      def stop_timers(channel)
        channel.__send__(:stop_periodic_timers)
      end

      # Channel::Base#action_signature(action, data) (private): the String Action Cable
      # logs for each action, arguments included; ChannelPatch cuts it to a bounded
      # size. checked: 6.1.7.10 (read here); other versions by this feature test
      # (without the method, Rails' own line runs uncut).
      def action_signature?
        ::ActionCable::Channel::Base.private_method_defined?(:action_signature)
      end

      # Has the subscription's confirmation gone out? checked: 6.1–8.1, main (private
      # Channel::Base#subscription_confirmation_sent?).
      def confirmation_sent?(channel)
        channel.__send__(:subscription_confirmation_sent?) ? true : false
      end

      # Would Subscriptions#add accept this class?
      # checked: 6.1 accepts Channel::Base itself (`Base >= klass`); 7.0–8.1 and main
      # only its subclasses (`Base > klass`).
      def channel_class?(klass)
        return false unless klass.is_a?(Class)

        base = ::ActionCable::Channel::Base
        (subclass_only? ? klass < base : klass <= base) == true
      end

      def subclass_only?
        ::ActionCable.gem_version >= Gem::Version.new("7.0.0")
      end

      # The reply that refuses a subscription. checked: 6.1–8.1, main
      # (`ActionCable::INTERNAL[:message_types][:rejection]`, "reject_subscription").
      def rejection_type
        ::ActionCable::INTERNAL[:message_types][:rejection]
      end

      # --- channels ------------------------------------------------------------------

      # Has this channel been unsubscribed? Where Rails has the flag, stream_from after
      # unsubscribing is ignored.
      # checked: absent in 6.1, 7.0, 7.1.0–7.1.6, 7.2.0–7.2.2.2, 8.0.0–8.0.2.1; present
      # (Channel::Base#unsubscribed?, set before the unsubscribe callbacks run, and
      # `return if unsubscribed?` first in stream_from) in 7.2.3+, 8.0.3+, 8.1, main.
      def stream_after_unsubscribe_ignored?
        return @unsubscribed_guard if defined?(@unsubscribed_guard)

        @unsubscribed_guard = ::ActionCable::Channel::Base.method_defined?(:unsubscribed?)
      end

      def unsubscribed?(channel)
        stream_after_unsubscribe_ignored? && channel.unsubscribed?
      end

      # A channel's broadcasting => handler map, for the stream_from fast path.
      # checked: 6.1–8.1, main (private `streams`, memoized in `@_streams`; Rails'
      # stop_stream_from/stop_all_streams unsubscribe each handler from `pubsub`).
      def streams(channel)
        channel.__send__(:streams)
      end

      # How Channel::Base logs transmits and actions.
      # checked: 6.1, 7.0: transmit builds "… transmitting #{data.inspect}" for a debug
      # line whether or not it is kept; dispatch_action logs the action signature at
      # info, parameters unfiltered.
      # 7.1–8.1, main: transmit's debug line is a block (built only when kept);
      # dispatch_action logs the signature at debug, parameters filtered through
      # `connection.config.filter_parameters` (Channel::Base#parameter_filter, which
      # arrived with it and marks it here).
      def filtered_action_logging?
        return @filtered_logging if defined?(@filtered_logging)

        @filtered_logging = ::ActionCable::Channel::Base.private_method_defined?(:parameter_filter)
      end

      # The severity of the action-signature line dispatch_action writes.
      def action_log_level
        filtered_action_logging? ? :debug : :info
      end

      # Does transmit build its debug line even when the logger drops it? Only then is
      # the transmit fast path worth having.
      def eager_transmit_log?
        !filtered_action_logging?
      end

      # Do Rails' transmit and dispatch_action still look like what the ChannelPatch
      # fast paths mirror? Same parameters, and an Action Cable someone has read.
      # checked: transmit(data, via: nil) and dispatch_action(action, data), with the
      # same bodies apart from logging, in 6.1–8.1 and main.
      def channel_fast_paths?
        return @fast_paths if defined?(@fast_paths)

        base = ::ActionCable::Channel::Base
        @fast_paths = ::ActionCable.gem_version < FAST_PATHS_CHECKED_BELOW &&
          rails_parameters(base, :transmit) == [[:req, :data], [:key, :via]] &&
          rails_parameters(base, :dispatch_action) == [[:req, :action], [:req, :data]]
      end

      # The parameters of Rails' own method, under whatever anycable-rs prepends.
      def rails_parameters(klass, name)
        return unless klass.method_defined?(name) || klass.private_method_defined?(name)

        method = klass.instance_method(name)
        method = method.super_method while method&.owner&.name&.start_with?("AnyCableRs::")
        method&.parameters
      end

      # --- server --------------------------------------------------------------------

      # Is this request for Action Cable's own health check (served by Rails, not the
      # socket server)? checked: absent in 6.1, 7.0; 7.1–8.1 and main answer
      # `config.health_check_path` (under the mount path; unset by default) with
      # `config.health_check_application` before anything else in Server::Base#call.
      def health_check?(config, env)
        return false unless config.respond_to?(:health_check_path)

        path = config.health_check_path
        !path.nil? && env["PATH_INFO"] == path
      end

      # Forget memoized detections (specs swap classes in and out).
      def reset!
        %i[@socket_owned @unsubscribed_guard @filtered_logging @fast_paths].each do |ivar|
          remove_instance_variable(ivar) if instance_variable_defined?(ivar)
        end
      end
    end
  end
end
