// Codecs for slices of fp32 values (pseudo-gradients pushed by clients, model
// slices pulled from shards): quantise, split byte planes, entropy-code with zstd,
// in independent checksummed frames.
//
// Design
// ------
// A slice of n fp32 values is cut into frames of at most `chunk_elements` values
// (default 1M: 2-4 MB per frame, a size that moves well over Thrift). Every frame
// is decodable alone, in any order and in parallel, and carries where it belongs
// (element offset, count and the slice length), so a receiver can decode frames as
// they arrive and check that they cover [0, n) exactly once.
//
// Codec kinds (what the frame payload holds before zstd; "planes" are contiguous
// runs of one byte of every value, most significant byte first: trap 7 of
// DEPENDENCIES.md, zstd codes exponents well only when they sit together):
//   fp32  lossless. 4 planes of `count` bytes (bits 31..24, 23..16, 15..8, 7..0).
//   bf16  round to nearest even to bfloat16 (NaN stays NaN, quiet, sign kept;
//         overflow goes to +-Inf as in IEEE rounding). 2 planes (bits 15..8, 7..0).
//   int8  blocks of `block` values (the last one may be shorter), each with
//         scale = absmax / 127 (fp32, little-endian; blocks with absmax < 1e-30
//         get scale 0 and decode as zeros) and q = round(x / scale) in
//         [-127, 127]; decoded x' = q * scale, so |x - x'| <= scale / 2 (plus a
//         few ulps). Payload: ceil(count / block) scales, then `count` int8 values.
//         Non-finite input is refused (InvalidArgument): it has no int8 code.
//   topk  sparsification: per frame the k = ceil(topk_density x count) values of largest
//         magnitude (at least 1), sent as int8 with one scale (absmax of those / 127); the
//         others decode as 0. Payload: the fp32 scale, a bitmap of count bits (which values
//         are kept, LSB first) and the k int8 values in index order; the header's block
//         field holds k. With error feedback everything not sent stays in the residual, so
//         it is sent once it has grown large enough. Push only (a pull is never sparse).
//         Non-finite input is refused like int8's.
//
// Frame layout (all integers little-endian; 64-byte header, then the payload):
//   offset size field
//        0    4 magic "FPSZ"
//        4    2 format version (2; version 1 had another checksum and is refused)
//        6    1 codec kind (0 fp32, 1 bf16, 2 int8, 3 topk)
//        7    1 flags (0; reserved)
//        8    4 block: int8 block size in values; topk: values kept (k); 0 for fp32, bf16
//       12    4 reserved (0)
//       16    8 element offset of this frame within the slice
//       24    8 element count of this frame
//       32    8 slice length (values in the whole slice)
//       40    8 payload length in bytes (the frame is exactly 64 + this)
//       48    8 raw length: payload bytes after zstd decompression (derived from
//               kind, count and block; stored so that a reader can check it)
//       56    8 checksum: XXH3-64 (seed 0) of header bytes 0..55 followed by the payload
//       64    - payload: exactly one zstd frame with its content size set
//
// Integrity: the 64-bit checksum covers every header field and every payload byte,
// and is checked before the payload is decompressed; zstd's own content checksum
// is off (the frame checksum already covers the compressed bytes, and decoding is
// deterministic). Decoding also checks magic, version, kind, reserved fields, that
// counts are within bounds and consistent (offset + count <= slice length, count
// <= kMaxFrameElements, count > 0 unless the slice is empty), the raw length
// against kind/count/block, that the payload is exactly one zstd frame whose
// declared and actual decompressed sizes equal the raw length, and (int8) that
// every scale s satisfies 0 <= s and 127 * s is finite (so int8 decodes to finite
// values only). It decompresses into scratch memory and writes to
// the destination only after all checks pass. Corrupt bytes give DataLoss; a
// sound frame that does not fit the destination gives InvalidArgument.
//
// Error feedback (lossy codecs): with a residual r (owned by the caller, same
// length as the values), Encode codes x = v + r and sets r = x - decode(x), so the
// sum of decoded values over rounds tracks the sum of inputs. Where decode(x) is
// not finite (NaN/Inf input, or bf16 overflow) r is set to 0. For fp32 (lossless)
// the residual is folded in and cleared.
//
// Threads: frames of one call are encoded/decoded on a small ThreadPool (the
// calling thread takes part). zstd contexts and scratch buffers live in a pool of
// workspaces reused across calls. A Codec is thread-safe: concurrent Encode and
// Decode calls on one Codec are allowed (they share its workers).
//
// Host: little-endian (checked at compile time).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fedps {

class ThreadPool;

enum class CodecKind : uint8_t { kFp32 = 0, kBf16 = 1, kInt8 = 2, kTopK = 3 };

// "fp32", "bf16", "int8", "topk".
StatusOr<CodecKind> ParseCodecKind(std::string_view name);
std::string_view CodecKindName(CodecKind kind);

struct CodecOptions {
  // What Encode produces. Decoding follows each frame's own kind.
  CodecKind kind = CodecKind::kBf16;
  // zstd level; 1 beats 3 on this data in both speed and ratio (docs/compression.md).
  int zstd_level = 1;
  // zstd hash table size (log2 entries); 0 = the level's default. On noise-like planes
  // matches are spurious: the smallest table (6) is 2.5x faster than level 1's default
  // and codes slightly smaller (docs/compression.md). Long runs (zeros) still match.
  int zstd_hash_log = 6;
  // Parallelism of Encode/DecodeAll: 0 = hardware concurrency capped at 4.
  int threads = 0;
  // Values per frame, 1 .. kMaxFrameElements.
  int64_t chunk_elements = int64_t{1} << 20;
  // int8 only: values per scale block, 1 .. kMaxInt8Block.
  int int8_block = 256;
  // topk only: the fraction of each frame's values sent, in (0, 1].
  double topk_density = 0.01;
};

