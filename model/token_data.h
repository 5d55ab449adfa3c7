// Token data: text corpora turned into token shards (`fedps-ctl prepare`), the
// manifest that describes them, and their partition into client datasets
// (`fedps-ctl partition`).
//
// A prepared folder:
//   manifest.json              format version, tokenizer identity, dtype, domains
//   tokenizer.model            a copy of the tokenizer that made the shards
//   <domain>/train-00000.bin   raw little-endian uint16 tokens (uint32 when the
//   <domain>/val-00000.bin     vocabulary exceeds 65536), at most ~64 MB a shard
// Within a domain and split, the shards concatenated are one token stream in
// which every document is followed by </s>; documents may straddle shards. So
// document boundaries can always be found again (partitioning by document needs
// them) and a loader can cut fixed-length windows anywhere.
//
// Determinism: the output depends only on the inputs, the tokenizer and the
// options, never on the thread count or timing. Documents are read in a fixed
// order (specs in order, folders sorted recursively), tokenized in parallel in
// batches and written in order. A document goes to validation when a hash of
// (domain, its text) falls under val_fraction, so identical documents land in
// the same split (no train/val leakage through duplicates) and adding files does
// not move other documents. Every domain gets at least one training document,
// and one with >= 2 documents at least one validation document: the last
// document bound for each split is held back until the domain ends and goes to
// the other split if that one would stay empty.
//
// Writes are crash-safe: everything goes into a temporary sibling folder that is
// renamed over the output at the end, so a failed run leaves the previous good
// folder (or none) behind, never a half-written one.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace fedps {

class Tokenizer;

inline constexpr int kManifestVersion = 1;
inline constexpr int64_t kDefaultMaxShardBytes = int64_t{64} << 20;

enum class Split { kTrain, kValidation };
std::string_view SplitName(Split split);  // "train" / "val"

enum class TokenDtype { kUint16, kUint32 };
std::string_view TokenDtypeName(TokenDtype dtype);  // "uint16" / "uint32"
int TokenDtypeBytes(TokenDtype dtype);
// uint16 when every id fits (vocab_size <= 65536), else uint32.
TokenDtype TokenDtypeForVocab(int64_t vocab_size);

// ---- the manifest -----------------------------------------------------------------

struct TokenShardInfo {
  std::string file;  // relative to the prepared folder: "<domain>/train-00000.bin"
  int64_t tokens = 0;
  std::string sha256;
};

struct SplitInfo {
  int64_t documents = 0;
  int64_t tokens = 0;  // including one </s> per document
  int64_t bytes = 0;   // UTF-8 bytes of the documents' text (for bits per byte)
  std::vector<TokenShardInfo> shards;
};

struct SourceInfo {
  std::string path;  // as found when preparing
  std::string sha256;
};

struct DomainInfo {
  std::string name;
  std::vector<SourceInfo> sources;
  SplitInfo train;
  SplitInfo val;
  const SplitInfo& split(Split s) const { return s == Split::kTrain ? train : val; }
  SplitInfo& split(Split s) { return s == Split::kTrain ? train : val; }
};

struct TokenizerInfo {
  std::string path = "tokenizer.model";  // file name inside the prepared folder
  std::string sha256;
  int64_t vocab_size = 0;
  int32_t eos_id = 2;
  int32_t bos_id = 1;
};

// Present in the manifests that `fedps-ctl partition` writes.
struct PartitionInfo {
  std::string mode;    // "domain" or "iid"
  int client = 0;      // 0-based
  int clients = 0;
  uint64_t seed = 0;
  std::string source;  // the prepared folder that was partitioned
};

struct Manifest {
  int version = kManifestVersion;
  std::string dir;  // the folder it was loaded from (not stored in the file)
  std::string created;  // UTC, ISO 8601
  TokenizerInfo tokenizer;
  TokenDtype dtype = TokenDtype::kUint16;
  double val_fraction = 0.05;
  std::vector<DomainInfo> domains;
  std::optional<PartitionInfo> partition;

  const DomainInfo* FindDomain(std::string_view name) const;
  std::vector<std::string> DomainNames() const;
  std::string ShardPath(const TokenShardInfo& shard) const;  // dir / shard.file
  // Totals over every domain.
  int64_t Tokens(Split split) const;
  int64_t Documents(Split split) const;
  int64_t Bytes(Split split) const;

  nlohmann::json ToJson() const;
  // Parses and checks the structure (names, relative shard paths, counts that
  // add up); `dir` is stored in the result and named in errors.
  static StatusOr<Manifest> FromJson(const nlohmann::json& json, const std::string& dir);
  // Re-hashes every shard and the tokenizer copy (slow: reads everything).
  Status Verify() const;
};

