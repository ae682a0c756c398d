#!/usr/bin/env bash
# The gem as a user gets it, through real processes:
#   1. `gem build` + `gem install` of the source gem into a GEM_HOME of its own (the
#      system's gems visible through GEM_PATH): extconf.rb compiles the extension;
#   2. a fresh `rails new` app (offline: `bundle install --local`) with the gem in its
#      Gemfile, a generated channel, its own config/cable.yml (production: redis, on a
#      redis-server of this test), booted in production with ANYCABLE_EMBEDDED=true; a
#      WebSocket client subscribed there gets a broadcast made by `bin/rails runner`,
#      and so do the HTTP transports (curl: an SSE stream of /events, a Durable Streams
#      read of /ds from the memory broker's history) and a long-polling session opens;
#   3. the same app with the gem as a `path:` gem that is not built: boot names the
#      command that builds it;
#   4. the precompiled platform gem (`rake native:gem`: this Ruby's extension plus any
#      other Ruby's staged in tmp/native/<platform>/) installs with no cargo/rustc on
#      PATH, by `gem install` and through Bundler from the app's vendor/cache (README's
#      Dockerfile), and the app serves on it: boot, subscribe, the runner's broadcast
#      arrives; the source gem, without Rust, says what it needs.
#
#   spec/gem/fresh_app_test.sh --platform-gem FILE
# runs step 4 alone (a fresh app, no Rust on PATH) with a platform gem built elsewhere:
# bin/test installs the gem packed on the second stack (Ruby 3.1 + 3.3) on this one.
# ANYCABLE_GEM_RUBIES="3.1 3.3" makes the gem's list of Rubies a checked expectation.
#
# Cargo builds the installed gem in target/gem-build (CARGO_TARGET_DIR, kept between
# runs: only the two local crates are rebuilt). Set KEEP=1 to keep tmp/gem-test.
set -euo pipefail
given_gem=""
if [ "${1:-}" = "--platform-gem" ]; then
  given_gem="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
  test -f "$given_gem" || { echo "no such gem: $2"; exit 1; }
fi
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

# Not Bundler's environment of whoever runs this: the app has its own Gemfile.
unset BUNDLE_GEMFILE BUNDLE_BIN_PATH BUNDLER_SETUP BUNDLER_VERSION RUBYOPT RUBYLIB GEM_HOME GEM_PATH

work="$root/tmp/gem-test"   # a fixed path: cargo's fingerprints of the gem's crates stay valid
rm -rf "$work"
mkdir -p "$work"
version="$(ruby -r ./lib/anycable_rs/version -e 'print AnyCableRs::VERSION')"
system_gems="$(ruby -e 'print Gem.path.join(":")')"
t0=$SECONDS
step() { echo "-- [$((SECONDS - t0))s] $*"; }

pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    for log in "$work"/*.log; do [ -f "$log" ] && { echo "---- $log (last 40 lines)"; tail -n 40 "$log"; }; done
  fi
  [ -n "${KEEP:-}" ] || rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

free_port() { ruby -rsocket -e 's = TCPServer.new("127.0.0.1", 0); print s.addr[1]; s.close'; }
wait_for_port() { # port, seconds, pid
  for _ in $(seq 1 $(($2 * 10))); do
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0 # connects, sends nothing
    kill -0 "$3" 2>/dev/null || { echo "process $3 died before listening on $1"; return 1; }
    sleep 0.1
  done
  echo "nothing listens on $1 after $2 s"
  return 1
}

# PATH without Rust: a directory holding cargo or rustc is left out, or — when it holds
# much else (Debian's rustc in /usr/bin) — replaced by links to everything else in it.
no_rust_path=""
n=0
while read -r d; do
  [ -n "$d" ] || continue
  if [ ! -x "$d/cargo" ] && [ ! -x "$d/rustc" ]; then
    no_rust_path+="$d:"
  elif [ "$(find "$d" -maxdepth 1 | wc -l)" -gt 50 ]; then
    n=$((n + 1))
    shadow="$work/path-without-rust-$n"
    mkdir -p "$shadow"
    find "$d" -maxdepth 1 -mindepth 1 ! -name 'cargo*' ! -name 'rust*' -exec ln -s {} "$shadow/" \;
    no_rust_path+="$shadow:"
  fi
done < <(tr ':' '\n' <<<"$PATH")
no_rust_path="${no_rust_path%:}"
if PATH="$no_rust_path" command -v cargo >/dev/null || PATH="$no_rust_path" command -v rustc >/dev/null; then
  echo "could not take cargo/rustc off PATH"; exit 1
fi

# ---- 1. the source gem
if [ -z "$given_gem" ]; then
  step "gem build"
  gem build anycable-rs.gemspec --output "$work/anycable-rs-$version.gem" >"$work/gem-build.log" 2>&1
  if tar -xOf "$work/anycable-rs-$version.gem" data.tar.gz | tar -tz | grep -q '^bench/'; then
    echo "the gem ships bench/"; exit 1
  fi

  step "gem install (compiles the extension)"
  export GEM_HOME="$work/gems" GEM_PATH="$work/gems:$system_gems"
  start=$SECONDS
  CARGO_TARGET_DIR="$root/target/gem-build" \
    gem install --local --no-document "$work/anycable-rs-$version.gem" >"$work/gem-install.log" 2>&1
  step "installed in $((SECONDS - start)) s"
  gem list anycable-rs | grep -q "anycable-rs ($version)"
  (cd / && ruby -e 'require "anycable_rs"; AnyCableRs::Native or exit 1')
fi

# ---- 2. a fresh Rails app: a channel, an allowed origin, its own cable.yml
step "rails new"
cd "$work"
# What the app needs and nothing Debian does not package, in the options this Rails
# has (6.1 and 7.2 differ: 7.2 adds brakeman, rubocop, CI, Docker and asset-pipeline
# gems unless told not to).
wanted=(--skip-bundle --skip-git --skip-javascript --skip-webpack-install --skip-spring
  --skip-listen --skip-bootsnap --skip-jbuilder --skip-test --skip-system-test
  --skip-action-mailbox --skip-action-text --skip-active-storage --skip-sprockets
  --skip-asset-pipeline --skip-turbolinks --skip-hotwire --skip-action-mailer
  --skip-active-job --skip-brakeman --skip-rubocop --skip-ci --skip-docker
  --skip-devcontainer --skip-dev-gems --skip-kamal --skip-thruster --skip-solid)
help="$(rails new --help)"
flags=()
for flag in "${wanted[@]}"; do
  grep -qF -- "[$flag]" <<<"$help" && flags+=("$flag")
done
rails new app "${flags[@]}" >"$work/rails-new.log" 2>&1
cd app
# Debian packages neither byebug nor web-console (6.1: development-only gems; no skip
# flag there).
sed -i -E "/gem ['\"](byebug|web-console)['\"]/d" Gemfile
# Rails 7.1+ turns force_ssl on in production: this test's ws:// would be redirected.
sed -i -E 's/^(\s*)config\.force_ssl = true/\1config.force_ssl = false/' config/environments/production.rb
# The app's own bundle first (the gem comes in below, as a user adds it).
bundle install --local >"$work/bundle-app.log" 2>&1

bin/rails generate channel chat >"$work/generate.log" 2>&1
sed -i 's/^\(\s*\)# stream_from "some_channel"/\1stream_from "chat"/' app/channels/chat_channel.rb
grep -q 'stream_from "chat"' app/channels/chat_channel.rb
test -f app/channels/application_cable/connection.rb
# Production allows no WebSocket origin until the app names its own.
sed -i 's|^\(\s*\)# config.action_cable.allowed_request_origins = .*|\1config.action_cable.allowed_request_origins = [%r{\\Ahttp://127\\.0\\.0\\.1(:\\d+)?\\z}]|' \
  config/environments/production.rb
grep -q '^\s*config.action_cable.allowed_request_origins = \[%r' config/environments/production.rb
grep -A3 '^production:' config/cable.yml | grep -q 'adapter: redis'

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for_port "$redis_port" 10 "${pids[-1]}"

# The app in production with ANYCABLE_EMBEDDED=true under Puma (bin/rails server, with
# the PATH given): a WebSocket client subscribes, `bin/rails runner` broadcasts through
# cable.yml's Redis, the client must get it. Prints the extension file the app loaded.
serve_and_broadcast() { # label, PATH
  local label=$1 path=$2 port server origin sse signed poll_id
  export RAILS_ENV=production SECRET_KEY_BASE="$(ruby -rsecurerandom -e 'print SecureRandom.hex(64)')" \
    REDIS_URL="redis://127.0.0.1:$redis_port/1" ANYCABLE_EMBEDDED=true RAILS_LOG_TO_STDOUT=1 \
    ANYCABLE_SSE=true ANYCABLE_POLL=true ANYCABLE_POLL_INTERVAL=1 ANYCABLE_DS=true ANYCABLE_BROKER=memory \
    ANYCABLE_STREAMS_SECRET="$(ruby -rsecurerandom -e 'print SecureRandom.hex(32)')"
  step "$label: boot in production (Puma, ANYCABLE_EMBEDDED=true, cable.yml: redis; SSE, long polling, DS)"
  port="$(free_port)"
  origin="http://127.0.0.1:$port"
  PATH="$path" bin/rails server -b 127.0.0.1 -p "$port" >"$work/puma-$label.log" 2>&1 &
  server=$!
  pids+=($server)
  wait_for_port "$port" 60 "$server"
  step "$label: an SSE stream and a WebSocket client subscribe; bin/rails runner broadcasts"
  sse="$work/sse-$label.log"
  curl -sN --max-time 60 -H "Origin: $origin" "$origin/events?channel=ChatChannel" >"$sse" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q confirm_subscription "$sse" && break; sleep 0.1; done
  grep -q confirm_subscription "$sse" || { cat "$sse"; echo "FAIL ($label): the SSE stream was not subscribed"; exit 1; }
  PATH="$path" node "$root/spec/gem/ws_await_broadcast.mjs" "ws://127.0.0.1:$port/cable" "$origin" \
    ChatChannel "hello from runner" -- \
    bin/rails runner 'puts $LOADED_FEATURES.grep(/anycable_rs\.so/), "signed: #{AnyCableRs::Streams.signed("chat")}"; $stdout.flush; ActionCable.server.broadcast("chat", {text: "hello from runner"})' \
    >"$work/client-$label.log" 2>&1 ||
    { cat "$work/client-$label.log"; echo "FAIL ($label): the runner's broadcast did not reach the client"; exit 1; }
  grep -q "anycable-rs: serving WebSockets" "$work/puma-$label.log" ||
    { echo "FAIL ($label): the app did not serve /cable from anycable-rs"; exit 1; }
  for _ in $(seq 1 50); do grep -q "hello from runner" "$sse" && break; sleep 0.1; done
  grep -q '^data: {"text":"hello from runner"}' "$sse" ||
    { cat "$sse"; echo "FAIL ($label): the runner's broadcast did not reach the SSE stream"; exit 1; }
  step "$label: a Durable Streams read of the history; a long-polling session opens"
  signed="$(sed -n 's/^signed: //p' "$work/client-$label.log")"
  curl -sfG -H "Origin: $origin" --data-urlencode offset=-1 --data-urlencode "signed=$signed" "$origin/ds/chat" \
    >"$work/ds-$label.log" ||
    { echo "FAIL ($label): the DS read was refused"; exit 1; }
  grep -qF '[{"text":"hello from runner"}]' "$work/ds-$label.log" ||
    { cat "$work/ds-$label.log"; echo "FAIL ($label): the DS read did not return the broadcast"; exit 1; }
  curl -sf -D "$work/lp-head-$label.log" -X POST -H "Origin: $origin" \
    --data '{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\"}"}' \
    "$origin/lp" >"$work/lp-$label.log" || { echo "FAIL ($label): the long-polling session was refused"; exit 1; }
  grep -q '"type":"confirm_subscription"' "$work/lp-$label.log" ||
    { cat "$work/lp-$label.log"; echo "FAIL ($label): the long-polling session did not subscribe"; exit 1; }
  # Its next poll, handed over ahead of the app's middleware: 204 after the poll
  # interval (1 s), and no request line of its own in the app's log.
  poll_id="$(sed -n 's/^[Xx]-[Aa]nycable-[Pp]oll-[Ii][Dd]: *\([0-9a-f]*\).*/\1/p' "$work/lp-head-$label.log")"
  [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Origin: $origin" -H "X-Anycable-Poll-ID: $poll_id" "$origin/lp")" = 204 ] ||
    { echo "FAIL ($label): the session's next poll was not answered 204"; exit 1; }
  [ "$(grep -c 'Started POST "/lp"' "$work/puma-$label.log")" = 1 ] ||
    { grep 'Started POST "/lp"' "$work/puma-$label.log"; echo "FAIL ($label): a poll went through the app's middleware"; exit 1; }
  kill "$server"; wait "$server" 2>/dev/null || true
  unset RAILS_ENV SECRET_KEY_BASE REDIS_URL ANYCABLE_EMBEDDED RAILS_LOG_TO_STDOUT ANYCABLE_SSE ANYCABLE_POLL \
    ANYCABLE_POLL_INTERVAL ANYCABLE_DS ANYCABLE_BROKER ANYCABLE_STREAMS_SECRET
  step "$label: broadcast received over WebSocket, SSE and DS"
}

