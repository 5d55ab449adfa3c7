// Token data: prepare, manifest, partition and shard reading (see token_data.h).
//
// Prepare streams: one file is read at a time (whole; corpora come as many files
// of reasonable size), its documents are batched, a batch is tokenized by N
// threads (each takes the next document from an atomic counter) and the results
// are written in document order, so the output never depends on scheduling.
// Shards are buffered in memory up to their maximum size and each is written
// with Env::WriteFileAtomic.
#include "model/token_data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/env.h"
#include "common/sha256.h"
#include "model/tokenizer.h"

namespace fedps {

static_assert(std::endian::native == std::endian::little,
              "token shards are little-endian and are read and written in place");

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr std::string_view kManifestFile = "manifest.json";
constexpr std::string_view kManifestFormat = "fedps-tokens";
// Tokenize in batches of about this much text (or this many documents).
constexpr size_t kBatchBytes = size_t{4} << 20;
constexpr size_t kBatchDocs = 4096;
constexpr double kProgressEverySeconds = 5.0;
// Tokens copied at a time when scanning a stream for </s>.
constexpr int64_t kScanBlock = int64_t{1} << 20;

uint64_t Mix64(uint64_t x) {
  // splitmix64's finaliser: a cheap, well-spread bijection on 64-bit words.
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// FNV-1a: a stable byte hash (std::hash is not stable across builds).
uint64_t Fnv1a(std::string_view bytes, uint64_t h = 0xCBF29CE484222325ULL) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return h;
}

// Where a document goes: a uniform number in [0, 1) from (domain, text).
double SplitHash(std::string_view domain, std::string_view text) {
  uint64_t h = Fnv1a(domain);
  h = Fnv1a(std::string_view("\0", 1), h);
  h = Mix64(Fnv1a(text, h));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

std::string UtcNow() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string WithCommas(int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return v < 0 ? "-" + s : s;
}

Status ValidateDomainName(std::string_view name, std::string_view origin) {
  auto bad = [&](std::string_view why) {
    return InvalidArgument("domain name \"" + std::string(name) + "\" (" + std::string(origin) + ") " +
                           std::string(why) + "; name it explicitly with domain=path");
  };
  if (name.empty()) return bad("is empty");
  if (name.size() > 100) return bad("is longer than 100 characters");
  if (name.front() == '.') return bad("starts with '.'");
  if (name == kManifestFile || name == "tokenizer.model") return bad("is reserved");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '.';
    if (!ok) return bad("may only contain letters, digits, '_', '-' and '.'");
  }
  return Status::Ok();
}

bool HasSuffix(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
bool IsTextFile(std::string_view name) { return HasSuffix(name, ".txt"); }
bool IsJsonlFile(std::string_view name) { return HasSuffix(name, ".jsonl"); }

// The message of a nlohmann exception without its "[json.exception.x.n] " tag.
std::string JsonMessage(const std::exception& e) {
  std::string m = e.what();
  if (!m.empty() && m.front() == '[') {
    size_t close = m.find("] ");
    if (close != std::string::npos) m = m.substr(close + 2);
  }
  return m;
}

// Runs fn(i) for i in [0, n) on up to `threads` threads; each takes the next index.
Status ParallelFor(size_t n, int threads, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::string error;
  auto work = [&] {
    try {
      for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu);
      if (error.empty()) error = e.what();
      next.store(n);
    }
  };
  size_t extra = std::min(n, static_cast<size_t>(std::max(1, threads))) - (n > 0 ? 1 : 0);
  std::vector<std::thread> pool;
  pool.reserve(extra);
  for (size_t t = 0; t < extra; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (!error.empty()) return Internal("tokenizing: " + error);
  return Status::Ok();
}

int ResolveThreads(int threads) {
  return threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// A folder written under a temporary sibling name and swapped into place on
// Commit(); removed if never committed.
class StagedDir {
 public:
  StagedDir() = default;
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;
  ~StagedDir() {
    if (!tmp_.empty() && !committed_) Env::Default()->RemoveAll(tmp_).IgnoreError();
  }

  Status Begin(std::string out, bool force) {
    while (out.size() > 1 && out.back() == '/') out.pop_back();
    if (out.empty()) return InvalidArgument("output folder is empty");
    Env* env = Env::Default();
    if (env->Exists(out)) {
      if (!env->IsDirectory(out)) return FailedPrecondition("output " + out + " exists and is not a folder");
      ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(out));
      if (!names.empty() && !force) {
        return FailedPrecondition("output folder " + out + " exists and is not empty (pass --force to replace it)");
      }
    }
    out_ = out;
    RETURN_IF_ERROR(env->CreateDirs(Dirname(out_)));
    tmp_ = out_ + ".tmp." + std::to_string(::getpid());
    RETURN_IF_ERROR(env->RemoveAll(tmp_));
    return env->CreateDirs(tmp_);
  }

  const std::string& tmp() const { return tmp_; }
  const std::string& out() const { return out_; }

  Status Commit() {
    Env* env = Env::Default();
    if (env->Exists(out_)) {
      std::string old = out_ + ".old." + std::to_string(::getpid());
      RETURN_IF_ERROR(env->RemoveAll(old));
      RETURN_IF_ERROR(env->Rename(out_, old));
      Status s = env->Rename(tmp_, out_);
      if (!s.ok()) {
        env->Rename(old, out_).IgnoreError();
        return s;
      }
      committed_ = true;
      return env->RemoveAll(old);
    }
    RETURN_IF_ERROR(env->Rename(tmp_, out_));
    committed_ = true;
    return Status::Ok();
  }

 private:
  std::string out_;
  std::string tmp_;
  bool committed_ = false;
};

// Accumulates one domain's split into shards of at most max_tokens tokens.
class ShardWriter {
 public:
  ShardWriter(std::string root, std::string domain, Split split, TokenDtype dtype, int64_t max_tokens)
      : root_(std::move(root)), domain_(std::move(domain)), split_(split), dtype_(dtype),
        max_tokens_(std::max<int64_t>(1, max_tokens)) {}

  template <typename T>
  Status Append(const T* tokens, size_t n) {
    const int width = TokenDtypeBytes(dtype_);
    for (size_t i = 0; i < n; ++i) {
      if (width == 2) {
        uint16_t v = static_cast<uint16_t>(tokens[i]);
        buffer_.append(reinterpret_cast<const char*>(&v), 2);
      } else {
        uint32_t v = static_cast<uint32_t>(tokens[i]);
        buffer_.append(reinterpret_cast<const char*>(&v), 4);
      }
      if (++buffered_ == max_tokens_) RETURN_IF_ERROR(Flush());
    }
    info_.tokens += static_cast<int64_t>(n);
    return Status::Ok();
  }

  // Counts a document whose tokens (and </s>) were appended.
  void AddDocument(int64_t bytes) {
    info_.documents += 1;
    info_.bytes += bytes;
  }

  // Writes the last partial shard and returns the split's description.
  StatusOr<SplitInfo> Finish() {
    RETURN_IF_ERROR(Flush());
    return info_;
  }

  const SplitInfo& info() const { return info_; }

 private:
  Status Flush() {
    if (buffered_ == 0) return Status::Ok();
    char name[64];
    std::snprintf(name, sizeof name, "%s-%05zu.bin", std::string(SplitName(split_)).c_str(),
                  info_.shards.size());
    std::string file = domain_ + "/" + name;
    std::string path = JoinPath(root_, file);
    RETURN_IF_ERROR(Env::Default()->CreateDirs(Dirname(path)));
    RETURN_IF_ERROR(Env::Default()->WriteFileAtomic(path, buffer_));
    info_.shards.push_back(TokenShardInfo{file, buffered_, Sha256Hex(buffer_)});
    buffer_.clear();
    buffered_ = 0;
    return Status::Ok();
  }

  std::string root_;
  std::string domain_;
  Split split_;
  TokenDtype dtype_;
  int64_t max_tokens_;
  std::string buffer_;
  int64_t buffered_ = 0;
  SplitInfo info_;
};

// One domain being prepared: routes documents to train or val. The last
// document bound for each split is held back until the domain ends, so that a
// split that would otherwise stay empty can take it: a domain with >= 2
// documents gets at least one validation document, and any domain at least one
// training document.
class DomainWriter {
 public:
  DomainWriter(const std::string& root, const std::string& name, TokenDtype dtype, int64_t max_tokens,
               int32_t eos)
      : train_(root, name, Split::kTrain, dtype, max_tokens),
        val_(root, name, Split::kValidation, dtype, max_tokens), eos_(eos) {}

  Status Add(std::vector<int32_t> tokens, int64_t bytes, bool to_val) {
    ++documents_;
    tokens.push_back(eos_);
    Held& held = to_val ? held_val_ : held_train_;
    if (held.valid) RETURN_IF_ERROR(Write(to_val ? val_ : train_, held));
    held.tokens = std::move(tokens);
    held.bytes = bytes;
    held.valid = true;
    return Status::Ok();
  }

  Status Finish(DomainInfo* domain) {
    const bool train_empty = train_.info().documents == 0 && !held_train_.valid;
    const bool val_empty = val_.info().documents == 0 && !held_val_.valid;
    if (train_empty && held_val_.valid) {
      RETURN_IF_ERROR(Write(train_, held_val_));
    } else if (val_empty && held_train_.valid && documents_ >= 2) {
      RETURN_IF_ERROR(Write(val_, held_train_));
    }
    if (held_train_.valid) RETURN_IF_ERROR(Write(train_, held_train_));
    if (held_val_.valid) RETURN_IF_ERROR(Write(val_, held_val_));
    ASSIGN_OR_RETURN(domain->train, train_.Finish());
    ASSIGN_OR_RETURN(domain->val, val_.Finish());
    return Status::Ok();
  }

 private:
  struct Held {
    std::vector<int32_t> tokens;
    int64_t bytes = 0;
    bool valid = false;
  };

  static Status Write(ShardWriter& w, Held& held) {
    RETURN_IF_ERROR(w.Append(held.tokens.data(), held.tokens.size()));
    w.AddDocument(held.bytes);
    held.valid = false;
    held.tokens.clear();
    return Status::Ok();
  }

  ShardWriter train_;
  ShardWriter val_;
  int32_t eos_;
  int64_t documents_ = 0;
  Held held_train_;
  Held held_val_;
};

class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled), start_(Clock::Real()->NowMicros()), last_(start_) {}

