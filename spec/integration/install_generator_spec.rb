# frozen_string_literal: true

require "spec_helper"
require "open3"
require "tmpdir"
require "fileutils"
require "anycable_rs/config"

# `rails g anycable_rs:install`, run by Rails' own command in a copy of the dummy app.
RSpec.describe "rails g anycable_rs:install" do
  around do |example|
    Dir.mktmpdir("anycable-rs-generator") do |dir|
      @app = dir
      %w[app config config.ru].each { |f| FileUtils.cp_r(File.join(PumaServer::DUMMY, f), dir) }
      example.run
    end
  end

  def generate
    out, status = Open3.capture2e(
      {"RAILS_ENV" => "development", "DUMMY_DATABASE" => File.join(@app, "db.sqlite3"),
       "DUMMY_LOG" => File::NULL, "RUBYOPT" => "-I#{File.expand_path("../../lib", __dir__)} #{ENV["RUBYOPT"]}"},
      "ruby", "-e", 'APP_PATH = File.expand_path("config/application", Dir.pwd); require "rails/commands"',
      "--", "generate", "anycable_rs:install", chdir: @app
    )
    expect(status).to be_success, out
    out
  end

  def load_config(rails_env: "production")
    AnyCableRs::Config.load(env: {}, yaml_path: File.join(@app, "config", "anycable.yml"), rails_env: rails_env,
      cable_yaml_path: nil)
  end

  def file(name)
    File.read(File.join(@app, name))
  end

  it "writes config/anycable.yml listing every setting, commented out, with its default" do
    out = generate
    expect(out).to match(%r{create\s+config/anycable\.yml})
    yaml = file("config/anycable.yml")
    AnyCableRs::Config::DEFAULTS.each_key do |key|
      expect(yaml).to match(/^  # #{key}: /), "config/anycable.yml does not list #{key}"
    end
    expect(yaml).to include("  # write_timeout: 2.0\n", "  # path: /cable\n", "  # embedded: false\n")
    defaults = AnyCableRs::Config.new
    %w[development test production].each do |env|
      c = load_config(rails_env: env)
      expect(AnyCableRs::Config::DEFAULTS.keys.map { |k| c.public_send(k) })
        .to eq(AnyCableRs::Config::DEFAULTS.keys.map { |k| defaults.public_send(k) })
    end
    # Uncommenting a line under `default` sets it for every env.
    File.write(File.join(@app, "config", "anycable.yml"),
      yaml.sub("  # embedded: false", "  embedded: true").sub("  # port: 8080", "  port: 8080"))
    expect([load_config.embedded, load_config.port, load_config(rails_env: "test").embedded]).to eq([true, 8080, true])
    expect(out).to include("anycable-rs is installed. Next:")
    # The dummy app's cable.yml says async for production.
    expect(out).to include("config/cable.yml says async for production", "ANYCABLE_BROADCAST_ADAPTER=nats")
  end

  it "adds ANYCABLE_EMBEDDED to fly.toml's [env], once" do
    toml = %(app = "my-app"\n\n[env]\n  PORT = "3000"\n\n[http_service]\n  internal_port = 3000\n)
    File.write(File.join(@app, "fly.toml"), toml)
    expect(generate).to match(/insert\s+fly\.toml/)
    expected = %(app = "my-app"\n\n[env]\n  ANYCABLE_EMBEDDED = "true"\n  PORT = "3000"\n\n[http_service]\n  internal_port = 3000\n)
    expect(file("fly.toml")).to eq(expected)
    expect(generate).to match(/identical\s+config\/anycable\.yml/)
    expect(file("fly.toml")).to eq(expected)
  end

  it "adds an [env] section to a fly.toml without one, and leaves apps without fly.toml alone" do
    File.write(File.join(@app, "fly.toml"), %(app = "my-app"\n))
    generate
    expect(file("fly.toml")).to eq(%(app = "my-app"\n\n[env]\n  ANYCABLE_EMBEDDED = "true"\n))
    FileUtils.rm(File.join(@app, "fly.toml"))
    FileUtils.rm(File.join(@app, "config", "anycable.yml"))
    generate
    expect(File.exist?(File.join(@app, "fly.toml"))).to be(false)
  end
end
