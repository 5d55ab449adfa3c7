// Hostile and corrupt frames: every check in DecodeFrame fires with a precise
// reason, and nothing is written outside the destination (guard values).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zstd.h>

#include <cstring>
#include <random>

#include "compression/codec.h"
#include "compression/hash64.h"
#include "common/env.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

using ::testing::HasSubstr;

constexpr float kGuard = -777.0f;
constexpr size_t kGuardCount = 64;

std::unique_ptr<Codec> MakeCodec(CodecKind kind, int64_t chunk, int block = 256) {
  CodecOptions o;
  o.kind = kind;
  o.chunk_elements = chunk;
  o.threads = 2;
  o.int8_block = block;
  return std::move(Codec::Create(o)).value();
}

std::vector<float> Values(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1e-2f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// A destination of n values between guard regions.
class GuardedBuffer {
 public:
  explicit GuardedBuffer(size_t n) : storage_(n + 2 * kGuardCount, kGuard), n_(n) {}
  std::span<float> span() { return std::span<float>(storage_).subspan(kGuardCount, n_); }
  bool GuardsIntact() const {
    for (size_t i = 0; i < kGuardCount; ++i) {
      if (storage_[i] != kGuard || storage_[kGuardCount + n_ + i] != kGuard) return false;
    }
    return true;
  }

 private:
  std::vector<float> storage_;
  size_t n_;
};

// What a forger who knows the format does: rewrites the checksum after a change.
void Reseal(std::string& frame) {
  if (frame.size() < kFrameHeaderBytes) return;
  const std::string_view f = frame;
  const uint64_t sum = Hash64({f.substr(0, 56), f.substr(kFrameHeaderBytes)});
  std::memcpy(frame.data() + 56, &sum, 8);
}

template <typename T>
void PutField(std::string& frame, size_t off, T v) {
  std::memcpy(frame.data() + off, &v, sizeof(T));
}

// Replaces the payload with `payload` and fixes the header's payload length.
std::string WithPayload(const std::string& frame, std::string_view payload) {
  std::string out = frame.substr(0, kFrameHeaderBytes);
  out.append(payload);
  PutField<uint64_t>(out, 40, payload.size());
  Reseal(out);
  return out;
}

Status Decode(Codec& codec, std::string_view frame, size_t n, bool* guards_ok) {
  GuardedBuffer buf(n);
  Status s = codec.DecodeFrame(frame, buf.span());
  *guards_ok = buf.GuardsIntact();
  return s;
}

class CorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    codec_ = MakeCodec(CodecKind::kBf16, 200);
    frames_ = *codec_->Encode(Values(kN, 1));
    frame_ = frames_[1];  // elements [200, 400) of 500
  }
  // Decodes `frame` into a guarded slice of kN values, expecting `code` and `reason`.
  void ExpectFailure(const std::string& frame, StatusCode code, const std::string& reason) {
    bool guards_ok = false;
    Status s = Decode(*codec_, frame, kN, &guards_ok);
    EXPECT_EQ(s.code(), code) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(reason));
    EXPECT_TRUE(guards_ok);
  }
  static constexpr size_t kN = 500;
  std::unique_ptr<Codec> codec_;
  std::vector<std::string> frames_;
  std::string frame_;
};

TEST_F(CorruptionTest, IntactFrameDecodes) {
  bool guards_ok = false;
  EXPECT_TRUE(Decode(*codec_, frame_, kN, &guards_ok).ok());
  EXPECT_TRUE(guards_ok);
}

TEST_F(CorruptionTest, EveryTruncationFails) {
  for (size_t len = 0; len < frame_.size(); ++len) {
    bool guards_ok = false;
    Status s = Decode(*codec_, std::string_view(frame_).substr(0, len), kN, &guards_ok);
    ASSERT_EQ(s.code(), StatusCode::kDataLoss) << "length " << len << ": " << s.ToString();
    ASSERT_TRUE(guards_ok);
  }
  ExpectFailure(frame_.substr(0, 10), StatusCode::kDataLoss, "shorter than its 64-byte header");
  ExpectFailure(frame_.substr(0, frame_.size() - 1), StatusCode::kDataLoss, "payload bytes");
  ExpectFailure(frame_ + "x", StatusCode::kDataLoss, "payload bytes");
}