  void Add(int64_t docs, int64_t bytes, int64_t tokens, std::string_view domain) {
    docs_ += docs;
    bytes_ += bytes;
    tokens_ += tokens;
    if (!enabled_) return;
    int64_t now = Clock::Real()->NowMicros();
    if (static_cast<double>(now - last_) < kProgressEverySeconds * 1e6) return;
    last_ = now;
    double secs = static_cast<double>(now - start_) / 1e6;
    std::fprintf(stderr, "prepare: %s docs, %.1f MB, %.2fM tokens, %.0fk tokens/s (domain %s)\n",
                 WithCommas(docs_).c_str(), static_cast<double>(bytes_) / 1e6,
                 static_cast<double>(tokens_) / 1e6, static_cast<double>(tokens_) / 1e3 / secs,
                 std::string(domain).c_str());
  }

 private:
  bool enabled_;
  int64_t start_;
  int64_t last_;
  int64_t docs_ = 0, bytes_ = 0, tokens_ = 0;
};

// Builds the manifest's JSON; with ordered_json the keys keep this order in the
// written file (format and version first), with json they are sorted.
template <typename J>
J SplitToJson(const SplitInfo& s) {
  J shards = J::array();
  for (const TokenShardInfo& sh : s.shards) {
    J shard;
    shard["file"] = sh.file;
    shard["tokens"] = sh.tokens;
    shard["sha256"] = sh.sha256;
    shards.push_back(std::move(shard));
  }
  J j;
  j["documents"] = s.documents;
  j["tokens"] = s.tokens;
  j["bytes"] = s.bytes;
  j["shards"] = std::move(shards);
  return j;
}

