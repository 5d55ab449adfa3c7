#include "compression/codec.h"

#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <thread>

#include "compression/hash64.h"
#include "compression/kernels.h"
#include "compression/thread_pool.h"

namespace fedps {
namespace {

using namespace codec_internal;  // NOLINT: this file's own kernels

constexpr char kMagic[4] = {'F', 'P', 'S', 'Z'};
// Header field offsets (see the table in codec.h).
constexpr size_t kOffVersion = 4;
constexpr size_t kOffKind = 6;
constexpr size_t kOffFlags = 7;
constexpr size_t kOffBlock = 8;
constexpr size_t kOffReserved = 12;
constexpr size_t kOffOffset = 16;
constexpr size_t kOffCount = 24;
constexpr size_t kOffSliceLength = 32;
constexpr size_t kOffPayloadBytes = 40;
constexpr size_t kOffRawBytes = 48;
constexpr size_t kOffChecksum = 56;
static_assert(kOffChecksum + 8 == kFrameHeaderBytes);
// A slice longer than this is not plausible (and keeps offset + count far from overflow).
constexpr uint64_t kMaxSliceLength = uint64_t{1} << 50;
constexpr int kMaxThreads = 256;

template <typename T>
void Put(char* dst, size_t off, T v) {
  std::memcpy(dst + off, &v, sizeof(T));  // little-endian host (kernels.cc checks)
}
template <typename T>
T Get(std::string_view src, size_t off) {
  T v;
  std::memcpy(&v, src.data() + off, sizeof(T));
  return v;
}

uint64_t RawBytes(CodecKind kind, uint64_t count, uint64_t block) {
  switch (kind) {
    case CodecKind::kFp32:
      return 4 * count;
    case CodecKind::kBf16:
      return 2 * count;
    case CodecKind::kInt8:
      return 4 * Int8Blocks(count, block) + count;
    case CodecKind::kTopK:
      return TopKRawBytes(count, block);
  }
  return 0;
}

// XXH3-64 of the whole frame but the checksum field: header bytes [0, 56), then the payload.
uint64_t FrameChecksum(std::string_view frame) {
  return Hash64({frame.substr(0, kOffChecksum), frame.substr(kFrameHeaderBytes)});
}

std::string Range(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

struct CCtxDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxDeleter {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

}  // namespace

StatusOr<CodecKind> ParseCodecKind(std::string_view name) {
  if (name == "fp32") return CodecKind::kFp32;
  if (name == "bf16") return CodecKind::kBf16;
  if (name == "int8") return CodecKind::kInt8;
  if (name == "topk") return CodecKind::kTopK;
  return InvalidArgument("unknown codec '" + std::string(name) + "' (expected fp32, bf16, int8 or topk)");
}

std::string_view CodecKindName(CodecKind kind) {
  switch (kind) {
    case CodecKind::kFp32:
      return "fp32";
    case CodecKind::kBf16:
      return "bf16";
    case CodecKind::kInt8:
      return "int8";
    case CodecKind::kTopK:
      return "topk";
  }
  return "unknown";
}

// Per-thread state of one frame's work: zstd contexts (created on first use, then
// reused: creating a CCtx costs more than compressing a small frame) and scratch.
struct Codec::Workspace {
  std::unique_ptr<ZSTD_CCtx, CCtxDeleter> cctx;
  std::unique_ptr<ZSTD_DCtx, DCtxDeleter> dctx;
  std::vector<uint8_t> raw;     // planes / quantised values before zstd
  std::vector<uint32_t> order;  // topk: indexes, partly sorted by magnitude
  std::vector<uint8_t> packed;  // zstd output before it is copied into the frame
};

// Workspaces are lent for one frame at a time; there are never more than the
// number of threads inside the codec at once.
class Codec::WorkspacePool {
 public:
  class Lease {
   public:
    Lease(WorkspacePool* pool, std::unique_ptr<Workspace> ws) : pool_(pool), ws_(std::move(ws)) {}
    ~Lease() { pool_->Return(std::move(ws_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Workspace& operator*() { return *ws_; }

   private:
    WorkspacePool* pool_;
    std::unique_ptr<Workspace> ws_;
  };

  Lease Acquire() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return Lease(this, std::make_unique<Workspace>());
    std::unique_ptr<Workspace> ws = std::move(free_.back());
    free_.pop_back();
    return Lease(this, std::move(ws));
  }

 private:
  void Return(std::unique_ptr<Workspace> ws) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(ws));
  }

  std::mutex mu_;
  std::vector<std::unique_ptr<Workspace>> free_;  // guarded by mu_
};

Codec::Codec(const CodecOptions& options, int parallelism)
    : options_(options),
      pool_(std::make_unique<ThreadPool>(parallelism)),
      workspaces_(std::make_unique<WorkspacePool>()) {}

Codec::~Codec() = default;

int Codec::parallelism() const { return pool_->parallelism(); }

StatusOr<std::unique_ptr<Codec>> Codec::Create(const CodecOptions& options) {
  if (static_cast<uint8_t>(options.kind) > static_cast<uint8_t>(CodecKind::kTopK)) {
    return InvalidArgument("codec kind " + std::to_string(static_cast<int>(options.kind)) +
                           " is not fp32, bf16, int8 or topk");
  }
  if (!(options.topk_density > 0 && options.topk_density <= 1)) {
    return InvalidArgument("topk_density " + std::to_string(options.topk_density) + " is outside (0, 1]");
  }
  if (options.zstd_level < ZSTD_minCLevel() || options.zstd_level > ZSTD_maxCLevel()) {
    return InvalidArgument("zstd_level " + std::to_string(options.zstd_level) + " is outside [" +
                           std::to_string(ZSTD_minCLevel()) + ", " +
                           std::to_string(ZSTD_maxCLevel()) + "]");
  }
  if (options.zstd_hash_log != 0) {
    const ZSTD_bounds b = ZSTD_cParam_getBounds(ZSTD_c_hashLog);
    if (ZSTD_isError(b.error) || options.zstd_hash_log < b.lowerBound ||
        options.zstd_hash_log > b.upperBound) {
      return InvalidArgument("zstd_hash_log " + std::to_string(options.zstd_hash_log) +
                             " is outside [" + std::to_string(b.lowerBound) + ", " +
                             std::to_string(b.upperBound) + "] (0 = the level's default)");
    }
  }
  if (options.threads < 0 || options.threads > kMaxThreads) {
    return InvalidArgument("threads " + std::to_string(options.threads) + " is outside [0, " +
                           std::to_string(kMaxThreads) + "] (0 = automatic)");
  }
  if (options.chunk_elements < 1 ||
      static_cast<uint64_t>(options.chunk_elements) > kMaxFrameElements) {
    return InvalidArgument("chunk_elements " + std::to_string(options.chunk_elements) +
                           " is outside [1, " + std::to_string(kMaxFrameElements) + "]");
  }
  if (options.int8_block < 1 || options.int8_block > kMaxInt8Block) {
    return InvalidArgument("int8_block " + std::to_string(options.int8_block) + " is outside [1, " +
                           std::to_string(kMaxInt8Block) + "]");
  }
  int parallelism = options.threads;
  if (parallelism == 0) {
    parallelism = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 4);
  }
  return std::unique_ptr<Codec>(new Codec(options, parallelism));
}

uint64_t Codec::TotalBytes(const std::vector<std::string>& frames) {
  uint64_t total = 0;
  for (const std::string& f : frames) total += f.size();
  return total;
}

StatusOr<std::vector<std::string>> Codec::EncodeFrames(
    uint64_t n, const std::function<Status(Workspace&, uint64_t offset, uint64_t count, std::string*)>& frame) {
  const uint64_t chunk = static_cast<uint64_t>(options_.chunk_elements);
  const size_t frames = static_cast<size_t>(std::max<uint64_t>(1, (n + chunk - 1) / chunk));
  std::vector<std::string> out(frames);
  std::vector<Status> status(frames);
  pool_->ParallelFor(frames, [&](size_t f) {
    const uint64_t offset = f * chunk;
    WorkspacePool::Lease ws = workspaces_->Acquire();
    status[f] = frame(*ws, offset, std::min(chunk, n - offset), &out[f]);
  });
  for (const Status& s : status) RETURN_IF_ERROR(s);
  return out;
}

StatusOr<std::vector<std::string>> Codec::Encode(std::span<const float> values,
                                                 std::span<float> residual) {
  if (!residual.empty() && residual.size() != values.size()) {
    return InvalidArgument("residual has " + std::to_string(residual.size()) +
                           " values; the slice has " + std::to_string(values.size()));
  }
  const uint64_t n = values.size();
  return EncodeFrames(n, [&](Workspace& ws, uint64_t offset, uint64_t count, std::string* out) {
    return EncodeFrame(ws, values.subspan(offset, count),
                       residual.empty() ? residual : residual.subspan(offset, count), offset, n, out);
  });
}

StatusOr<std::vector<std::string>> Codec::EncodeBf16Bits(std::span<const uint16_t> bits) {
  if (options_.kind != CodecKind::kBf16) {
    return FailedPrecondition("EncodeBf16Bits needs a bf16 codec, this one is " +
                              std::string(CodecKindName(options_.kind)));
  }
  const uint64_t n = bits.size();
  return EncodeFrames(n, [&](Workspace& ws, uint64_t offset, uint64_t count, std::string* out) {
    ws.raw.resize(RawBytes(CodecKind::kBf16, count, 0));
    SplitBf16Planes(bits.data() + offset, count, ws.raw.data());
    return PackFrame(ws, 0, offset, count, n, out);
  });
}

Status Codec::EncodeFrame(Workspace& ws, std::span<const float> values, std::span<float> residual,
                          uint64_t offset, uint64_t slice_length, std::string* frame) {
  const CodecKind kind = options_.kind;
  const uint64_t count = values.size();
  uint32_t block = 0;
  if (kind == CodecKind::kInt8) block = static_cast<uint32_t>(options_.int8_block);
  if (kind == CodecKind::kTopK && count > 0) {
    const double k = std::ceil(options_.topk_density * static_cast<double>(count));
    block = static_cast<uint32_t>(std::clamp<double>(k, 1, static_cast<double>(count)));
  }
  const uint64_t raw_bytes = RawBytes(kind, count, block);
  ws.raw.resize(raw_bytes);
  float* r = residual.empty() ? nullptr : residual.data();
  switch (kind) {
    case CodecKind::kFp32:
      EncodeFp32(values.data(), r, count, ws.raw.data());
      break;
    case CodecKind::kBf16:
      EncodeBf16(values.data(), r, count, ws.raw.data());
      break;
    case CodecKind::kInt8: {
      const size_t bad = EncodeInt8(values.data(), r, count, block, ws.raw.data());
      if (bad != count) {
        return InvalidArgument("int8 codec: value at element " + std::to_string(offset + bad) +
                               " (with its residual) is not finite");
      }
      break;
    }
    case CodecKind::kTopK: {
      ws.order.resize(count);
      const size_t bad = EncodeTopK(values.data(), r, count, block, ws.raw.data(), ws.order.data());
      if (bad != count) {
        return InvalidArgument("topk codec: value at element " + std::to_string(offset + bad) +
                               " (with its residual) is not finite");
      }
      break;
    }
  }

  return PackFrame(ws, block, offset, count, slice_length, frame);
}

Status Codec::PackFrame(Workspace& ws, uint32_t block, uint64_t offset, uint64_t count,
                        uint64_t slice_length, std::string* frame) {
  const CodecKind kind = options_.kind;
  const uint64_t raw_bytes = ws.raw.size();
  if (ws.cctx == nullptr) {
    ws.cctx.reset(ZSTD_createCCtx());
    if (ws.cctx == nullptr) return Internal("ZSTD_createCCtx failed");
    // hashLog 0 asks for the level's default.
    for (auto [param, value] :
         {std::pair{ZSTD_c_compressionLevel, options_.zstd_level},
          std::pair{ZSTD_c_hashLog, options_.zstd_hash_log}, std::pair{ZSTD_c_contentSizeFlag, 1},
          std::pair{ZSTD_c_checksumFlag, 0}}) {
      const size_t rc = ZSTD_CCtx_setParameter(ws.cctx.get(), param, value);
      if (ZSTD_isError(rc)) {
        ws.cctx.reset();
        return Internal(std::string("ZSTD_CCtx_setParameter: ") + ZSTD_getErrorName(rc));
      }
    }
  }
  ws.packed.resize(ZSTD_compressBound(raw_bytes));
  const size_t packed =
      ZSTD_compress2(ws.cctx.get(), ws.packed.data(), ws.packed.size(), ws.raw.data(), raw_bytes);
  if (ZSTD_isError(packed)) {
    return Internal(std::string("zstd compression failed: ") + ZSTD_getErrorName(packed));
  }

  frame->assign(kFrameHeaderBytes + packed, '\0');
  char* h = frame->data();
  std::memcpy(h, kMagic, sizeof(kMagic));
  Put<uint16_t>(h, kOffVersion, kFrameFormatVersion);
  Put<uint8_t>(h, kOffKind, static_cast<uint8_t>(kind));
  Put<uint8_t>(h, kOffFlags, 0);
  Put<uint32_t>(h, kOffBlock, block);
  Put<uint32_t>(h, kOffReserved, 0);
  Put<uint64_t>(h, kOffOffset, offset);
  Put<uint64_t>(h, kOffCount, count);
  Put<uint64_t>(h, kOffSliceLength, slice_length);
  Put<uint64_t>(h, kOffPayloadBytes, packed);
  Put<uint64_t>(h, kOffRawBytes, raw_bytes);
  std::memcpy(h + kFrameHeaderBytes, ws.packed.data(), packed);
  Put<uint64_t>(h, kOffChecksum, FrameChecksum(*frame));
  return Status::Ok();
}

StatusOr<FrameHeader> Codec::PeekHeader(std::string_view frame) {
  if (frame.size() < kFrameHeaderBytes) {
    return DataLoss("frame of " + std::to_string(frame.size()) + " bytes is shorter than its " +
                    std::to_string(kFrameHeaderBytes) + "-byte header");
  }
  if (std::memcmp(frame.data(), kMagic, sizeof(kMagic)) != 0) {
    return DataLoss("bad magic: not a fedps codec frame");
  }
  const auto version = Get<uint16_t>(frame, kOffVersion);
  if (version == 1) {
    return DataLoss("frame format version 1 (a fedps build before the XXH3-64 checksum) is no longer read: "
                    "this build reads version " + std::to_string(kFrameFormatVersion) +
                    " only; run clients and shards of the same frame format, and re-encode stored frames");
  }
  if (version != kFrameFormatVersion) {
    return DataLoss("unsupported frame format version " + std::to_string(version) +
                    " (this build reads " + std::to_string(kFrameFormatVersion) + ")");
  }
  const auto kind_byte = Get<uint8_t>(frame, kOffKind);
  if (kind_byte > static_cast<uint8_t>(CodecKind::kTopK)) {
    return DataLoss("unknown codec kind " + std::to_string(kind_byte));
  }
  if (Get<uint8_t>(frame, kOffFlags) != 0 || Get<uint32_t>(frame, kOffReserved) != 0) {
    return DataLoss("reserved header fields are not zero");
  }
  FrameHeader h;
  h.kind = static_cast<CodecKind>(kind_byte);
  h.block = Get<uint32_t>(frame, kOffBlock);
  h.offset = Get<uint64_t>(frame, kOffOffset);
  h.count = Get<uint64_t>(frame, kOffCount);
  h.slice_length = Get<uint64_t>(frame, kOffSliceLength);
  h.payload_bytes = Get<uint64_t>(frame, kOffPayloadBytes);
  h.raw_bytes = Get<uint64_t>(frame, kOffRawBytes);
  h.checksum = Get<uint64_t>(frame, kOffChecksum);

  if (h.kind == CodecKind::kInt8) {
    if (h.block < 1 || h.block > static_cast<uint32_t>(kMaxInt8Block)) {
      return DataLoss("int8 block size " + std::to_string(h.block) + " is outside [1, " +
                      std::to_string(kMaxInt8Block) + "]");
    }
  } else if (h.kind == CodecKind::kTopK) {
    if (h.block > h.count || (h.count > 0 && h.block == 0)) {
      return DataLoss("topk frame keeps " + std::to_string(h.block) + " of " + std::to_string(h.count) + " values");
    }
  } else if (h.block != 0) {
    return DataLoss("block size " + std::to_string(h.block) + " set on a " +
                    std::string(CodecKindName(h.kind)) + " frame");
  }
  if (h.slice_length > kMaxSliceLength) {
    return DataLoss("slice length " + std::to_string(h.slice_length) + " exceeds " +
                    std::to_string(kMaxSliceLength));
  }
  if (h.count > kMaxFrameElements) {
    return DataLoss("frame count " + std::to_string(h.count) + " exceeds " +
                    std::to_string(kMaxFrameElements));
  }
  if (h.count > h.slice_length || h.offset > h.slice_length - h.count) {
    return DataLoss("frame elements [" + std::to_string(h.offset) + ", +" +
                    std::to_string(h.count) + ") lie outside the slice of " +
                    std::to_string(h.slice_length) + " values");
  }
  if (h.count == 0 && h.slice_length != 0) {
    return DataLoss("empty frame in a slice of " + std::to_string(h.slice_length) + " values");
  }
  const uint64_t raw = RawBytes(h.kind, h.count, h.block);
  if (h.raw_bytes != raw) {
    return DataLoss("raw length " + std::to_string(h.raw_bytes) + " does not match " +
                    std::to_string(raw) + " for " + std::to_string(h.count) + " " +
                    std::string(CodecKindName(h.kind)) + " values");
  }
  if (h.payload_bytes > ZSTD_compressBound(raw)) {
    return DataLoss("payload length " + std::to_string(h.payload_bytes) + " exceeds zstd's bound " +
                    std::to_string(ZSTD_compressBound(raw)) + " for " + std::to_string(raw) +
                    " raw bytes");
  }
  return h;
}

Status Codec::DecodeFrame(std::string_view frame, std::span<float> out) {
  WorkspacePool::Lease ws = workspaces_->Acquire();
  return DecodeFrameWith(*ws, frame, out);
}

StatusOr<FrameHeader> Codec::UnpackFrame(Workspace& ws, std::string_view frame, uint64_t slice_length) {
  ASSIGN_OR_RETURN(const FrameHeader h, PeekHeader(frame));
  if (frame.size() - kFrameHeaderBytes != h.payload_bytes) {
    return DataLoss("frame has " + std::to_string(frame.size() - kFrameHeaderBytes) +
                    " payload bytes; its header says " + std::to_string(h.payload_bytes));
  }
  const uint64_t checksum = FrameChecksum(frame);
  if (checksum != h.checksum) {
    return DataLoss("frame checksum mismatch (corrupt frame for elements " +
                    Range(h.offset, h.offset + h.count) + ")");
  }
  if (h.slice_length != slice_length) {
    return InvalidArgument("frame belongs to a slice of " + std::to_string(h.slice_length) +
                           " values; the destination holds " + std::to_string(slice_length));
  }
  if (h.offset + h.count > slice_length) {  // implied by the two checks above; kept as a guard
    return InvalidArgument("frame elements " + Range(h.offset, h.offset + h.count) +
                           " exceed the destination of " + std::to_string(slice_length));
  }

  const std::string_view payload = frame.substr(kFrameHeaderBytes);
  const size_t frame_size = ZSTD_findFrameCompressedSize(payload.data(), payload.size());
  if (ZSTD_isError(frame_size) || frame_size != payload.size()) {
    return DataLoss("payload is not exactly one zstd frame");
  }
  const unsigned long long content = ZSTD_getFrameContentSize(payload.data(), payload.size());
  if (content == ZSTD_CONTENTSIZE_UNKNOWN || content == ZSTD_CONTENTSIZE_ERROR) {
    return DataLoss("zstd frame does not declare its content size");
  }
  if (content != h.raw_bytes) {
    return DataLoss("zstd frame declares " + std::to_string(content) + " bytes; expected " +
                    std::to_string(h.raw_bytes));
  }
  if (ws.dctx == nullptr) {
    ws.dctx.reset(ZSTD_createDCtx());
    if (ws.dctx == nullptr) return Internal("ZSTD_createDCtx failed");
  }
  ws.raw.resize(h.raw_bytes);
  const size_t got = ZSTD_decompressDCtx(ws.dctx.get(), ws.raw.data(), ws.raw.size(),
                                         payload.data(), payload.size());
  if (ZSTD_isError(got)) {
    return DataLoss(std::string("zstd: ") + ZSTD_getErrorName(got));
  }
  if (got != h.raw_bytes) {
    return DataLoss("zstd frame decoded to " + std::to_string(got) + " bytes; expected " +
                    std::to_string(h.raw_bytes));
  }
  return h;
}

Status Codec::CheckFrame(std::string_view frame, uint64_t slice_length, double* sum_squares) {
  WorkspacePool::Lease lease = workspaces_->Acquire();
  Workspace& ws = *lease;
  ASSIGN_OR_RETURN(const FrameHeader h, UnpackFrame(ws, frame, slice_length));
  const size_t count = static_cast<size_t>(h.count);
  const uint8_t* raw = ws.raw.data();
  size_t bad = count;
  double squares = 0;
  switch (h.kind) {
    case CodecKind::kFp32:
    case CodecKind::kBf16:
      bad = FirstNonFinite(raw, raw + count, count, &squares);  // planes 0 and 1: sign, exponent, 8 bits
      break;
    case CodecKind::kInt8: {
      const size_t blocks = static_cast<size_t>(Int8Blocks(h.count, h.block));
      const size_t scale = FirstBadInt8Scale(raw, blocks);
      if (scale != blocks) {
        return DataLoss("int8 scale of block " + std::to_string(scale) + " is negative, not finite or too large");
      }
      squares = Int8SumSquares(raw, count, h.block);
      break;  // sound scales decode to finite values only
    }
    case CodecKind::kTopK:
      if (!CheckTopK(raw, count, h.block)) {
        return DataLoss("topk payload is unsound (kept-value count, stray bits, scale or a -128 value)");
      }
      squares = TopKSumSquares(raw, count, h.block);
      break;  // finite like int8's
  }
  if (bad != count) {
    return InvalidArgument("value " + std::to_string(h.offset + bad) + " of the slice is NaN or infinite");
  }
  if (sum_squares != nullptr) *sum_squares = squares;
  return Status::Ok();
}

Status Codec::DecodeFrameWith(Workspace& ws, std::string_view frame, std::span<float> out) {
  ASSIGN_OR_RETURN(const FrameHeader h, UnpackFrame(ws, frame, out.size()));
  float* dst = out.data() + h.offset;
  const size_t count = static_cast<size_t>(h.count);
  switch (h.kind) {
    case CodecKind::kFp32:
      DecodeFp32(ws.raw.data(), count, dst);
      break;
    case CodecKind::kBf16:
      DecodeBf16(ws.raw.data(), count, dst);
      break;
    case CodecKind::kInt8: {
      const size_t blocks = static_cast<size_t>(Int8Blocks(h.count, h.block));
      const size_t bad = DecodeInt8(ws.raw.data(), count, h.block, dst);
      if (bad != blocks) {
        return DataLoss("int8 scale of block " + std::to_string(bad) +
                        " is negative, not finite or too large");
      }
      break;
    }
    case CodecKind::kTopK:
      if (!DecodeTopK(ws.raw.data(), count, h.block, dst)) {
        return DataLoss("topk payload is unsound (kept-value count, stray bits, scale or a -128 value)");
      }
      break;
  }
  return Status::Ok();
}

Status Codec::DecodeAll(const std::vector<std::string>& frames, std::span<float> out) {
  RETURN_IF_ERROR(CheckCoverage(frames, out.size()));
  std::vector<Status> status(frames.size());
  pool_->ParallelFor(frames.size(), [&](size_t i) {
    WorkspacePool::Lease ws = workspaces_->Acquire();
    status[i] = DecodeFrameWith(*ws, frames[i], out);
  });
  for (size_t i = 0; i < frames.size(); ++i) {
    if (!status[i].ok()) return status[i].WithContext("frame " + std::to_string(i));
  }
  return Status::Ok();
}

// The coverage check reads headers whose checksums have not been verified yet (that
// happens per frame, in parallel, while decoding). When it fails, a corrupt frame is
// the likelier cause: report that as DataLoss rather than the symptom.
Status Codec::CheckCoverage(const std::vector<std::string>& frames, uint64_t n) {
  Status s = CheckCoverageOfHeaders(frames, n);
  if (s.ok()) return s;
  for (size_t i = 0; i < frames.size(); ++i) {
    StatusOr<FrameHeader> h = PeekHeader(frames[i]);
    if (h.ok() && frames[i].size() - kFrameHeaderBytes == h->payload_bytes &&
        FrameChecksum(frames[i]) != h->checksum) {
      return DataLoss("frame " + std::to_string(i) + ": frame checksum mismatch (corrupt frame)");
    }
  }
  return s;
}

Status Codec::CheckCoverageOfHeaders(const std::vector<std::string>& frames, uint64_t n) {
  std::vector<FrameHeader> headers(frames.size());
  for (size_t i = 0; i < frames.size(); ++i) {
    StatusOr<FrameHeader> h = PeekHeader(frames[i]);
    if (!h.ok()) return h.status().WithContext("frame " + std::to_string(i));
    if (h->slice_length != n) {
      return InvalidArgument("frame " + std::to_string(i) + " belongs to a slice of " +
                             std::to_string(h->slice_length) + " values; the destination holds " +
                             std::to_string(n));
    }
    headers[i] = *h;
  }
  std::vector<size_t> order(frames.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return headers[a].offset != headers[b].offset ? headers[a].offset < headers[b].offset : a < b;
  });
  uint64_t covered = 0;  // [0, covered) is covered by the frames seen so far
  for (size_t k = 0; k < order.size(); ++k) {
    const FrameHeader& h = headers[order[k]];
    if (h.offset < covered || (k > 0 && h.count == 0)) {
      return DataLoss("frame " + std::to_string(order[k]) + " overlaps frame " +
                      std::to_string(order[k - 1]) + " at element " + std::to_string(h.offset));
    }
    if (h.offset > covered) {
      return DataLoss("no frame covers elements " + Range(covered, h.offset));
    }
    covered = h.offset + h.count;
  }
  if (covered != n) return DataLoss("no frame covers elements " + Range(covered, n));
  return Status::Ok();
}

}  // namespace fedps