inline constexpr size_t kFrameHeaderBytes = 64;
// 2 since 2026-12: the checksum became XXH3-64 (version 1: a hash of fedps's own).
inline constexpr uint16_t kFrameFormatVersion = 2;
// Upper bound on the values in one frame (reader side too): 256M values, 1 GiB of fp32.
inline constexpr uint64_t kMaxFrameElements = uint64_t{1} << 28;
inline constexpr int kMaxInt8Block = 1 << 16;

// The decoded fields of a frame header.
struct FrameHeader {
  CodecKind kind = CodecKind::kFp32;
  uint32_t block = 0;         // int8 block size; 0 otherwise
  uint64_t offset = 0;        // first element of the frame within the slice
  uint64_t count = 0;         // elements in the frame
  uint64_t slice_length = 0;  // elements in the whole slice
  uint64_t payload_bytes = 0;
  uint64_t raw_bytes = 0;
  uint64_t checksum = 0;
};

class Codec {
 public:
  static StatusOr<std::unique_ptr<Codec>> Create(const CodecOptions& options);
  ~Codec();
  Codec(const Codec&) = delete;
  Codec& operator=(const Codec&) = delete;

  const CodecOptions& options() const { return options_; }
  // Threads used by one Encode/DecodeAll call (options.threads resolved).
  int parallelism() const;

  // Encodes `values` (a whole slice) into ceil(n / chunk_elements) frames, at least
  // one (an empty slice gives one empty frame that still names its length).
  // `residual` is empty (no error feedback) or has values.size() elements; it is
  // read and updated (see the file comment).
  StatusOr<std::vector<std::string>> Encode(std::span<const float> values,
                                            std::span<float> residual = {});

  // Encodes values already rounded to bfloat16 (their 16-bit patterns, e.g. computed on
  // a GPU) into the same frames Encode makes for a bf16 codec from the fp32 values; no
  // error feedback here (the caller did it where it rounded). FailedPrecondition unless
  // options().kind is bf16.
  StatusOr<std::vector<std::string>> EncodeBf16Bits(std::span<const uint16_t> bits);

  // Checks one frame and decodes it into out[offset, offset + count), where `out`
  // is the whole slice (out.size() must equal the frame's slice length). Writes
  // nothing to `out` unless every check passes.
  Status DecodeFrame(std::string_view frame, std::span<float> out);

  // Checks one frame of a slice of `slice_length` values as DecodeFrame does (header,
  // checksum, payload) and that every value it holds is finite, without decoding it
  // anywhere: what a receiver does before it keeps a frame. DataLoss for damaged bytes,
  // InvalidArgument for another slice's frame or a NaN / infinite value. When the frame
  // passes and `sum_squares` is given, sets it to the sum of the squares of the values the
  // frame decodes to, computed in the same scan of the decompressed payload (fp32: of the
  // values truncated to bfloat16, at most 2^-6 below the exact sum; the other kinds exact
  // up to rounding), so a receiver learns an update's norm without decoding it.
  Status CheckFrame(std::string_view frame, uint64_t slice_length, double* sum_squares = nullptr);

  // Checks that `frames` cover [0, out.size()) exactly once and decodes them in
  // parallel. On error, `out` may be partly written.
  Status DecodeAll(const std::vector<std::string>& frames, std::span<float> out);

  // Parses and checks the header fields alone (the payload need not be present;
  // the checksum is not verified: DecodeFrame does that).
  static StatusOr<FrameHeader> PeekHeader(std::string_view frame);

  // Encoded bytes of a set of frames (headers included).
  static uint64_t TotalBytes(const std::vector<std::string>& frames);

 private:
  struct Workspace;
  class WorkspacePool;
  explicit Codec(const CodecOptions& options, int parallelism);

  // The frames of an n-value slice, frame(ws, offset, count, &out) each, on the pool.
  StatusOr<std::vector<std::string>> EncodeFrames(
      uint64_t n, const std::function<Status(Workspace&, uint64_t offset, uint64_t count, std::string*)>& frame);
  Status EncodeFrame(Workspace& ws, std::span<const float> values, std::span<float> residual,
                     uint64_t offset, uint64_t slice_length, std::string* frame);
  // zstd-codes ws.raw (the kind's raw payload of `count` values) and writes the frame.
  Status PackFrame(Workspace& ws, uint32_t block, uint64_t offset, uint64_t count,
                   uint64_t slice_length, std::string* frame);
  Status DecodeFrameWith(Workspace& ws, std::string_view frame, std::span<float> out);
  // DecodeFrame's checks, then the payload decompressed into ws.raw.
  StatusOr<FrameHeader> UnpackFrame(Workspace& ws, std::string_view frame, uint64_t slice_length);
  static Status CheckCoverage(const std::vector<std::string>& frames, uint64_t n);
  static Status CheckCoverageOfHeaders(const std::vector<std::string>& frames, uint64_t n);

  CodecOptions options_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<WorkspacePool> workspaces_;
};

}  // namespace fedps