TEST_F(CorruptionTest, EveryBitFlipFails) {
  for (size_t i = 0; i < frame_.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string f = frame_;
      f[i] = static_cast<char>(f[i] ^ (1 << bit));
      bool guards_ok = false;
      Status s = Decode(*codec_, f, kN, &guards_ok);
      ASSERT_EQ(s.code(), StatusCode::kDataLoss)
          << "byte " << i << " bit " << bit << ": " << s.ToString();
      ASSERT_TRUE(guards_ok);
    }
  }
  std::string payload_flip = frame_;
  payload_flip[kFrameHeaderBytes + 5] ^= 0x10;
  ExpectFailure(payload_flip, StatusCode::kDataLoss, "checksum mismatch");
}

// A frame written by the build before the XXH3-64 checksum (format version 1: int8,
// values [4096, 6000) of a 6000-value slice, in testdata/) is refused, saying why.
TEST(FrameFormatTest, VersionOneFramesAreRefusedWithTheReason) {
  auto frame = Env::Default()->ReadFile(JoinPath(testing::SourceDir(), "tests/compression/testdata/int8-v1.frame"));
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  ASSERT_EQ(frame->substr(0, 6), std::string("FPSZ\x01\x00", 6));
  auto header = Codec::PeekHeader(*frame);
  EXPECT_EQ(header.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(header.status().message(), HasSubstr("frame format version 1"));
  EXPECT_THAT(header.status().message(), HasSubstr("this build reads version 2"));
  auto codec = MakeCodec(CodecKind::kInt8, 4096);
  std::vector<float> out(6000);
  Status s = codec->DecodeFrame(*frame, out);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("XXH3-64"));
}

// The whole frame docs/compression.md gives third parties: its checksum is XXH3-64 of
// bytes [0, 56) + [64, end), and it decodes to the values the page names.
TEST(FrameFormatTest, DocumentedFrameDecodes) {
  const std::string hex =
      "4650535a02000000000000000000000000000000000000000400000000000000040000000000000019000000"
      "0000000010000000000000002d963737bb20180328b52ffd20108100003fc03f40800000400000000000000000";
  std::string frame;
  for (size_t i = 0; i < hex.size(); i += 2) frame.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  ASSERT_EQ(frame.size(), 89u);
  const std::string_view f = frame;
  uint64_t stored = 0;
  std::memcpy(&stored, frame.data() + 56, 8);
  EXPECT_EQ(stored, 0x031820BB3737962Dull);
  EXPECT_EQ(Hash64({f.substr(0, 56), f.substr(kFrameHeaderBytes)}), stored);
  auto codec = MakeCodec(CodecKind::kBf16, 1024);  // decoding follows the frame's own kind
  std::vector<float> out(4);
  ASSERT_TRUE(codec->DecodeFrame(frame, out).ok());
  EXPECT_EQ(out, (std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f}));
}

