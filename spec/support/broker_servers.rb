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

# A CA this test makes, a certificate for localhost (and 127.0.0.1) it signs, and
# another CA that signed nothing, as PEM files in a temporary directory.
class TestCertificates
  attr_reader :dir

  def initialize
    require "openssl"
    @dir = Dir.mktmpdir("anycable-rs-tls")
    ca_key, ca = authority("anycable-rs test CA")
    _, other = authority("another CA")
    key = OpenSSL::PKey::RSA.new(2048)
    cert = certificate(key.public_key, "localhost", ca, ca_key) do |ext|
      [ext.create_extension("subjectAltName", "DNS:localhost,IP:127.0.0.1"),
        ext.create_extension("extendedKeyUsage", "serverAuth")]
    end
    File.write(ca_file, ca.to_pem)
    File.write(other_ca_file, other.to_pem)
    File.write(cert_file, cert.to_pem)
    File.write(key_file, key.to_pem)
  end

  def ca_file = File.join(@dir, "ca.pem")
  def other_ca_file = File.join(@dir, "other-ca.pem")
  def cert_file = File.join(@dir, "server.pem")
  def key_file = File.join(@dir, "server.key")

  def cleanup
    FileUtils.rm_rf(@dir)
  end

  private

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

# nats-server that requires TLS (`url` is tls://localhost:<port>) with TestCertificates
# (`certs.ca_file`: what SSL_CERT_FILE points at to trust it).
class TlsNatsServer < NatsServer
  # `user`/`password`: it asks for them too (the URL carries them, percent-encoded).
  def initialize(user: nil, password: nil)
    super()
    @user = user
    @password = password
  end

  def certs
    @certs ||= TestCertificates.new
  end

  def url
    login = @user ? "#{ERB::Util.url_encode(@user)}:#{ERB::Util.url_encode(@password)}@" : ""
    "tls://#{login}localhost:#{port}"
  end

  def command
    super + ["--tls", "--tlscert", certs.cert_file, "--tlskey", certs.key_file] +
      (@user ? ["--user", @user, "--pass", @password] : [])
  end

  def ca_file = certs.ca_file
  def other_ca_file = certs.other_ca_file

  def cleanup
    @certs&.cleanup
  end
end

# nats-server whose one user logs in with an nkey (`seed`, made at random by the
# extension as a user would with `nk -gen user`); `url` carries no credentials.
class NkeyNatsServer < NatsServer
  attr_reader :seed, :public_key

  def initialize
    super
    require "securerandom"
    @seed, @public_key = AnyCableRs::Native.nkey_user(SecureRandom.hex(32))
    @conf = File.join(Dir.tmpdir, "anycable-rs-nkey-nats-#{port}.conf")
    File.write(@conf, "authorization { users = [ { nkey: \"#{@public_key}\" } ] }\n")
  end

  def command
    super + ["-c", @conf]
  end

  def cleanup
    FileUtils.rm_f(@conf)
  end
end

