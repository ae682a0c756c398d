# frozen_string_literal: true

# Answers with TCP_NODELAY of the socket Puma accepted this request on (bench/check_nodelay.rb).
require "socket"

run lambda { |env|
  nodelay = env["puma.socket"].getsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY).int
  [200, {"Content-Type" => "text/plain"}, [nodelay.to_s]]
}
