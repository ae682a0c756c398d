# frozen_string_literal: true

# For specs that find a process stuck: SIGURG (unused by Puma outside fork_worker/
# mold_worker) writes every thread's backtrace to stderr.
Signal.trap("URG") do
  Thread.list.each do |t|
    $stderr.write("-- thread #{t.inspect} (pid #{Process.pid})\n#{(t.backtrace || []).first(25).join("\n")}\n")
  end
end
