# frozen_string_literal: true

module AnyCableRs
  # Prometheus metrics (ANYCABLE_METRICS_HTTP, e.g. /metrics) on Puma's port: when
  # ANYCABLE_METRICS_ON_PUMA_PORT is set, or when there is no own port (ANYCABLE_PORT)
  # to serve them. Each Puma worker answers with its own numbers, as each AnyCable
  # node does (scrape every machine; with Puma workers, prefer the own port and
  # label by instance). With ANYCABLE_METRICS_TOKEN, only `Authorization: Bearer <token>`.
  class MetricsEndpoint
    def initialize(app)
      @app = app
    end

    def call(env)
      config = AnyCableRs.config
      return @app.call(env) unless config.embedded && config.metrics_on_puma_port? && env["PATH_INFO"] == config.metrics_http
      return [405, {"Content-Type" => "text/plain"}, ["GET only"]] unless env["REQUEST_METHOD"] == "GET"

      native = AnyCableRs.runtime.native
      return [401, {"Content-Type" => "text/plain"}, ["Unauthorized"]] unless native.metrics_authorized?(env["HTTP_AUTHORIZATION"])

      [200, {"Content-Type" => "text/plain; version=0.0.4"}, [native.metrics_text]]
    end
  end
end
