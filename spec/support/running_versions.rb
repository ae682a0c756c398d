# frozen_string_literal: true

# What the stack under test runs (Debian 12: Rails 6.1, Puma 5.6, Ruby 3.1; Debian 13
# in bin/test-trixie: Rails 7.2, Puma 6.6, Ruby 3.3), for the few expectations that
# follow it — each one what that version does, never "either".
module RunningVersions
  module_function

  def rails
    require "action_pack/version"
    ActionPack.gem_version
  end

  def puma
    require "puma/const"
    Gem::Version.new(Puma::Const::PUMA_VERSION)
  end

  # The path of a request to the app's mounted /cable as the app reads and logs it:
  # Rails 7.1+ leaves PATH_INFO empty there ("/cable"); before, "/" ("/cable/").
  def cable_path_on_puma
    rails >= Gem::Version.new("7.1") ? "/cable" : "/cable/"
  end

  # The status line Puma writes for a request it cannot parse (a head over its
  # limits): Puma 6 answers these with HTTP/1.0.
  def puma_parse_error_version
    puma >= Gem::Version.new("6") ? "HTTP/1.0" : "HTTP/1.1"
  end

  # Puma's cluster master reaps every child, ours too (`wait_workers`), and logs
  # "! reaped unknown child process pid=… status=…" for those not its workers: seen in
  # 6.6, not in 5.6.
  def puma_master_reaps_all?
    puma >= Gem::Version.new("6")
  end

  # The name of the thread Ruby's timeout library keeps for every Timeout.timeout
  # (timeout 0.4+, Ruby 3.3; Net::HTTP starts it): not one of ours.
  TIMEOUT_THREAD = "Timeout stdlib thread"
end
