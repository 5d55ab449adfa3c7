// Validation: loss, perplexity and bits per byte per domain on the held-out
// split of a prepared dataset.
//
// Bits per byte makes models with different tokenizers comparable: the summed
// loss in nats over a domain's validation tokens, divided by ln 2 and by the
// UTF-8 bytes those tokens encode. When only part of the split is evaluated
// (max_batches), the domain's bytes-per-token ratio from the manifest scales it.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "model/decoder.h"

namespace fedps {

struct DomainEval {
  std::string domain;
  double loss = 0;         // mean cross-entropy (nats per token)
  double perplexity = 0;
  double bits_per_byte = 0;
  int64_t tokens = 0;      // target tokens evaluated
};

struct EvalResult {
  std::vector<DomainEval> domains;
  double loss = 0;  // token-weighted over domains
  double perplexity = 0;
  double bits_per_byte = 0;
  int64_t tokens = 0;
  nlohmann::json ToJson() const;
};

struct EvalOptions {
  int64_t seq_len = 128;
  int64_t batch = 8;
  int64_t max_batches = 16;  // per domain; 0 = the whole validation split
  bool bf16 = true;          // autocast on CUDA
};

// Evaluates `model` on the validation split of `prepared_dir` for `domains`
// (empty: every domain in the manifest). Sequences are read in order, so the
// result is deterministic.
StatusOr<EvalResult> Evaluate(Model& model, const std::string& prepared_dir,
                              const std::vector<std::string>& domains, const EvalOptions& opts);

}  // namespace fedps