template <typename J>
J ManifestToJson(const Manifest& m) {
  J j;
  j["format"] = kManifestFormat;
  j["version"] = m.version;
  j["created"] = m.created;
  J tok;
  tok["path"] = m.tokenizer.path;
  tok["sha256"] = m.tokenizer.sha256;
  tok["vocab_size"] = m.tokenizer.vocab_size;
  tok["eos_id"] = m.tokenizer.eos_id;
  tok["bos_id"] = m.tokenizer.bos_id;
  j["tokenizer"] = std::move(tok);
  j["dtype"] = TokenDtypeName(m.dtype);
  j["val_fraction"] = m.val_fraction;
  if (m.partition) {
    J p;
    p["mode"] = m.partition->mode;
    p["client"] = m.partition->client;
    p["clients"] = m.partition->clients;
    p["seed"] = m.partition->seed;
    p["source"] = m.partition->source;
    j["partition"] = std::move(p);
  }
  J ds = J::array();
  for (const DomainInfo& d : m.domains) {
    J dj;
    dj["name"] = d.name;
    dj["train"] = SplitToJson<J>(d.train);
    dj["val"] = SplitToJson<J>(d.val);
    J sources = J::array();
    for (const SourceInfo& src : d.sources) {
      J sj;
      sj["path"] = src.path;
      sj["sha256"] = src.sha256;
      sources.push_back(std::move(sj));
    }
    dj["sources"] = std::move(sources);  // last: it can be long
    ds.push_back(std::move(dj));
  }
  j["domains"] = std::move(ds);
  return j;
}

Status ValidateRelativeFile(const std::string& file) {
  if (file.empty() || file.front() == '/') return DataLoss("shard path \"" + file + "\" is not relative");
  fs::path p(file);
  for (const auto& part : p) {
    if (part == "..") return DataLoss("shard path \"" + file + "\" leaves the folder");
  }
  return Status::Ok();
}

StatusOr<SplitInfo> SplitFromJson(const json& j, const std::string& where) {
  SplitInfo s;
  s.documents = j.at("documents").get<int64_t>();
  s.tokens = j.at("tokens").get<int64_t>();
  s.bytes = j.at("bytes").get<int64_t>();
  if (s.documents < 0 || s.tokens < 0 || s.bytes < 0) return DataLoss(where + " has negative counts");
  int64_t sum = 0;
  for (const json& sh : j.at("shards")) {
    TokenShardInfo info{sh.at("file").get<std::string>(), sh.at("tokens").get<int64_t>(),
                   sh.at("sha256").get<std::string>()};
    RETURN_IF_ERROR(ValidateRelativeFile(info.file));
    if (info.tokens <= 0) return DataLoss(where + " shard " + info.file + " has no tokens");
    sum += info.tokens;
    s.shards.push_back(std::move(info));
  }
  if (sum != s.tokens) {
    return DataLoss(where + " says " + std::to_string(s.tokens) + " tokens but its shards hold " + std::to_string(sum));
  }
  return s;
}

Status CopyFile(const std::string& from, const std::string& to) {
  RETURN_IF_ERROR(Env::Default()->CreateDirs(Dirname(to)));
  std::error_code ec;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  if (ec) return Internal("cannot copy " + from + " to " + to + ": " + ec.message());
  return Status::Ok();
}

// Copies a split's shard files from one prepared folder into another (same names).
Status CopySplit(const Manifest& src, const SplitInfo& split, const std::string& dst_root) {
  for (const TokenShardInfo& sh : split.shards) RETURN_IF_ERROR(CopyFile(src.ShardPath(sh), JoinPath(dst_root, sh.file)));
  return Status::Ok();
}

Status WriteManifest(const Manifest& m, const std::string& dir) {
  return Env::Default()->WriteFileAtomic(JoinPath(dir, kManifestFile),
                                         ManifestToJson<nlohmann::ordered_json>(m).dump(2) + "\n");
}