// Header fields that lie, with a valid checksum (so the field checks must catch them).
TEST_F(CorruptionTest, LyingHeaderFields) {
  auto lie = [&](auto mutate) {
    std::string f = frame_;
    mutate(f);
    Reseal(f);
    return f;
  };
  ExpectFailure(lie([](std::string& f) { f[0] = 'X'; }), StatusCode::kDataLoss, "bad magic");
  ExpectFailure(lie([](std::string& f) { PutField<uint16_t>(f, 4, 3); }), StatusCode::kDataLoss,
                "unsupported frame format version 3");
  ExpectFailure(lie([](std::string& f) { PutField<uint8_t>(f, 6, 7); }), StatusCode::kDataLoss,
                "unknown codec kind 7");
  ExpectFailure(lie([](std::string& f) { PutField<uint8_t>(f, 7, 1); }), StatusCode::kDataLoss,
                "reserved");
  ExpectFailure(lie([](std::string& f) { PutField<uint32_t>(f, 12, 5); }), StatusCode::kDataLoss,
                "reserved");
  ExpectFailure(lie([](std::string& f) { PutField<uint32_t>(f, 8, 256); }), StatusCode::kDataLoss,
                "block size 256 set on a bf16 frame");
  // Offset past the end, offset + count overflowing 64 bits, count over the cap.
  ExpectFailure(lie([](std::string& f) { PutField<uint64_t>(f, 16, 400); }), StatusCode::kDataLoss,
                "lie outside the slice of 500 values");
  ExpectFailure(lie([](std::string& f) { PutField<uint64_t>(f, 16, ~uint64_t{0} - 10); }),
                StatusCode::kDataLoss, "lie outside the slice");
  ExpectFailure(lie([](std::string& f) { PutField<uint64_t>(f, 24, uint64_t{1} << 40); }),
                StatusCode::kDataLoss, "frame count");
  ExpectFailure(lie([](std::string& f) { PutField<uint64_t>(f, 24, 0); }), StatusCode::kDataLoss,
                "empty frame");
  // A larger count with a matching raw length: zstd's declared size disagrees.
  ExpectFailure(lie([](std::string& f) {
                  PutField<uint64_t>(f, 24, 250);
                  PutField<uint64_t>(f, 48, 500);
                }),
                StatusCode::kDataLoss, "zstd frame declares 400 bytes; expected 500");
  ExpectFailure(lie([](std::string& f) { PutField<uint64_t>(f, 48, 401); }), StatusCode::kDataLoss,
                "raw length 401");
  ExpectFailure(lie([](std::string& f) { PutField<uint64_t>(f, 40, 1); }), StatusCode::kDataLoss,
                "payload bytes");
  ExpectFailure(lie([](std::string& f) { PutField<uint64_t>(f, 40, uint64_t{1} << 62); }),
                StatusCode::kDataLoss, "exceeds zstd's bound");
  ExpectFailure(lie([](std::string& f) { PutField<uint64_t>(f, 32, uint64_t{1} << 60); }),
                StatusCode::kDataLoss, "slice length");
  // A sound frame of a bigger slice does not fit this destination.
  ExpectFailure(lie([](std::string& f) { PutField<uint64_t>(f, 32, 1000); }),
                StatusCode::kInvalidArgument, "slice of 1000 values; the destination holds 500");
  // Claims to be fp32 (raw length then disagrees) or int8 (needs a block).
  ExpectFailure(lie([](std::string& f) { PutField<uint8_t>(f, 6, 0); }), StatusCode::kDataLoss,
                "raw length 400 does not match 800");
  ExpectFailure(lie([](std::string& f) { PutField<uint8_t>(f, 6, 2); }), StatusCode::kDataLoss,
                "int8 block size 0");
}

TEST_F(CorruptionTest, ForgedPayloads) {
  // Valid checksum, but the payload is not what the header promises.
  std::string raw(400, '\x11');
  std::string z(ZSTD_compressBound(raw.size()), '\0');
  z.resize(ZSTD_compress(z.data(), z.size(), raw.data(), raw.size(), 1));
  // Garbage that is not zstd at all.
  ExpectFailure(WithPayload(frame_, std::string(100, 'g')), StatusCode::kDataLoss,
                "not exactly one zstd frame");
  // Two zstd frames back to back.
  ExpectFailure(WithPayload(frame_, z + z), StatusCode::kDataLoss, "not exactly one zstd frame");
  // One zstd frame of the wrong size.
  std::string z_small(ZSTD_compressBound(100), '\0');
  z_small.resize(ZSTD_compress(z_small.data(), z_small.size(), raw.data(), 100, 1));
  ExpectFailure(WithPayload(frame_, z_small), StatusCode::kDataLoss,
                "zstd frame declares 100 bytes; expected 400");
  // A zstd frame without a declared content size (streamed).
  {
    std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
    ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_contentSizeFlag, 0);
    std::string zs(ZSTD_compressBound(raw.size()), '\0');
    zs.resize(ZSTD_compress2(cctx.get(), zs.data(), zs.size(), raw.data(), raw.size()));
    ExpectFailure(WithPayload(frame_, zs), StatusCode::kDataLoss, "content size");
  }
  // A zstd frame that lies about its content size: corrupt the frame header's size
  // field (single-segment frames keep it right after the descriptor byte).
  {
    std::string lying = z;
    // The 400-byte raw string compresses to a frame whose content size is one byte
    // when the descriptor says so; we instead corrupt a block inside the frame.
    lying[lying.size() - 2] ^= 0x5A;
    bool guards_ok = false;
    Status s = Decode(*codec_, WithPayload(frame_, lying), kN, &guards_ok);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    EXPECT_TRUE(guards_ok);
  }
  // The correct payload still works through WithPayload (the helper is sound).
  bool guards_ok = false;
  EXPECT_TRUE(
      Decode(*codec_, WithPayload(frame_, std::string_view(frame_).substr(64)), kN, &guards_ok)
          .ok());
}

