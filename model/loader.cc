// SequenceLoader (see loader.h): windows over memory-mapped token streams in a
// keyed Feistel permutation per epoch.
#include "model/loader.h"

#include <algorithm>
#include <bit>
#include <set>

namespace fedps {
namespace {

uint64_t Mix64(uint64_t x) {
  // splitmix64's finaliser: a cheap, well-spread bijection on 64-bit words.
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

constexpr int kFeistelRounds = 4;

// A bijection on [0, n) keyed by `keys`: a balanced Feistel network on 2*half
// bits (a domain of at most 4n values), re-applied until the value falls in
// [0, n) ("cycle walking"; the walk stays on x's cycle, so it ends).
int64_t FeistelPermute(int64_t x, int64_t n, const uint64_t (&keys)[kFeistelRounds]) {
  if (n <= 1) return 0;
  const int bits = std::bit_width(static_cast<uint64_t>(n - 1));
  const int half = (bits + 1) / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  uint64_t v = static_cast<uint64_t>(x);
  do {
    uint64_t l = v >> half;
    uint64_t r = v & mask;
    for (uint64_t key : keys) {
      uint64_t f = Mix64(r ^ key) & mask;
      uint64_t next_r = l ^ f;
      l = r;
      r = next_r;
    }
    v = (l << half) | r;
  } while (v >= static_cast<uint64_t>(n));
  return static_cast<int64_t>(v);
}

}  // namespace

nlohmann::json LoaderState::ToJson() const {
  return {{"seed", seed}, {"epoch", epoch}, {"cursor", cursor}, {"sequences_per_epoch", sequences_per_epoch}};
}

StatusOr<LoaderState> LoaderState::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) return InvalidArgument("loader state is missing (expected a JSON object, got " + std::string(j.type_name()) + ")");
  LoaderState s;
  try {
    s.seed = j.at("seed").get<uint64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.cursor = j.at("cursor").get<int64_t>();
    s.sequences_per_epoch = j.value("sequences_per_epoch", int64_t{0});
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(std::string("loader state: ") + e.what());
  }
  if (s.epoch < 0 || s.cursor < 0 || s.sequences_per_epoch < 0) {
    return InvalidArgument("loader state has negative values: " + j.dump());
  }
  return s;
}

StatusOr<std::unique_ptr<SequenceLoader>> SequenceLoader::Open(const std::string& prepared_dir, Split split,
                                                                const std::vector<std::string>& domains,
                                                                int64_t seq_len, uint64_t seed, bool shuffle) {
  if (seq_len < 1) return InvalidArgument("sequence length must be at least 1, got " + std::to_string(seq_len));
  ASSIGN_OR_RETURN(Manifest manifest, LoadManifest(prepared_dir));
  std::set<std::string> wanted(domains.begin(), domains.end());
  for (const std::string& name : wanted) {
    if (manifest.FindDomain(name) == nullptr) {
      std::string have;
      for (const std::string& d : manifest.DomainNames()) have += (have.empty() ? "" : ", ") + d;
      return NotFound("domain " + name + " is not in prepared data " + prepared_dir + " (it has: " + have + ")");
    }
  }
  std::unique_ptr<SequenceLoader> loader(new SequenceLoader());
  loader->split_ = split;
  loader->seq_len_ = seq_len;
  loader->shuffle_ = shuffle;
  for (const DomainInfo& d : manifest.domains) {
    if (!wanted.empty() && wanted.count(d.name) == 0) continue;
    const int64_t tokens = d.split(split).tokens;
    if (tokens < seq_len + 1) {
      return InvalidArgument("domain " + d.name + " has " + std::to_string(tokens) + " " +
                             std::string(SplitName(split)) + " tokens in " + prepared_dir +
                             ", fewer than one sequence of seq_len + 1 = " + std::to_string(seq_len + 1));
    }
    ASSIGN_OR_RETURN(TokenStream stream, TokenStream::Open(manifest, d, split));
    loader->window_starts_.push_back(loader->total_windows_);
    loader->total_windows_ += (tokens - 1) / seq_len;
    loader->total_tokens_ += tokens;
    loader->streams_.push_back(std::move(stream));
    loader->domain_names_.push_back(d.name);
  }
  if (loader->streams_.empty()) return InvalidArgument("prepared data " + prepared_dir + " has no domains");
  loader->window_starts_.push_back(loader->total_windows_);
  loader->manifest_ = std::move(manifest);
  loader->state_.seed = seed;
  loader->state_.sequences_per_epoch = loader->total_windows_;
  return loader;
}

int64_t SequenceLoader::WindowAt(int64_t epoch, int64_t position) const {
  if (!shuffle_) return position;
  uint64_t keys[kFeistelRounds];
  const uint64_t base = Mix64(state_.seed ^ Mix64(static_cast<uint64_t>(epoch)));
  for (int r = 0; r < kFeistelRounds; ++r) keys[r] = Mix64(base + static_cast<uint64_t>(r));
  return FeistelPermute(position, total_windows_, keys);
}

void SequenceLoader::CopyWindow(int64_t window, int64_t* out) const {
  auto it = std::upper_bound(window_starts_.begin(), window_starts_.end() - 1, window);
  const size_t d = static_cast<size_t>(it - window_starts_.begin()) - 1;
  const int64_t local = window - window_starts_[d];
  streams_[d].Copy(local * seq_len_, seq_len_ + 1, out);
}

torch::Tensor SequenceLoader::Next(int64_t batch) {
  batch = std::max<int64_t>(batch, 0);
  torch::Tensor out = torch::empty({batch, seq_len_ + 1}, torch::kInt64);
  int64_t* p = out.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    CopyWindow(WindowAt(state_.epoch, state_.cursor), p + b * (seq_len_ + 1));
    if (++state_.cursor == total_windows_) {
      state_.cursor = 0;
      ++state_.epoch;
    }
  }
  return out;
}

LoaderState SequenceLoader::state() const { return state_; }

Status SequenceLoader::Restore(const LoaderState& state) {
  if (state.sequences_per_epoch != 0 && state.sequences_per_epoch != total_windows_) {
    return FailedPrecondition("loader state is for " + std::to_string(state.sequences_per_epoch) +
                              " sequences per epoch, but this loader has " + std::to_string(total_windows_) +
                              " (different data, domains or sequence length)");
  }
  if (state.epoch < 0 || state.cursor < 0 || state.cursor >= total_windows_) {
    return InvalidArgument("loader state (epoch " + std::to_string(state.epoch) + ", cursor " +
                           std::to_string(state.cursor) + ") is outside an epoch of " +
                           std::to_string(total_windows_) + " sequences");
  }
  state_ = state;
  state_.sequences_per_epoch = total_windows_;
  return Status::Ok();
}

}  // namespace fedps
