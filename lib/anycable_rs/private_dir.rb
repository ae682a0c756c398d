# frozen_string_literal: true

require "tmpdir"

module AnyCableRs
  # This user's directory for the gem's machine-local files (the workers' relay
  # sockets, the embedded NATS lock): $TMPDIR/anycable-rs-<uid>, and directories in it,
  # each ours with mode 0700 — another user must not plant or read them.
  module PrivateDir
    module_function

    def base
      ensure!(File.join(Dir.tmpdir, "anycable-rs-#{Process.uid}"), "the gem's machine-local files")
    end

    # Makes `path` (0700) if it is missing; raises unless it is a directory of ours that
    # no one else can write or read. `what` says what it holds, for the error.
    def ensure!(path, what)
      begin
        Dir.mkdir(path, 0o700)
      rescue Errno::EEXIST
        nil
      end
      stat = File.lstat(path)
      return path if stat.directory? && stat.uid == Process.uid && (stat.mode & 0o077).zero?

      raise Error, "anycable-rs: #{path} (#{what}) must be a directory owned by uid #{Process.uid} " \
        "with mode 0700; remove it, or set TMPDIR elsewhere"
    end
  end
end
