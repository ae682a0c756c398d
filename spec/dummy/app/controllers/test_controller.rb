# frozen_string_literal: true

class TestController < ActionController::Base
  skip_forgery_protection

  # Sets the cookies and session a connection can authenticate with.
  def login
    user = Event::WRITE_LOCK.synchronize { User.find_or_create_by!(name: params.fetch(:name)) }
    cookies.signed[:user_id] = user.id
    cookies.encrypted[:secret] = "s3cret-#{user.name}"
    cookies[:plain] = "plain-#{user.name}"
    session[:user_name] = user.name
    render plain: user.id.to_s
  end

  # A JWT for the named user, as an app would put it in a page (AnyCableRs::JWT);
  # `exp` sets the expiry (epoch seconds).
  def token
    user = Event::WRITE_LOCK.synchronize { User.find_or_create_by!(name: params.fetch(:name)) }
    expires_at = params[:exp] && Time.at(Integer(params[:exp]))
    render plain: AnyCableRs::JWT.encode({current_user: user, tab: "jwt"}, expires_at: expires_at)
  end

  # PUT (create) or POST (append) /ds/<name>, for the Durable Streams conformance tests:
  # each JSON item (an array's, one level down) broadcast to the public stream <name>,
  # which ANYCABLE_DS then reads. Test-only: the server never takes writes.
  def ds_write
    body = request.raw_post
    items = body.empty? ? [] : JSON.parse(body)
    items = [items] unless items.is_a?(Array)
    items.each { |item| ActionCable.server.broadcast("$public:#{params[:name]}", item) }
    head(request.put? ? :created : :no_content)
  rescue JSON::ParserError
    head :bad_request
  end

  def broadcast
    payload = JSON.parse(params.require(:payload))
    to_others = params[:to_others].present?
    if params[:user_id]
      ScopedChannel.broadcast_to(User.find(params[:user_id]), payload, to_others: to_others)
    else
      ActionCable.server.broadcast(params.require(:stream), payload, to_others: to_others)
    end
    head :created
  end

  def events
    render json: Event.order(:id).map { |e| [e.name, e.detail] }
  end

  def clear_events
    Event.delete_all
    head :no_content
  end

  def remote_disconnect
    ActionCable.server.remote_connections
      .where(current_user: User.find(params[:user_id]), tab: params.fetch(:tab, "main"))
      .disconnect
    head :created
  end

  # How many times each Action Cable instrumentation event fired in this process.
  def notifications
    render json: NOTIFICATION_COUNTS.each_pair.to_h
  end

  def stats
    pool = ActiveRecord::Base.connection_pool
    render json: {
      busy: pool.connections.count(&:in_use?),
      sessions: AnyCableRs.runtime? ? AnyCableRs.runtime.dispatcher.session_count : 0,
      stashed_envs: AnyCableRs.runtime? ? AnyCableRs.runtime.stashed_env_count : 0,
      server: AnyCableRs.stats,
      db_pool: ActiveRecord::Base.connection_pool.stat,
      pid: Process.pid
    }
  end

  # A page that reads a channel with the browser's own EventSource (ANYCABLE_SSE):
  # what it got, by event name, in window.got (spec/js/sse_browser.test.mjs).
  def sse_page
    render html: <<~HTML.html_safe
      <!doctype html><title>events</title>
      <script>
        window.got = []
        const source = new EventSource("#{ActionController::Base.helpers.j(params.fetch(:src))}")
        for (const name of ["welcome", "confirm_subscription", "confirm_history", "reject_history", "disconnect", "message"]) {
          source.addEventListener(name, e => window.got.push({event: name, data: e.data, id: e.lastEventId}))
        }
        source.onerror = () => window.got.push({event: "error", state: source.readyState})
      </script>
    HTML
  end
end
