# frozen_string_literal: true

require "anycable_rs/private_dir"

module AnyCableRs
  # Puma workers each serve their own sockets. With the `local` or `http` broadcast
  # adapter, a broadcast made in one worker (or a POST /_broadcast that one worker took)
  # must reach the others' clients too: the workers of one Puma master relay broadcasts
  # among themselves over Unix sockets in a directory of their own (the Rust side's
  # SiblingBroker). nats and redis need no relay: every worker subscribes.
  module WorkersRelay
    module_function

    def needed?(config = AnyCableRs.config)
      %w[local http].include?(config.broadcast_adapter) && puma_workers.to_i > 1
    end

    # Puma's worker count, once Puma has read its config (nil before, or without Puma).
    def puma_workers
      return nil unless defined?(::Puma) && ::Puma.respond_to?(:cli_config) && ::Puma.cli_config

      ::Puma.cli_config.options[:workers].to_i
    end

    # The directory this worker's siblings share (its Puma master's), made private
    # (0700, ours) if new. Directories of masters that no longer run are removed.
    def dir
      base = PrivateDir.base
      remove_stale(base)
      PrivateDir.ensure!(File.join(base, "puma-#{Process.ppid}"), "the Puma workers' broadcast relay")
    end

    def remove_stale(base)
      Dir.glob(File.join(base, "puma-*")).each do |dir|
        pid = Integer(File.basename(dir).delete_prefix("puma-"), exception: false)
        next unless pid && !alive?(pid)

        Dir.glob(File.join(dir, "*.sock")).each { |f| File.delete(f) rescue nil } # rubocop:disable Style/RescueModifier
        Dir.rmdir(dir) rescue nil # rubocop:disable Style/RescueModifier
      end
    end

    def alive?(pid)
      Process.kill(0, pid)
      true
    rescue Errno::ESRCH
      false
    rescue Errno::EPERM
      true
    end
  end
end