if [ -z "$given_gem" ]; then
  printf '\ngem "anycable-rs", "%s"\n' "$version" >>Gemfile
  bundle install --local >"$work/bundle.log" 2>&1
  grep -q "anycable-rs ($version)" Gemfile.lock
  serve_and_broadcast source-gem "$PATH"
  grep -q "^$work/gems/.*/anycable_rs\.so$" "$work/client-source-gem.log" ||
    { echo "the app did not load the installed source gem's extension"; exit 1; }

  # ---- 3. a path: gem that is not built says what to run
  step "path: gem without a build"
  path_gem="$work/path-gem"
  mkdir -p "$path_gem"
  # The checkout as the gem's files list has it (a fresh clone has no built extension).
  (cd "$root" && ruby -e 'puts Gem::Specification.load("anycable-rs.gemspec").files, "anycable-rs.gemspec", "Rakefile"' |
    xargs cp --parents -t "$path_gem")
  sed -i "s|^gem \"anycable-rs\".*|gem \"anycable-rs\", path: \"$path_gem\"|" Gemfile
  bundle install --local >"$work/bundle-path.log" 2>&1
  if RAILS_ENV=production SECRET_KEY_BASE=x ANYCABLE_EMBEDDED=true bin/rails runner 'p 1' >"$work/path-boot.log" 2>&1; then
    echo "a path: gem without its extension booted"; exit 1
  fi
  grep -qF "cd $path_gem && rake compile" "$work/path-boot.log" ||
    { cat "$work/path-boot.log"; echo "the boot error does not name the build command"; exit 1; }
