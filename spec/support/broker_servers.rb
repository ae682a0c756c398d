# frozen_string_literal: true

require "fileutils"
require "tmpdir"
require "erb"

# A real pub/sub server (Debian's package) on a free loopback port.
class BrokerServer
  attr_reader :port

  def initialize
    @port = PumaServer.free_port
    @log = File.join(Dir.tmpdir, "anycable-rs-#{self.class.name.downcase}-#{@port}.log")
  end

  def start
    @pid = Process.spawn(*command, out: @log, err: @log)
    deadline = Time.now + 10
    until listening?
      raise "#{command.first} did not start:\n#{File.read(@log)}" if Time.now > deadline

      sleep 0.05
    end
    self
  end

  def listening?
    TCPSocket.new("127.0.0.1", port).close
    true
  rescue SystemCallError
    false
  end

  def stop
    return unless @pid

    Process.kill("TERM", @pid)
    Process.wait(@pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @pid = nil
  end
end

class NatsServer < BrokerServer
  def url
    "nats://127.0.0.1:#{port}"
  end

  def command
    ["nats-server", "-a", "127.0.0.1", "-p", port.to_s]
  end
end

# nats-server that requires a user and password (`url` carries them, percent-encoded as
# RFC 3986 has it: a space is %20).
class AuthNatsServer < NatsServer
  USER = "any@cable"
  PASSWORD = "p@ss w0rd:/%"

  def url
    "nats://#{ERB::Util.url_encode(USER)}:#{ERB::Util.url_encode(PASSWORD)}@127.0.0.1:#{port}"
  end

  def command
    super + ["--user", USER, "--pass", PASSWORD] + (@jetstream ? ["-js", "-sd", store_dir] : [])
  end

  def with_jetstream
    @jetstream = true
    self
  end

  def store_dir
    @store_dir ||= Dir.mktmpdir("anycable-rs-jetstream")
  end

  def cleanup
    FileUtils.rm_rf(@store_dir) if @store_dir
  end
end

# nats-server that requires TLS (`url` is tls://localhost:<port>) with a certificate for
# localhost signed by a CA this test makes (`ca_file`: what SSL_CERT_FILE points at to
# trust it); `other_ca_file`, a CA that did not sign it.
class TlsNatsServer < NatsServer
  def url
    "tls://localhost:#{port}"
  end

  def command
    super + ["--tls", "--tlscert", file("server.pem"), "--tlskey", file("server.key")]
  end

  def ca_file
    file("ca.pem")
  end

  def other_ca_file
    file("other-ca.pem")
  end

  def start
    make_certificates
    super
  end

  def cleanup
    FileUtils.rm_rf(@dir) if @dir
  end

  private

  def file(name)
    @dir ||= Dir.mktmpdir("anycable-rs-nats-tls")
    File.join(@dir, name)
  end

  def make_certificates
    require "openssl"
    ca_key, ca = authority("anycable-rs test CA")
    _, other = authority("another CA")
    key = OpenSSL::PKey::RSA.new(2048)
    cert = certificate(key.public_key, "localhost", ca, ca_key) do |ext|
      [ext.create_extension("subjectAltName", "DNS:localhost,IP:127.0.0.1"),
        ext.create_extension("extendedKeyUsage", "serverAuth")]
    end
    File.write(file("ca.pem"), ca.to_pem)
    File.write(file("other-ca.pem"), other.to_pem)
    File.write(file("server.pem"), cert.to_pem)
    File.write(file("server.key"), key.to_pem)
  end

  def authority(name)
    key = OpenSSL::PKey::RSA.new(2048)
    cert = certificate(key.public_key, name, nil, key) do |ext|
      [ext.create_extension("basicConstraints", "CA:TRUE", true),
        ext.create_extension("keyUsage", "keyCertSign,cRLSign", true)]
    end
    [key, cert]
  end

  def certificate(public_key, name, issuer, issuer_key)
    cert = OpenSSL::X509::Certificate.new
    cert.version = 2
    cert.serial = rand(1 << 64)
    cert.subject = OpenSSL::X509::Name.parse("/CN=#{name}")
    cert.issuer = issuer ? issuer.subject : cert.subject
    cert.public_key = public_key
    cert.not_before = Time.now - 60
    cert.not_after = Time.now + 3600
    ext = OpenSSL::X509::ExtensionFactory.new
    ext.subject_certificate = cert
    ext.issuer_certificate = issuer || cert
    yield(ext).each { |e| cert.add_extension(e) }
    cert.sign(issuer_key, OpenSSL::Digest.new("SHA256"))
    cert
  end
end

# nats-server with JetStream (ANYCABLE_BROKER=nats); its store survives a restart.
class JetStreamServer < NatsServer
  def store_dir
    @store_dir ||= Dir.mktmpdir("anycable-rs-jetstream")
  end

  def command
    super + ["-js", "-sd", store_dir]
  end

  def cleanup
    FileUtils.rm_rf(@store_dir) if @store_dir
  end
end

class RedisServer < BrokerServer
  def url
    "redis://127.0.0.1:#{port}"
  end

  # No persistence: a restart starts empty, as the fault test wants.
  def command
    ["redis-server", "--bind", "127.0.0.1", "--port", port.to_s, "--save", "", "--appendonly", "no", "--dir", Dir.tmpdir]
  end
end
