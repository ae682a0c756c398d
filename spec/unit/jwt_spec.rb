# frozen_string_literal: true

require "spec_helper"
require "anycable_rs"

RSpec.describe AnyCableRs::JWT do
  it "makes AnyCable's tokens byte for byte (the documented test vector)" do
    token = described_class.encode({user: "Z2lkOi8vbXlhcHAvVXNlci80Mg"}, expires_at: 1_767_225_600, secret: "s3cr3t")
    expect(token).to eq("eyJhbGciOiJIUzI1NiJ9.eyJleHQiOiJ7XCJ1c2VyXCI6XCJaMmxrT2k4dmJYbGhjSEF2VlhObGNpODBNZ1wifSIsImV4cCI6MTc2NzIyNTYwMH0.HMRAMFbPToMVTuPT7fCR6aX_d8aMJASA_snGTa7b3rE")
  end

  it "serializes records by GlobalID param and expires after the ttl by default" do
    record = Struct.new(:to_gid_param).new("Z2lk")
    token = described_class.encode({user: record}, ttl: 60, secret: "k")
    claims = JSON.parse(Base64.urlsafe_decode64(token.split(".")[1]))
    expect(JSON.parse(claims["ext"])).to eq("user" => "Z2lk")
    expect(claims["exp"]).to be_within(2).of(Time.now.to_i + 60)
    expect { described_class.encode({}, secret: nil) }.to raise_error(ArgumentError, /ANYCABLE_JWT_SECRET/)
  end
end

RSpec.describe "AnyCableRs::JWT.decode" do
  let(:jwt) { AnyCableRs::JWT }

  it "takes what encode makes, and refuses expired, forged, unsigned and non-HMAC tokens" do
    good = jwt.encode({user: "u1"}, ttl: 60, secret: "k")
    expect(JSON.parse(jwt.decode(good, secret: "k"))).to eq("user" => "u1")
    expect { jwt.decode(good, secret: "other") }.to raise_error(jwt::Invalid)
    expect { jwt.decode(jwt.encode({}, expires_at: Time.now.to_i - 1, secret: "k"), secret: "k") }.to raise_error(jwt::Expired)
    head, body, = good.split(".")
    none = "#{jwt.b64('{"alg":"none"}')}.#{body}."
    expect { jwt.decode(none, secret: "k") }.to raise_error(jwt::Invalid)
    rs = "#{jwt.b64('{"alg":"RS256"}')}.#{body}.#{jwt.b64(OpenSSL::HMAC.digest("SHA256", "k", "#{head}.#{body}"))}"
    expect { jwt.decode(rs, secret: "k") }.to raise_error(jwt::Invalid)
    expect { jwt.decode(good[0, 20], secret: "k") }.to raise_error(jwt::Invalid)
    expect { jwt.decode("a.b.c.d", secret: "k") }.to raise_error(jwt::Invalid)
  end

  def signed(claims, secret: "k")
    head = jwt.b64('{"alg":"HS256"}')
    body = jwt.b64(JSON.generate(claims))
    "#{head}.#{body}.#{jwt.b64(OpenSSL::HMAC.digest("SHA256", secret, "#{head}.#{body}"))}"
  end

  it "refuses exp and nbf that are not numbers (a string exp never expired), and counts fractions" do
    ext = JSON.generate(user: "u1")
    expect { jwt.decode(signed({ext: ext, exp: "1"}), secret: "k") }.to raise_error(jwt::Invalid, /exp is not a number/)
    expect { jwt.decode(signed({ext: ext, exp: nil}), secret: "k") }.to raise_error(jwt::Invalid)
    expect { jwt.decode(signed({ext: ext, nbf: "9999999999"}), secret: "k") }.to raise_error(jwt::Invalid, /nbf/)
    expect { jwt.decode(signed({ext: ext, exp: Time.now.to_f - 10.5}), secret: "k") }.to raise_error(jwt::Expired)
    expect(jwt.decode(signed({ext: ext, exp: Time.now.to_f + 60.5}), secret: "k")).to eq(ext)
    expect { jwt.decode(signed({ext: ext, nbf: Time.now.to_f + 60.5}), secret: "k") }.to raise_error(jwt::Invalid)
  end

  it "agrees with the Rust server on the documented token: expired" do
    token = "eyJhbGciOiJIUzI1NiJ9.eyJleHQiOiJ7XCJ1c2VyXCI6XCJaMmxrT2k4dmJYbGhjSEF2VlhObGNpODBNZ1wifSIsImV4cCI6MTc2NzIyNTYwMH0.HMRAMFbPToMVTuPT7fCR6aX_d8aMJASA_snGTa7b3rE"
    expect { jwt.decode(token, secret: "s3cr3t") }.to raise_error(jwt::Expired)
  end
end