TEST(Int8CorruptionTest, BadScalesAreRefused) {
  auto codec = MakeCodec(CodecKind::kInt8, 1000, 100);
  std::vector<float> v = Values(1000, 2);
  std::string frame = (*codec->Encode(v))[0];
  const uint64_t raw_bytes = 4 * 10 + 1000;
  for (uint32_t bad_bits : {0xBF800000u /* -1 */, 0x7F800000u /* Inf */, 0x7FC00000u /* NaN */,
                            0x80000000u /* -0 */, 0x7F7FFFFFu /* FLT_MAX: 127 x overflows */}) {
    std::string raw(raw_bytes, '\0');
    ZSTD_decompress(raw.data(), raw.size(), frame.data() + 64, frame.size() - 64);
    std::memcpy(raw.data() + 4 * 3, &bad_bits, 4);  // scale of block 3
    std::string z(ZSTD_compressBound(raw.size()), '\0');
    z.resize(ZSTD_compress(z.data(), z.size(), raw.data(), raw.size(), 1));
    bool guards_ok = false;
    Status s = Decode(*codec, WithPayload(frame, z), 1000, &guards_ok);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss);
    EXPECT_THAT(s.message(), HasSubstr("int8 scale of block 3"));
    EXPECT_TRUE(guards_ok);
  }
}

// Random damage with a fixed seed: flips, truncations, extensions, overwritten ranges,
// sometimes resealed (so the structural checks behind the checksum are exercised).
// Unsealed damage must always be caught; sealed damage may decode (a forger can make
// other valid values) but must never crash or write outside the destination.
TEST(RandomCorruptionTest, NeverCrashesNorWritesOutOfBounds) {
  std::mt19937_64 rng(20261126);
  std::vector<std::pair<std::unique_ptr<Codec>, std::vector<std::string>>> sets;
  constexpr size_t kN = 700;
  for (CodecKind kind : {CodecKind::kFp32, CodecKind::kBf16, CodecKind::kInt8}) {
    auto codec = MakeCodec(kind, 300, 64);
    std::vector<std::string> frames = *codec->Encode(Values(kN, static_cast<int>(kind)));
    sets.emplace_back(std::move(codec), std::move(frames));
  }
  int caught = 0, sealed_ok = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    auto& [codec, frames] = sets[rng() % sets.size()];
    const std::string& original = frames[rng() % frames.size()];
    std::string f = original;
    switch (rng() % 4) {
      case 0:  // flip 1..8 random bits
        for (int k = 1 + rng() % 8; k > 0; --k) f[rng() % f.size()] ^= 1 << (rng() % 8);
        break;
      case 1:  // truncate
        f.resize(rng() % f.size());
        break;
      case 2:  // append random bytes
        for (int k = 1 + rng() % 32; k > 0; --k) f.push_back(static_cast<char>(rng()));
        break;
      case 3: {  // overwrite a range with random bytes
        const size_t at = rng() % f.size();
        const size_t len = std::min<size_t>(f.size() - at, 1 + rng() % 16);
        for (size_t i = 0; i < len; ++i) f[at + i] = static_cast<char>(rng());
        break;
      }
    }
    const bool seal = rng() % 2 == 0;
    if (seal) Reseal(f);
    if (f == original) continue;
    GuardedBuffer buf(kN);
    Status s = codec->DecodeFrame(f, buf.span());
    ASSERT_TRUE(buf.GuardsIntact()) << "iteration " << iter;
    if (s.ok()) {
      ASSERT_TRUE(seal) << "iteration " << iter << ": unsealed damage decoded";
      ++sealed_ok;
    } else {
      ASSERT_TRUE(s.code() == StatusCode::kDataLoss || s.code() == StatusCode::kInvalidArgument)
          << s.ToString();
      ++caught;
    }
  }
  RecordProperty("caught", caught);
  RecordProperty("sealed_ok", sealed_ok);
  EXPECT_GT(caught, 2500);
}

}  // namespace
}  // namespace fedps