// A random permutation of [0, n) from `key` (Fisher-Yates with splitmix64; the
// standard library's distributions are not reproducible across implementations).
std::vector<int64_t> SeededPermutation(int64_t n, uint64_t key) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  uint64_t state = key;
  for (int64_t i = n - 1; i > 0; --i) {
    state += 0x9E3779B97F4A7C15ULL;
    uint64_t r = Mix64(state);
    // Multiply-shift maps r to [0, i] with negligible bias for these sizes.
    uint64_t j = static_cast<uint64_t>((static_cast<unsigned __int128>(r) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

}  // namespace

// ---- small enums ----------------------------------------------------------------------

std::string_view SplitName(Split split) { return split == Split::kTrain ? "train" : "val"; }

std::string_view TokenDtypeName(TokenDtype dtype) { return dtype == TokenDtype::kUint16 ? "uint16" : "uint32"; }
int TokenDtypeBytes(TokenDtype dtype) { return dtype == TokenDtype::kUint16 ? 2 : 4; }
TokenDtype TokenDtypeForVocab(int64_t vocab_size) {
  return vocab_size <= 65536 ? TokenDtype::kUint16 : TokenDtype::kUint32;
}

StatusOr<PartitionMode> ParsePartitionMode(std::string_view name) {
  if (name == "domain") return PartitionMode::kByDomain;
  if (name == "iid") return PartitionMode::kIid;
  return InvalidArgument("partition mode \"" + std::string(name) + "\" is not one of: domain, iid");
}
std::string_view PartitionModeName(PartitionMode mode) { return mode == PartitionMode::kByDomain ? "domain" : "iid"; }

// ---- manifest -------------------------------------------------------------------------

const DomainInfo* Manifest::FindDomain(std::string_view name) const {
  for (const DomainInfo& d : domains) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

std::vector<std::string> Manifest::DomainNames() const {
  std::vector<std::string> names;
  for (const DomainInfo& d : domains) names.push_back(d.name);
  return names;
}

std::string Manifest::ShardPath(const TokenShardInfo& shard) const { return JoinPath(dir, shard.file); }

int64_t Manifest::Tokens(Split split) const {
  int64_t n = 0;
  for (const DomainInfo& d : domains) n += d.split(split).tokens;
  return n;
}
int64_t Manifest::Documents(Split split) const {
  int64_t n = 0;
  for (const DomainInfo& d : domains) n += d.split(split).documents;
  return n;
}
int64_t Manifest::Bytes(Split split) const {
  int64_t n = 0;
  for (const DomainInfo& d : domains) n += d.split(split).bytes;
  return n;
}

json Manifest::ToJson() const { return ManifestToJson<json>(*this); }

StatusOr<Manifest> Manifest::FromJson(const json& j, const std::string& dir) {
  const std::string where = JoinPath(dir, kManifestFile);
  Manifest m;
  m.dir = dir;
  try {
    if (!j.is_object()) return DataLoss(where + " is not a JSON object");
    if (j.value("format", std::string()) != kManifestFormat) {
      return DataLoss(where + " is not a fedps token-data manifest (format is not \"" +
                      std::string(kManifestFormat) + "\")");
    }
    m.version = j.at("version").get<int>();
    if (m.version != kManifestVersion) {
      return FailedPrecondition(where + " has format version " + std::to_string(m.version) +
                                "; this build reads version " + std::to_string(kManifestVersion));
    }
    m.created = j.value("created", std::string());
    const json& t = j.at("tokenizer");
    m.tokenizer.path = t.at("path").get<std::string>();
    m.tokenizer.sha256 = t.at("sha256").get<std::string>();
    m.tokenizer.vocab_size = t.at("vocab_size").get<int64_t>();
    m.tokenizer.eos_id = t.at("eos_id").get<int32_t>();
    m.tokenizer.bos_id = t.value("bos_id", 1);
    if (m.tokenizer.vocab_size <= 0 || m.tokenizer.eos_id < 0 || m.tokenizer.eos_id >= m.tokenizer.vocab_size) {
      return DataLoss(where + " has an impossible tokenizer (vocab_size " + std::to_string(m.tokenizer.vocab_size) +
                      ", eos_id " + std::to_string(m.tokenizer.eos_id) + ")");
    }
    RETURN_IF_ERROR(ValidateRelativeFile(m.tokenizer.path));
    std::string dtype = j.at("dtype").get<std::string>();
    if (dtype == "uint16") {
      m.dtype = TokenDtype::kUint16;
    } else if (dtype == "uint32") {
      m.dtype = TokenDtype::kUint32;
    } else {
      return DataLoss(where + " has unknown dtype \"" + dtype + "\"");
    }
    if (m.dtype == TokenDtype::kUint16 && m.tokenizer.vocab_size > 65536) {
      return DataLoss(where + ": uint16 tokens cannot hold a vocabulary of " + std::to_string(m.tokenizer.vocab_size));
    }
    m.val_fraction = j.value("val_fraction", 0.05);
    std::set<std::string> seen;
    for (const json& d : j.at("domains")) {
      DomainInfo info;
      info.name = d.at("name").get<std::string>();
      Status s = ValidateDomainName(info.name, where);
      if (!s.ok()) return DataLoss(s.message());
      if (!seen.insert(info.name).second) return DataLoss(where + " lists domain " + info.name + " twice");
      for (const json& src : d.value("sources", json::array())) {
        info.sources.push_back({src.at("path").get<std::string>(), src.value("sha256", std::string())});
      }
      ASSIGN_OR_RETURN(info.train, SplitFromJson(d.at("train"), where + " domain " + info.name + " train"));
      ASSIGN_OR_RETURN(info.val, SplitFromJson(d.at("val"), where + " domain " + info.name + " val"));
      m.domains.push_back(std::move(info));
    }
    if (j.contains("partition")) {
      const json& p = j.at("partition");
      m.partition = PartitionInfo{p.at("mode").get<std::string>(), p.at("client").get<int>(),
                                  p.at("clients").get<int>(), p.at("seed").get<uint64_t>(),
                                  p.value("source", std::string())};
    }
  } catch (const json::exception& e) {
    return DataLoss(where + ": " + JsonMessage(e));
  }
  return m;
}

Status Manifest::Verify() const {
  auto check = [&](const std::string& path, const std::string& want) -> Status {
    ASSIGN_OR_RETURN(std::string got, Sha256File(path));
    if (got != want) return DataLoss(path + " has sha256 " + got + ", the manifest says " + want);
    return Status::Ok();
  };
  RETURN_IF_ERROR(check(JoinPath(dir, tokenizer.path), tokenizer.sha256));
  for (const DomainInfo& d : domains) {
    for (const SplitInfo* s : {&d.train, &d.val}) {
      for (const TokenShardInfo& sh : s->shards) RETURN_IF_ERROR(check(ShardPath(sh), sh.sha256));
    }
  }
  return Status::Ok();
}

StatusOr<Manifest> LoadManifest(const std::string& dir, std::string_view expected_tokenizer_sha256) {
  Env* env = Env::Default();
  const std::string path = JoinPath(dir, kManifestFile);
  if (!env->Exists(path)) {
    return NotFound("no " + std::string(kManifestFile) + " in " + dir +
                    " (prepare data with `fedps-ctl prepare` first)");
  }
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(path));
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return DataLoss(path + " is not valid JSON: " + JsonMessage(e));
  }
  ASSIGN_OR_RETURN(Manifest m, Manifest::FromJson(j, dir));
  if (!expected_tokenizer_sha256.empty() && expected_tokenizer_sha256 != m.tokenizer.sha256) {
    return FailedPrecondition("prepared data " + dir + " was tokenized with tokenizer sha256 " + m.tokenizer.sha256 +
                              ", but the tokenizer in use has sha256 " + std::string(expected_tokenizer_sha256));
  }
  const std::string tok_path = JoinPath(dir, m.tokenizer.path);
  if (env->Exists(tok_path)) {
    ASSIGN_OR_RETURN(std::string got, Sha256File(tok_path));
    if (got != m.tokenizer.sha256) {
      return DataLoss(tok_path + " has sha256 " + got + ", the manifest says " + m.tokenizer.sha256);
    }
  }
  const int width = TokenDtypeBytes(m.dtype);
  for (const DomainInfo& d : m.domains) {
    for (const SplitInfo* s : {&d.train, &d.val}) {
      for (const TokenShardInfo& sh : s->shards) {
        const std::string shard_path = m.ShardPath(sh);
        StatusOr<int64_t> size = env->FileSize(shard_path);
        if (!size.ok()) return DataLoss("shard " + shard_path + " listed in the manifest is missing");
        if (*size != sh.tokens * width) {
          return DataLoss("shard " + shard_path + " has " + std::to_string(*size) + " bytes; the manifest says " +
                          std::to_string(sh.tokens) + " " + std::string(TokenDtypeName(m.dtype)) + " tokens (" +
                          std::to_string(sh.tokens * width) + " bytes)");
        }
      }
    }
  }
  return m;
}

StatusOr<Manifest> LoadManifest(const std::string& dir, const Tokenizer& tokenizer) {
  return LoadManifest(dir, tokenizer.sha256());
}

// ---- inputs ---------------------------------------------------------------------------

StatusOr<InputSpec> ParseInputSpec(std::string_view spec) {
  InputSpec out;
  size_t eq = spec.find('=');
  // "name=path" when the part before '=' is a valid name; otherwise the whole
  // spec is a path (paths may contain '=').
  if (eq != std::string_view::npos && eq > 0 && ValidateDomainName(spec.substr(0, eq), "").ok()) {
    out.domain = std::string(spec.substr(0, eq));
    out.path = std::string(spec.substr(eq + 1));
  } else {
    out.path = std::string(spec);
  }
  if (out.path.empty()) return InvalidArgument("input \"" + std::string(spec) + "\" has no path");
  if (out.domain.empty()) {
    std::string p = out.path;
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    std::string base = Basename(p);
    if (IsTextFile(base) || IsJsonlFile(base)) base = base.substr(0, base.rfind('.'));
    out.domain = base;
    RETURN_IF_ERROR(ValidateDomainName(out.domain, "from input " + out.path));
  }
  return out;
}

StatusOr<std::vector<std::string>> ListInputFiles(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return NotFound("input " + path + " does not exist");
  if (fs::is_regular_file(st)) {
    if (!IsTextFile(path) && !IsJsonlFile(path)) {
      return InvalidArgument("input " + path + " is neither a .txt or .jsonl file nor a folder");
    }
    return std::vector<std::string>{path};
  }
  if (!fs::is_directory(st)) return InvalidArgument("input " + path + " is neither a file nor a folder");
  std::vector<std::string> files;
  fs::recursive_directory_iterator it(path, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.empty() && name.front() == '.') {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if ((IsTextFile(name) || IsJsonlFile(name)) && it->is_regular_file(ec)) files.push_back(it->path().string());
  }
  if (ec) return Internal("cannot list input folder " + path + ": " + ec.message());
  if (files.empty()) return InvalidArgument("input folder " + path + " has no .txt or .jsonl files");
  std::sort(files.begin(), files.end());
  return files;
}

Status ForEachDocument(const std::string& file, std::string_view contents,
                       const std::function<Status(std::string_view text, int64_t line)>& fn) {
  if (!IsJsonlFile(file)) {
    if (contents.empty()) return Status::Ok();
    return fn(contents, 1);
  }
  int64_t line_no = 0;
  size_t pos = 0;
  while (pos < contents.size()) {
    size_t end = contents.find('\n', pos);
    if (end == std::string_view::npos) end = contents.size();
    std::string_view line = contents.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = file + ":" + std::to_string(line_no);
    json doc;
    try {
      doc = json::parse(line);
    } catch (const json::exception& e) {
      return InvalidArgument(where + ": malformed JSON: " + JsonMessage(e));
    }
    auto text = doc.is_object() ? doc.find("text") : doc.end();
    if (!doc.is_object() || text == doc.end() || !text->is_string()) {
      return InvalidArgument(where + ": the line has no string field \"text\"");
    }
    const std::string& s = text->get_ref<const std::string&>();
    if (s.empty()) continue;
    RETURN_IF_ERROR(fn(s, line_no));
  }
  return Status::Ok();
}

// ---- prepare --------------------------------------------------------------------------

namespace {

struct DomainPlan {
  std::string name;
  std::vector<std::string> files;
  std::vector<size_t> file_spec;  // which input spec each file came from
};

struct PendingDoc {
  std::string text;
  bool to_val = false;
};

}  // namespace

StatusOr<Manifest> PrepareDataset(const PrepareOptions& options, const Tokenizer& tokenizer) {
  if (options.inputs.empty()) return InvalidArgument("prepare needs at least one --input");
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0)) {
    return InvalidArgument("validation fraction must be in [0, 1), got " + std::to_string(options.val_fraction));
  }
  const TokenDtype dtype = TokenDtypeForVocab(tokenizer.vocab_size());
  const int64_t max_tokens = options.max_shard_bytes / TokenDtypeBytes(dtype);
  if (max_tokens < 1) return InvalidArgument("shard size " + std::to_string(options.max_shard_bytes) + " is too small");

  // Resolve every input before writing anything, so a typo fails fast.
  std::vector<DomainPlan> plans;
  std::map<std::string, size_t> plan_of;
  for (size_t i = 0; i < options.inputs.size(); ++i) {
    ASSIGN_OR_RETURN(InputSpec spec, ParseInputSpec(options.inputs[i]));
    ASSIGN_OR_RETURN(std::vector<std::string> files, ListInputFiles(spec.path));
    int64_t spec_bytes = 0;
    for (const std::string& f : files) {
      ASSIGN_OR_RETURN(int64_t size, Env::Default()->FileSize(f));
      spec_bytes += size;
    }
    if (spec_bytes == 0) return InvalidArgument("input " + options.inputs[i] + " is empty");
    auto [it, added] = plan_of.emplace(spec.domain, plans.size());
    if (added) plans.push_back(DomainPlan{spec.domain, {}, {}});
    DomainPlan& plan = plans[it->second];
    for (std::string& f : files) {
      if (std::find(plan.files.begin(), plan.files.end(), f) != plan.files.end()) {
        return InvalidArgument("file " + f + " is listed twice in domain " + plan.name);
      }
      plan.files.push_back(std::move(f));
      plan.file_spec.push_back(i);
    }
  }

  StagedDir staged;
  RETURN_IF_ERROR(staged.Begin(options.out_dir, options.force));
  Env* env = Env::Default();

  Manifest manifest;
  manifest.dir = staged.out();
  manifest.created = UtcNow();
  manifest.tokenizer.sha256 = tokenizer.sha256();
  manifest.tokenizer.vocab_size = tokenizer.vocab_size();
  manifest.tokenizer.eos_id = tokenizer.eos_id();
  manifest.tokenizer.bos_id = tokenizer.bos_id();
  manifest.dtype = dtype;
  manifest.val_fraction = options.val_fraction;
  RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(staged.tmp(), manifest.tokenizer.path), tokenizer.serialized()));

  const int threads = ResolveThreads(options.threads);
  Progress progress(options.progress);
  std::vector<int64_t> spec_docs(options.inputs.size(), 0);

  for (const DomainPlan& plan : plans) {
    DomainInfo domain;
    domain.name = plan.name;
    DomainWriter writer(staged.tmp(), plan.name, dtype, max_tokens, tokenizer.eos_id());
    std::vector<PendingDoc> batch;
    size_t batch_bytes = 0;
    auto flush = [&]() -> Status {
      std::vector<std::vector<int32_t>> encoded(batch.size());
      RETURN_IF_ERROR(ParallelFor(batch.size(), threads, [&](size_t i) { encoded[i] = tokenizer.Encode(batch[i].text); }));
      int64_t tokens = 0;
      for (size_t i = 0; i < batch.size(); ++i) {
        tokens += static_cast<int64_t>(encoded[i].size()) + 1;
        RETURN_IF_ERROR(writer.Add(std::move(encoded[i]), static_cast<int64_t>(batch[i].text.size()), batch[i].to_val));
      }
      progress.Add(static_cast<int64_t>(batch.size()), static_cast<int64_t>(batch_bytes), tokens, plan.name);
      batch.clear();
      batch_bytes = 0;
      return Status::Ok();
    };
    for (size_t f = 0; f < plan.files.size(); ++f) {
      const std::string& file = plan.files[f];
      ASSIGN_OR_RETURN(std::string contents, env->ReadFile(file));
      domain.sources.push_back(SourceInfo{file, Sha256Hex(contents)});
      Status s = ForEachDocument(file, contents, [&](std::string_view text, int64_t) -> Status {
        ++spec_docs[plan.file_spec[f]];
        batch.push_back(PendingDoc{std::string(text), SplitHash(plan.name, text) < options.val_fraction});
        batch_bytes += text.size();
        if (batch_bytes >= kBatchBytes || batch.size() >= kBatchDocs) return flush();
        return Status::Ok();
      });
      RETURN_IF_ERROR(s);
    }
    RETURN_IF_ERROR(flush());
    RETURN_IF_ERROR(writer.Finish(&domain));
    manifest.domains.push_back(std::move(domain));
  }
  for (size_t i = 0; i < options.inputs.size(); ++i) {
    if (spec_docs[i] == 0) return InvalidArgument("input " + options.inputs[i] + " has no documents (its files are empty)");
  }

  RETURN_IF_ERROR(WriteManifest(manifest, staged.tmp()));
  RETURN_IF_ERROR(staged.Commit());
  return manifest;
}