fi

# ---- 4. the precompiled platform gem, no Rust on PATH
abi="$(ruby -e 'print RUBY_VERSION[/\A\d+\.\d+/]')"
if [ -n "$given_gem" ]; then
  native_gem="$given_gem"
else
  cd "$root"
  step "rake native:gem"
  (unset GEM_HOME GEM_PATH; rake native:gem) >"$work/native-gem.log" 2>&1
  native_gem="$root/$(tail -n 1 "$work/native-gem.log" | awk '{print $1}')" # "pkg/<file> (Ruby …)"
fi
test -f "$native_gem"
contents="$(tar -xOf "$native_gem" data.tar.gz | tar -tz)"
rubies="$(sed -n 's|^lib/anycable_rs/\([0-9.]*\)/anycable_rs\.so$|\1|p' <<<"$contents" | tr '\n' ' ')"
step "$(basename "$native_gem") carries the extension for Ruby ${rubies% }"
for want in $abi ${ANYCABLE_GEM_RUBIES:-}; do
  grep -qx "lib/anycable_rs/$want/anycable_rs.so" <<<"$contents" ||
    { echo "the platform gem has no extension for Ruby $want"; exit 1; }
done
if grep -q '^ext/' <<<"$contents"; then echo "the platform gem ships ext/"; exit 1; fi
tar -xOf "$native_gem" metadata.gz | gunzip | grep -q '^extensions: \[\]'
# Each extension links against no newer glibc than this machine's: one built on a newer
# Debian must still load on the older one (and in the Docker images built on it).
glibc="$(getconf GNU_LIBC_VERSION | awk '{print $2}')"
mkdir -p "$work/native-contents"
tar -xOf "$native_gem" data.tar.gz | tar -xz -C "$work/native-contents"
for so in "$work"/native-contents/lib/anycable_rs/*/anycable_rs.so; do
  needs="$(objdump -T "$so" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
  [ "$(printf '%s\n%s\n' "$needs" "$glibc" | sort -V | tail -1)" = "$glibc" ] ||
    { echo "$so needs glibc $needs; this machine has $glibc"; exit 1; }
done

step "gem install of the platform gem with PATH=$no_rust_path"
export GEM_HOME="$work/gems-native" GEM_PATH="$work/gems-native:$system_gems"
PATH="$no_rust_path" gem install --local --no-document "$native_gem" >"$work/native-install.log" 2>&1
(cd / && PATH="$no_rust_path" ruby -e 'require "anycable_rs"; p AnyCableRs::Native' | grep -qx AnyCableRs::Native)

step "the app on the platform gem from vendor/cache (README's Dockerfile), no Rust on PATH"
cd "$work/app"
export GEM_HOME="$work/gems-cache" GEM_PATH="$work/gems-cache:$system_gems"
mkdir -p vendor/cache
cp "$native_gem" vendor/cache/
if grep -q '^gem "anycable-rs"' Gemfile; then
  sed -i "s|^gem \"anycable-rs\".*|gem \"anycable-rs\", \"$version\"|" Gemfile
else
  printf '\ngem "anycable-rs", "%s"\n' "$version" >>Gemfile
fi
rm -f Gemfile.lock
# --no-cache: with a vendor/cache, Bundler would otherwise copy every gem there.
PATH="$no_rust_path" bundle install --local --no-cache >"$work/bundle-native.log" 2>&1
grep -q "anycable-rs ($version-" Gemfile.lock
serve_and_broadcast platform-gem "$no_rust_path"
grep -q "gems-cache/gems/anycable-rs-$version-[^/]*/lib/anycable_rs/$abi/anycable_rs.so" "$work/client-platform-gem.log" ||
  { echo "the app did not load the platform gem's extension for Ruby $abi"; exit 1; }
cd "$root"

if [ -z "$given_gem" ]; then
  step "the source gem without Rust says what it needs"
  export GEM_HOME="$work/gems-norust" GEM_PATH="$work/gems-norust:$system_gems"
  if PATH="$no_rust_path" gem install --local --no-document "$work/anycable-rs-$version.gem" >"$work/norust-install.log" 2>&1; then
    echo "the source gem installed without cargo"; exit 1
  fi
  grep -q "needs a Rust toolchain" "$work/norust-install.log"
fi

step "all passed"