// Reads `dir`/manifest.json and checks that every shard exists with the size its
// token count implies, and that the tokenizer copy in `dir` (when present) has
// the recorded hash. When `expected_tokenizer_sha256` is given, the manifest's
// tokenizer must be that one (the error names both hashes).
StatusOr<Manifest> LoadManifest(const std::string& dir, std::string_view expected_tokenizer_sha256 = "");
StatusOr<Manifest> LoadManifest(const std::string& dir, const Tokenizer& tokenizer);

// ---- inputs -------------------------------------------------------------------------

// One `[domain=]path` spec. The domain defaults to the path's basename without
// extension; domain names are [A-Za-z0-9_.-]+ and do not start with '.'.
struct InputSpec {
  std::string domain;
  std::string path;
};
StatusOr<InputSpec> ParseInputSpec(std::string_view spec);

// The .txt and .jsonl files of an input: the file itself, or every such file
// under a folder, recursively, sorted by path, skipping hidden entries. Errors:
// missing path, unsupported file type, folder without such files.
StatusOr<std::vector<std::string>> ListInputFiles(const std::string& path);

// Calls `fn` with each document of a file whose bytes are `contents`: a .txt
// file is one document; a .jsonl file has one JSON object per line with a string
// field "text" (blank lines are skipped). Empty documents are skipped. A bad line
// is an error naming file:line. `fn` gets the document's 1-based line (1 for
// .txt) and may stop the walk by returning an error.
Status ForEachDocument(const std::string& file, std::string_view contents,
                       const std::function<Status(std::string_view text, int64_t line)>& fn);

// ---- prepare ------------------------------------------------------------------------

struct PrepareOptions {
  std::vector<std::string> inputs;  // [domain=]path specs; a domain may repeat
  std::string out_dir;
  double val_fraction = 0.05;
  int threads = 0;  // tokenizer threads; 0: hardware concurrency
  bool force = false;  // replace a non-empty existing out_dir
  int64_t max_shard_bytes = kDefaultMaxShardBytes;
  bool progress = true;  // a progress line on stderr every few seconds
};

// Tokenizes the inputs into out_dir (see the file comment) and returns its manifest.
StatusOr<Manifest> PrepareDataset(const PrepareOptions& options, const Tokenizer& tokenizer);

// ---- partition ----------------------------------------------------------------------

enum class PartitionMode {
  kByDomain,  // client k gets domains k, k+K, k+2K, ... (manifest order); K <= domains
  kIid,       // every domain's training documents are shuffled (seeded) and dealt
};
StatusOr<PartitionMode> ParsePartitionMode(std::string_view name);  // "domain" / "iid"
std::string_view PartitionModeName(PartitionMode mode);

struct PartitionOptions {
  bool force = false;  // replace a non-empty existing out_dir
  int64_t max_shard_bytes = kDefaultMaxShardBytes;
};

// Writes `clients` complete prepared folders out_dir/client-<k>/ (k = 0..K-1), each
// usable as a client's --data. Validation data: by domain, each client's domains'
// validation shards; IID, all validation shards, for every client. Returns the
// clients' manifests.
StatusOr<std::vector<Manifest>> PartitionDataset(const std::string& src_dir, const std::string& out_dir,
                                                 int clients, PartitionMode mode, uint64_t seed,
                                                 const PartitionOptions& options = {});

// ---- reading shards -----------------------------------------------------------------

// A read-only memory map of a whole file; unmapped on destruction.
class MappedFile {
 public:
  static StatusOr<MappedFile> Open(const std::string& path);
  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One domain's split as a single token stream over its memory-mapped shards.
class TokenStream {
 public:
  static StatusOr<TokenStream> Open(const Manifest& manifest, const DomainInfo& domain, Split split);

  int64_t size() const { return total_; }
  // Token at position i (0 <= i < size()).
  uint32_t At(int64_t i) const;
  // Copies tokens [begin, begin + n) into out; the range must lie in the stream.
  void Copy(int64_t begin, int64_t n, int64_t* out) const;
  void Copy(int64_t begin, int64_t n, uint32_t* out) const;

 private:
  template <typename T>
  void CopyImpl(int64_t begin, int64_t n, T* out) const;
  size_t ShardOf(int64_t i) const;

  int dtype_bytes_ = 2;
  std::vector<MappedFile> shards_;
  std::vector<int64_t> starts_;  // first token of each shard; starts_.back() == total_
  int64_t total_ = 0;
};

}  // namespace fedps