// ---- partition ------------------------------------------------------------------------

StatusOr<std::vector<Manifest>> PartitionDataset(const std::string& src_dir, const std::string& out_dir, int clients,
                                                 PartitionMode mode, uint64_t seed, const PartitionOptions& options) {
  if (clients < 1) return InvalidArgument("number of clients must be at least 1, got " + std::to_string(clients));
  std::error_code ec;
  if (fs::exists(out_dir, ec) && fs::equivalent(src_dir, out_dir, ec)) {
    return InvalidArgument("partition output " + out_dir + " is the source folder");
  }
  ASSIGN_OR_RETURN(Manifest src, LoadManifest(src_dir));
  const int num_domains = static_cast<int>(src.domains.size());
  if (num_domains == 0) return InvalidArgument("prepared data " + src_dir + " has no domains");
  if (mode == PartitionMode::kByDomain && clients > num_domains) {
    return InvalidArgument("cannot partition by domain over " + std::to_string(clients) + " clients: " + src_dir +
                           " has only " + std::to_string(num_domains) +
                           " domains and each client needs one (use --by iid or fewer clients)");
  }
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(JoinPath(src.dir, src.tokenizer.path)));
  if (tokenizer->sha256() != src.tokenizer.sha256) {
    return DataLoss("tokenizer copy in " + src_dir + " does not match its manifest");
  }
  const int64_t max_tokens = options.max_shard_bytes / TokenDtypeBytes(src.dtype);
  if (max_tokens < 1) return InvalidArgument("shard size " + std::to_string(options.max_shard_bytes) + " is too small");

  StagedDir staged;
  RETURN_IF_ERROR(staged.Begin(out_dir, options.force));
  Env* env = Env::Default();

  std::vector<Manifest> out(static_cast<size_t>(clients));
  std::vector<std::string> roots(static_cast<size_t>(clients));
  for (int k = 0; k < clients; ++k) {
    Manifest& m = out[static_cast<size_t>(k)];
    m.created = UtcNow();
    m.tokenizer = src.tokenizer;
    m.dtype = src.dtype;
    m.val_fraction = src.val_fraction;
    m.partition = PartitionInfo{std::string(PartitionModeName(mode)), k, clients, seed, src_dir};
    const std::string name = "client-" + std::to_string(k);
    m.dir = JoinPath(staged.out(), name);
    roots[static_cast<size_t>(k)] = JoinPath(staged.tmp(), name);
    RETURN_IF_ERROR(env->CreateDirs(roots[static_cast<size_t>(k)]));
    RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(roots[static_cast<size_t>(k)], m.tokenizer.path), tokenizer->serialized()));
  }

  if (mode == PartitionMode::kByDomain) {
    for (int i = 0; i < num_domains; ++i) {
      const DomainInfo& d = src.domains[static_cast<size_t>(i)];
      const size_t k = static_cast<size_t>(i % clients);
      RETURN_IF_ERROR(CopySplit(src, d.train, roots[k]));
      RETURN_IF_ERROR(CopySplit(src, d.val, roots[k]));
      out[k].domains.push_back(d);
    }
  } else {
    for (const DomainInfo& d : src.domains) {
      ASSIGN_OR_RETURN(TokenStream stream, TokenStream::Open(src, d, Split::kTrain));
      // Document ends (one past each </s>).
      std::vector<int64_t> ends;
      const uint32_t eos = static_cast<uint32_t>(src.tokenizer.eos_id);
      std::vector<uint32_t> block;
      for (int64_t begin = 0; begin < stream.size(); begin += kScanBlock) {
        const int64_t n = std::min(kScanBlock, stream.size() - begin);
        block.resize(static_cast<size_t>(n));
        stream.Copy(begin, n, block.data());
        for (int64_t i = 0; i < n; ++i) {
          if (block[static_cast<size_t>(i)] == eos) ends.push_back(begin + i + 1);
        }
      }
      if (stream.size() > 0 && (ends.empty() || ends.back() != stream.size())) {
        return DataLoss("training tokens of domain " + d.name + " in " + src_dir + " do not end with </s>");
      }
      const int64_t docs = static_cast<int64_t>(ends.size());
      if (docs != d.train.documents) {
        return DataLoss("domain " + d.name + " in " + src_dir + " has " + std::to_string(docs) +
                        " training documents in its shards but " + std::to_string(d.train.documents) + " in its manifest");
      }
      if (docs < clients) {
        return InvalidArgument("domain " + d.name + " has only " + std::to_string(docs) + " training documents, fewer than " +
                               std::to_string(clients) + " clients");
      }
      // Deal the shuffled documents round-robin: client counts differ by at most one.
      std::vector<int64_t> order = SeededPermutation(docs, Mix64(seed ^ Fnv1a(d.name)));
      std::vector<int> client_of(static_cast<size_t>(docs));
      for (int64_t p = 0; p < docs; ++p) client_of[static_cast<size_t>(order[static_cast<size_t>(p)])] = static_cast<int>(p % clients);

      std::vector<ShardWriter> writers;
      for (int k = 0; k < clients; ++k) writers.emplace_back(roots[static_cast<size_t>(k)], d.name, Split::kTrain, src.dtype, max_tokens);
      std::vector<uint32_t> buf;
      std::vector<int32_t> ids;
      int64_t start = 0;
      for (int64_t j = 0; j < docs; ++j) {
        const int64_t end = ends[static_cast<size_t>(j)];
        buf.resize(static_cast<size_t>(end - start));
        stream.Copy(start, end - start, buf.data());
        ShardWriter& w = writers[static_cast<size_t>(client_of[static_cast<size_t>(j)])];
        RETURN_IF_ERROR(w.Append(buf.data(), buf.size()));
        // Bytes per document are not stored; the lossless tokenizer gives them back.
        ids.assign(buf.begin(), buf.end() - 1);
        w.AddDocument(static_cast<int64_t>(tokenizer->Decode(ids).size()));
        start = end;
      }
      for (int k = 0; k < clients; ++k) {
        DomainInfo cd;
        cd.name = d.name;
        cd.sources = d.sources;
        ASSIGN_OR_RETURN(cd.train, writers[static_cast<size_t>(k)].Finish());
        cd.val = d.val;
        RETURN_IF_ERROR(CopySplit(src, d.val, roots[static_cast<size_t>(k)]));
        out[static_cast<size_t>(k)].domains.push_back(std::move(cd));
      }
    }
  }
  for (int k = 0; k < clients; ++k) RETURN_IF_ERROR(WriteManifest(out[static_cast<size_t>(k)], roots[static_cast<size_t>(k)]));
  RETURN_IF_ERROR(staged.Commit());
  return out;
}

