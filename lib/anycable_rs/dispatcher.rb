# frozen_string_literal: true

require "action_cable"
require "anycable_rs/action_cable/websocket"
require "anycable_rs/action_cable/pubsub"
require "anycable_rs/action_cable/server"
require "anycable_rs/action_cable/coder"
require "anycable_rs/action_cable/compat"
require "anycable_rs/action_cable/connection_env"
require "anycable_rs/state"
require "anycable_rs/bounded_log"

module AnyCableRs
  # Runs bridge jobs on a Ruby thread: connect, commands and disconnect of a session
  # (the server's client connection, AnyCableRs::Native::Session), stream callbacks and
  # timer ticks, each against the app's own Action Cable connection and channel
  # objects, which live as long as the session does.
  #
  # Every job is answered, and no exception leaves `dispatch`: app errors are logged
  # once, with their backtrace, and the client gets AnyCable's answer.
  class Dispatcher
    # A connected session and the app's connection object for it. sid: the session's,
    # read once (every command sets it for `to_others`).
    Entry = Struct.new(:session, :connection, :sid)
    # The Rust server's choice (protocol::SUBPROTOCOLS): the first one offered.
    SUBPROTOCOLS = ["actioncable-v1-json", State::RESTORABLE_PROTOCOL].freeze

    attr_reader :pubsub, :cable_server

    def initialize(runtime)
      @runtime = runtime
      @pubsub = ActionCable::PubSub.new(runtime)
      @cable_server = ActionCable::CableServer.new(runtime, @pubsub)
      @sessions = {}
      # Disconnects under way (their session already out of @sessions).
      @disconnecting = 0
      @callbacks = {}
      @timers = {}
      @seq = 0
      @lock = Mutex.new
    end

    # job: an AnyCableRs::Native::Job (or anything with its readers).
    def dispatch(job)
      case job.kind
      when :command then command(job)
      when :callback then callback(job.target_id, job.payload)
      when :connect then connect(job)
      when :disconnect then disconnect(job)
      when :timer then timer(job.target_id)
      when :release_env then @runtime.take_env(job.env_token)
      else logger.error "anycable-rs: unknown job #{job.kind.inspect}"
      end
    rescue Exception => e # rubocop:disable Lint/RescueException
      log_exception(e, "anycable-rs #{job.kind} job")
    end

    def session_count
      @lock.synchronize { @sessions.size }
    end

    # Connections whose disconnect callbacks have not all run: not started, or running.
    def callbacks_owed
      @lock.synchronize { @sessions.size + @disconnecting }
    end

    def close_all(reason = "server_restart", reconnect: true)
      @lock.synchronize { @sessions.values }.each { |entry| entry.session.close(reason, reconnect) }
    end

    # --- registries shared with the pub/sub adapter and the event loop ---

    def register_callback(callable)
      @lock.synchronize do
        @seq += 1
        @callbacks[@seq] = callable
        @seq
      end
    end

    def unregister_callback(id)
      @lock.synchronize { @callbacks.delete(id) }
    end

    def add_timer(interval, block)
      id = @lock.synchronize do
        @seq += 1
        @timers[@seq] = block
        @seq
      end
      @runtime.native.add_timer(id, interval.to_f)
      id
    end

    def cancel_timer(id)
      @runtime.native.cancel_timer(id)
      @lock.synchronize { @timers.delete(id) }
    end

    private

    def logger
      AnyCableRs.logger
    end

    def worker
      @cable_server.worker_pool
    end

    def connect(job)
      env = @runtime.take_env(job.env_token)
      headers = job.headers
      env ||= RackEnv.railsify(RackEnv.build(job.request_method, job.target, headers, job.remote_ip))
      session = job.session
      jwt_identifiers = job.identifiers
      restored = job.restored
      connection = build_connection(env, session, headers)
      connection.logger.info request_message("Started GET", env)
      worker.work(connection) do
        if jwt_identifiers
          # Identified by a JWT the server verified, or restored from an earlier
          # session's: AnyCable never calls connect then.
          JWT.identify!(connection, jwt_identifiers)
        elsif connection.respond_to?(:connect)
          connection.connect
        end
        ActionCable::Compat.subscribe_to_internal_channel(connection)
        restore(connection, session, JSON.parse(restored)) if restored
      end
      session.identifiers = identifiers_json(connection) unless jwt_identifiers
      ActionCable::ConnectionEnv.compact(connection) unless @runtime.config.retain_env
      @lock.synchronize { @sessions[session.id] = Entry.new(session, connection, session.sid.to_s.freeze) }
      job.ok
    rescue ActionCable::Compat.unauthorized_error
      connection&.logger&.info "An unauthorized connection attempt was rejected"
      job.reject(:unauthorized)
    rescue Exception => e # rubocop:disable Lint/RescueException
      log_exception(e, "#{connection&.class || "connection"}#connect")
      abandon(connection) if connection
      job.fail("#{e.class}: #{e.message}")
    end

    # Stops what a connection started (streams, timers, the internal channel) without
    # its callbacks: for one that failed half-way (a restore whose record is gone, say),
    # which gets no disconnect, and under ANYCABLE_DISABLE_DISCONNECT.
    def abandon(connection)
      ActionCable::Compat.channels(connection).each_value do |channel|
        safely("#{channel.class}#stop_all_streams", connection) { channel.stop_all_streams }
        safely("#{channel.class} timers", connection) { ActionCable::Compat.stop_timers(channel) }
      end
      safely("unsubscribe from internal channel", connection) do
        ActionCable::Compat.unsubscribe_from_internal_channel(connection)
      end
    end

    # A restored session's channel objects, new and without `subscribed` (AnyCable
    # runs no callback on a restore): instance variables set in `subscribed` are not
    # there, `state_attr_accessor` values are (State). A class that is gone drops its
    # subscription.
    def restore(connection, session, restored)
      State.restore(connection, restored["state"])
      restored["subscriptions"].each do |sub|
        identifier = sub["identifier"]
        params, klass = channel_class(connection, identifier, "; restored subscription dropped")
        unless klass
          # E.g. a deploy renamed the channel: the client, told it was restored, hears
          # that it is not (its streams go with it).
          session.remove_subscription(identifier)
          reject(connection, identifier)
          next
        end

        channel = ActionCable::Compat.restore_channel(connection, klass, identifier, params,
          streams: sub["streams"], whisper: sub["whisper"])
        State.restore(channel, sub["state"])
      end
    end

    def build_connection(env, session, headers)
      klass = ::ActionCable.server.config.connection_class.call
      websocket = ActionCable::WebSocket.new(session, offered_protocol(headers))
      ActionCable::Compat.build_connection(klass, @cable_server, env, websocket, coder: ActionCable::Coder)
    end

    # Action Cable's "Started/Finished … [WebSocket]" lines, from the env: asking the
    # connection would build (and keep, for the socket's life) a full request object.
    def request_message(what, env)
      "#{what} \"#{RackEnv.filtered_fullpath(env)}\" [WebSocket] for #{env["action_dispatch.remote_ip"] || env["REMOTE_ADDR"]} at #{Time.now}"
    end

    # The connection's identifiers as AnyCable encodes them (records as GlobalIDs), so
    # AnyCable's remote disconnect command finds the connection.
    def identifiers_json(connection)
      ids = connection.identifiers.each_with_object({}) do |name, out|
        value = connection.public_send(name)
        out[name.to_s] = value.respond_to?(:to_gid_param) ? value.to_gid_param : value
      end
      ActiveSupport::JSON.encode(ids)
    end

    def offered_protocol(headers)
      # Every Sec-WebSocket-Protocol line, as the Rust side reads them; the frozen
      # constant, not the header's substring, is what the socket keeps.
      offered = headers.filter_map { |name, value| value if name == "sec-websocket-protocol" }
      offered.flat_map { |line| line.to_s.split(",") }.each do |name|
        known = SUBPROTOCOLS.find { |p| p == name.strip }
        return known if known
      end
      nil
    end

    def command(job)
      entry = @lock.synchronize { @sessions[job.session_id] }
      return unless entry

      connection = entry.connection
      identifier = job.identifier
      # `to_others: true` in a channel action skips this very connection.
      SocketId.with(entry.sid) do
        run_command(job, connection, identifier)
      end
    ensure
      ActionCable::ConnectionEnv.release(connection) if connection
      job.ok
    end

    def run_command(job, connection, identifier)
      worker.work(connection) do
        # Inside the connection's before/around/after_command callbacks (Rails 7.1+),
        # as Action Cable's handle_channel_command runs them.
        ActionCable::Compat.with_command_callbacks(connection) do
          case job.command
          when :subscribe then subscribe(connection, identifier)
          when :unsubscribe then unsubscribe(connection, identifier)
          when :message then perform(connection, identifier, job.data)
          when :join then presence_requested(connection, identifier, job.data)
          end
        end
      end
    end

    def subscribe(connection, identifier)
      subscriptions = connection.subscriptions
      if subscriptions.identifiers.include?(identifier)
        return BoundedLog.error(connection.logger, :already_subscribed) { "Already subscribed to #{BoundedLog.clip(identifier)}; subscribe ignored" }
      end

      _, klass = channel_class(connection, identifier)
      return reject(connection, identifier) unless klass

      session = ActionCable::Compat.websocket(connection)&.session
      begin
        subscriptions.add("identifier" => identifier)
        # Confirmed (a rejected channel has removed itself): restorable, and known to
        # `history`.
        if (channel = ActionCable::Compat.channels(connection)[identifier])
          session&.add_subscription(identifier)
          channel.anycable_rs_after_confirm
        else
          session&.remove_subscription(identifier)
        end
      rescue Exception => e # rubocop:disable Lint/RescueException
        connection.rescue_with_handler(e)
        log_exception(e, "#{klass}#subscribed")
        failed = ActionCable::Compat.channels(connection).delete(identifier)
        safely("#{klass} stop_all_streams") { failed&.stop_all_streams }
        session&.remove_subscription(identifier)
        reject(connection, identifier)
      end
    end

    def unsubscribe(connection, identifier)
      unless connection.subscriptions.identifiers.include?(identifier)
        return BoundedLog.error(connection.logger, :unsubscribe_unknown) do
          "Unable to find subscription with identifier: #{BoundedLog.clip(identifier)}; unsubscribe ignored"
        end
      end

      safely("unsubscribe", connection, identifier) do
        connection.subscriptions.remove("identifier" => identifier)
      end
      ActionCable::Compat.websocket(connection)&.session&.remove_subscription(identifier)
    end

    # What Subscriptions#perform_action does, with the coder's faster decode.
    def perform(connection, identifier, data)
      channel = ActionCable::Compat.channels(connection)[identifier]
      unless channel
        return BoundedLog.error(connection.logger, :message_unknown) do
          "Unable to find subscription with identifier: #{BoundedLog.clip(identifier)}; message ignored"
        end
      end

      safely("perform on", connection, identifier) do
        decoded = ActionCable::Coder.decode(data)
        # Action Cable's own line for an unknown action carries the whole message
        # (up to ANYCABLE_MAX_MESSAGE_SIZE) each time: bounded here instead.
        action = (decoded.is_a?(Hash) && decoded["action"].presence || "receive").to_s
        if !channel.class.action_methods.include?(action) || ActionCable::ChannelPatch::HOOKS.include?(action)
          next BoundedLog.error(connection.logger, :unknown_action) do
            "Unable to process #{channel.class.name}##{BoundedLog.clip(action)}: no such action; ignored"
          end
        end

        channel.perform_action(decoded)
      end
    end

    # A client's presence join where the channel decides (`presence: :ask`): its
    # `presence_join_requested(id, info)` runs; when it joined nobody, the client
    # hears `error`.
    def presence_requested(connection, identifier, data)
      channel = ActionCable::Compat.channels(connection)[identifier]
      return unless channel

      joined = false
      safely("presence join on", connection, identifier) do
        request = JSON.parse(data)
        joined = channel.anycable_rs_presence_requested(request["id"], request["info"])
      end
      ActionCable::Compat.websocket(connection)&.session&.presence_refused(identifier) unless joined
    end

    # [params, channel class] for an identifier, the class nil (and an error logged)
    # when there is none Subscriptions#add would take.
    def channel_class(connection, identifier, consequence = "")
      params = decode_identifier(identifier)
      klass = params && params["channel"].to_s.safe_constantize
      return [params, klass] if ActionCable::Compat.channel_class?(klass)

      BoundedLog.error(connection.logger, :class_not_found) do
        "Subscription class not found: #{BoundedLog.clip(params ? params["channel"].inspect : identifier.inspect)}#{consequence}"
      end
      [params, nil]
    end

    def reject(connection, identifier)
      connection.transmit(identifier: identifier, type: ActionCable::Compat.rejection_type)
    end

    def decode_identifier(identifier)
      params = ActiveSupport::JSON.decode(identifier)
      params.is_a?(Hash) ? params : nil
    rescue JSON::ParserError
      nil
    end

    def disconnect(job)
      entry = @lock.synchronize do
        @disconnecting += 1
        @sessions.delete(job.session_id)
      end
      return unless entry

      connection = entry.connection
      return forget(connection) if @runtime.config.disable_disconnect

      worker.work(connection) do
        connection.logger.info request_message("Finished", ActionCable::ConnectionEnv.light_env(connection))
        channels = ActionCable::Compat.channels(connection).values
        channels.each do |channel|
          safely("#{channel.class}#unsubscribed", connection) do
            connection.subscriptions.remove_subscription(channel)
          end
        end
        safely("unsubscribe from internal channel", connection) do
          ActionCable::Compat.unsubscribe_from_internal_channel(connection)
        end
        if connection.respond_to?(:disconnect)
          safely("#{connection.class}#disconnect", connection) { connection.disconnect }
        end
      end
    ensure
      @lock.synchronize { @disconnecting -= 1 }
      job.ok
    end

    # ANYCABLE_DISABLE_DISCONNECT: no unsubscribed, no disconnect, as AnyCable skips
    # its Disconnect call; only the streams' Ruby callbacks are let go.
    def forget(connection)
      worker.work(connection) do
        connection.logger.info request_message("Finished", ActionCable::ConnectionEnv.light_env(connection))
        abandon(connection)
      end
    end

    def callback(id, payload)
      callable = @lock.synchronize { @callbacks[id] }
      safely("stream callback") { callable&.call(payload) }
    end

    def timer(id)
      block = @lock.synchronize { @timers[id] }
      safely("periodic timer") { block&.call }
    end

    # `detail` is appended to `what` only when there is an error to log.
    def safely(what, connection = nil, detail = nil)
      yield
    rescue Exception => e # rubocop:disable Lint/RescueException
      connection&.rescue_with_handler(e)
      log_exception(e, what, detail)
    end

    # Once a second per (what, exception class): a client can set an exception off
    # in a loop. `what` is the code's own words (a fixed set: the kind of line);
    # `detail` (an identifier) and the message may hold client text, and are cut. The
    # backtrace is the app's.
    def log_exception(error, what, detail = nil)
      BoundedLog.error(logger, [:exception, what, error.class.name]) do
        where = detail ? "#{what} #{BoundedLog.clip(detail)}" : what
        "#{where} raised #{error.class}: #{BoundedLog.clip(error.message)}\n#{Array(error.backtrace).join("\n")}"
      end
    end
  end
end
