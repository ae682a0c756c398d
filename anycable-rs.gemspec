# frozen_string_literal: true

require_relative "lib/anycable_rs/version"

Gem::Specification.new do |spec|
  spec.name = "anycable-rs"
  spec.version = AnyCableRs::VERSION
  spec.summary = "An AnyCable-compatible WebSocket server inside your Rails process"
  spec.description = "Serves Action Cable from a Rust (tokio) server embedded in Puma, " \
    "running the app's own connection and channel classes in-process."
  spec.authors = ["anycable-rs developers"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.0"

  # What cargo needs to build the extension: the workspace (core crate + extension
  # crate) and its lock file. bench/ is a workspace of its own and stays out.
  spec.files = Dir.glob(["lib/**/*.rb", "ext/**/*.{rs,rb,toml}", "src/**/*.rs", "exe/*",
    "Cargo.toml", "Cargo.lock", "README.md"], base: __dir__).sort
  spec.require_paths = ["lib"]
  spec.bindir = "exe"
  spec.executables = ["anycable-rs"]
  spec.extensions = ["ext/anycable_rs/extconf.rb"]

  spec.add_dependency "actioncable", ">= 6.1"
  spec.add_dependency "railties", ">= 6.1"
end