// ---- reading shards -------------------------------------------------------------------

StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NotFound("cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Internal("cannot stat " + path + ": " + std::strerror(err));
  }
  MappedFile m;
  m.size_ = static_cast<size_t>(st.st_size);
  if (m.size_ > 0) {
    void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return Internal("cannot map " + path + ": " + std::strerror(err));
    }
    m.data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file
  return m;
}

MappedFile::MappedFile(MappedFile&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

StatusOr<TokenStream> TokenStream::Open(const Manifest& manifest, const DomainInfo& domain, Split split) {
  TokenStream s;
  s.dtype_bytes_ = TokenDtypeBytes(manifest.dtype);
  for (const TokenShardInfo& sh : domain.split(split).shards) {
    const std::string path = manifest.ShardPath(sh);
    ASSIGN_OR_RETURN(MappedFile f, MappedFile::Open(path));
    if (static_cast<int64_t>(f.size()) != sh.tokens * s.dtype_bytes_) {
      return DataLoss("shard " + path + " has " + std::to_string(f.size()) + " bytes, expected " +
                      std::to_string(sh.tokens * s.dtype_bytes_));
    }
    s.starts_.push_back(s.total_);
    s.total_ += sh.tokens;
    s.shards_.push_back(std::move(f));
  }
  s.starts_.push_back(s.total_);
  return s;
}

size_t TokenStream::ShardOf(int64_t i) const {
  // The last start <= i (starts_ is sorted; starts_.back() == total_).
  auto it = std::upper_bound(starts_.begin(), starts_.end() - 1, i);
  return static_cast<size_t>(it - starts_.begin()) - 1;
}

uint32_t TokenStream::At(int64_t i) const {
  size_t s = ShardOf(i);
  const uint8_t* p = shards_[s].data() + (i - starts_[s]) * dtype_bytes_;
  if (dtype_bytes_ == 2) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <typename T>
void TokenStream::CopyImpl(int64_t begin, int64_t n, T* out) const {
  if (n <= 0) return;
  size_t s = ShardOf(begin);
  int64_t pos = begin;
  while (n > 0) {
    const int64_t in_shard = std::min<int64_t>(n, starts_[s + 1] - pos);
    const uint8_t* p = shards_[s].data() + (pos - starts_[s]) * dtype_bytes_;
    if (dtype_bytes_ == 2) {
      for (int64_t k = 0; k < in_shard; ++k) {
        uint16_t v;
        std::memcpy(&v, p + 2 * k, 2);
        out[k] = static_cast<T>(v);
      }
    } else {
      for (int64_t k = 0; k < in_shard; ++k) {
        uint32_t v;
        std::memcpy(&v, p + 4 * k, 4);
        out[k] = static_cast<T>(v);
      }
    }
    out += in_shard;
    pos += in_shard;
    n -= in_shard;
    ++s;
  }
}

void TokenStream::Copy(int64_t begin, int64_t n, int64_t* out) const { CopyImpl(begin, n, out); }
void TokenStream::Copy(int64_t begin, int64_t n, uint32_t* out) const { CopyImpl(begin, n, out); }

}  // namespace fedps