# nats-server in operator mode (decentralized JWT auth, as Synadia Cloud and `nsc`
# set-ups run it): an operator, an account it signs (preloaded, JetStream allowed; a
# system account beside it, which JetStream needs) and
# users that account signs, made here as `nsc` would (nkeys from the extension, JWTs
# signed with them). `creds_file(name)` writes a user's credentials file; a user signed
# by `other_account` is one the server does not know.
class OperatorNatsServer < NatsServer
  HEADER = {typ: "JWT", alg: "ed25519-nkey"}.freeze
  UNLIMITED = {subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1,
               leaf: -1, mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1}.freeze

  attr_reader :files

  def initialize(jetstream: false)
    super()
    require "securerandom"
    require "base64"
    @jetstream = jetstream
    @operator = self.class.pair(:operator)
    @account = self.class.pair(:account)
    @other_account = self.class.pair(:account)
    system = self.class.pair(:account)
    @files = []
    operator_jwt = jwt(@operator, @operator, "test-operator", type: "operator", version: 2)
    account_jwt = jwt(@operator, @account, "app",
      type: "account", version: 2, limits: UNLIMITED, default_permissions: {pub: {}, sub: {}})
    # JetStream needs a system account in operator mode.
    system_jwt = jwt(@operator, system, "SYS", type: "account", version: 2,
      limits: UNLIMITED.merge(mem_storage: 0, disk_storage: 0, streams: 0, consumer: 0))
    @conf = write("conf", <<~CONF)
      operator: "#{operator_jwt}"
      system_account: #{system.last}
      resolver: MEMORY
      resolver_preload: { #{@account.last}: "#{account_jwt}", #{system.last}: "#{system_jwt}" }
    CONF
  end

  # A user's credentials file (path), as `nsc generate creds` writes it; `signed_by:
  # :other_account` makes one from an account this server does not know.
  def creds_file(name, signed_by: :account)
    user = self.class.pair(:user)
    issuer = signed_by == :account ? @account : @other_account
    claims = {pub: {}, sub: {}, subs: -1, data: -1, payload: -1, type: "user", version: 2}
    path = write("#{name}.creds", <<~CREDS)
      -----BEGIN NATS USER JWT-----
      #{jwt(issuer, user, name, **claims)}
      ------END NATS USER JWT------

      ************************* IMPORTANT *************************
      NKEY Seed printed below can be used to sign and prove identity.
      NKEYs are sensitive and should be treated as secrets.

      -----BEGIN USER NKEY SEED-----
      #{user.first}
      ------END USER NKEY SEED------
    CREDS
    [path, user.first]
  end

  def command
    super + ["-c", @conf] + (@jetstream ? ["-js", "-sd", store_dir] : [])
  end

  def store_dir
    @store_dir ||= Dir.mktmpdir("anycable-rs-operator-js")
  end

  def cleanup
    FileUtils.rm_f(@files)
    FileUtils.rm_rf(@store_dir) if @store_dir
  end

  # [seed, public key] of a new nkey of `kind`: a seed is base32 of the seed prefix
  # and kind (two bytes), 32 random bytes and their CRC-16 (XMODEM, little-endian).
  def self.pair(kind)
    type = {operator: 14 << 3, account: 0, user: 20 << 3}.fetch(kind)
    raw = [(18 << 3) | (type >> 5), (type & 31) << 3].pack("C2") + SecureRandom.bytes(32)
    seed = base32(raw + [crc16(raw)].pack("v"))
    [seed, AnyCableRs::Native.nkey_public(seed)]
  end

  def self.crc16(bytes)
    bytes.each_byte.reduce(0) do |crc, byte|
      crc ^= byte << 8
      8.times { crc = (crc & 0x8000).zero? ? (crc << 1) & 0xFFFF : ((crc << 1) ^ 0x1021) & 0xFFFF }
      crc
    end
  end

  def self.base32(bytes)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    bits = bytes.unpack1("B*")
    bits += "0" * ((5 - bits.size % 5) % 5)
    bits.scan(/.{5}/).map { |chunk| alphabet[chunk.to_i(2)] }.join
  end

  private

  # A NATS JWT: `issuer` ([seed, public]) signs claims about `subject`.
  def jwt(issuer, subject, name, **nats)
    claims = {jti: SecureRandom.hex(16).upcase, iat: Time.now.to_i, iss: issuer.last, name: name,
              sub: subject.last, nats: nats}
    input = [HEADER, claims].map { |part| Base64.urlsafe_encode64(JSON.generate(part), padding: false) }.join(".")
    "#{input}.#{AnyCableRs::Native.nkey_sign(issuer.first, input)}"
  end

  def write(name, text)
    path = File.join(Dir.tmpdir, "anycable-rs-operator-nats-#{port}-#{name}")
    File.write(path, text)
    File.chmod(0o600, path)
    @files << path
    path
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

# redis-server (Debian's is built with TLS) that speaks only TLS, with TestCertificates,
# and an ACL user: `url` is rediss://anycable:<password>@localhost:<port>.
class TlsRedisServer < BrokerServer
  USER = "anycable"
  PASSWORD = "s3cret p@ss"

  def certs
    @certs ||= TestCertificates.new
  end

  def url(password: PASSWORD)
    "rediss://#{USER}:#{ERB::Util.url_encode(password)}@localhost:#{port}"
  end

  def command
    ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", port.to_s,
      "--tls-cert-file", certs.cert_file, "--tls-key-file", certs.key_file, "--tls-ca-cert-file", certs.ca_file,
      "--tls-auth-clients", "no", "--user", "default", "off", "--user", USER, "on", ">#{PASSWORD}", "~*", "&*", "+@all",
      "--save", "", "--appendonly", "no", "--dir", Dir.tmpdir]
  end

  def cleanup
    @certs&.cleanup
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
