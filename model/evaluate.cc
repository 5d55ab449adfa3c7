#include "model/evaluate.h"

#include <ATen/autocast_mode.h>

#include <cmath>

#include "model/loader.h"
#include "model/token_data.h"

namespace fedps {

nlohmann::json EvalResult::ToJson() const {
  nlohmann::json j = {{"loss", loss}, {"perplexity", perplexity}, {"bits_per_byte", bits_per_byte}, {"tokens", tokens}};
  nlohmann::json per = nlohmann::json::object();
  for (const auto& d : domains) {
    per[d.domain] = {{"loss", d.loss}, {"perplexity", d.perplexity}, {"bits_per_byte", d.bits_per_byte}, {"tokens", d.tokens}};
  }
  j["domains"] = per;
  return j;
}

StatusOr<EvalResult> Evaluate(Model& model, const std::string& prepared_dir, const std::vector<std::string>& domains,
                              const EvalOptions& opts) {
  if (opts.seq_len < 1 || opts.batch < 1 || opts.max_batches < 0) return InvalidArgument("bad evaluation options");
  if (opts.seq_len > model.config().max_seq_len) {
    return InvalidArgument("evaluation seq_len " + std::to_string(opts.seq_len) + " exceeds the model's context " +
                           std::to_string(model.config().max_seq_len));
  }
  ASSIGN_OR_RETURN(Manifest manifest, LoadManifest(prepared_dir));
  std::vector<std::string> names = domains.empty() ? manifest.DomainNames() : domains;
  EvalResult result;
  double weighted_loss = 0, weighted_bits = 0, total_bytes = 0;
  const bool autocast = model.device().is_cuda() && opts.bf16;
  model.SetTraining(false);
  torch::NoGradGuard no_grad;
  for (const auto& name : names) {
    const DomainInfo* info = manifest.FindDomain(name);
    if (info == nullptr) return NotFound("domain \"" + name + "\" is not in " + prepared_dir);
    if (info->val.tokens < opts.seq_len + 1) {
      LOG(WARNING) << "domain " << name << " has only " << info->val.tokens
                   << " validation tokens, fewer than one sequence of " << opts.seq_len + 1 << "; not evaluated";
      continue;
    }
    ASSIGN_OR_RETURN(auto loader, SequenceLoader::Open(prepared_dir, Split::kValidation, {name}, opts.seq_len,
                                                       /*seed=*/0, /*shuffle=*/false));
    int64_t sequences = loader->sequences_per_epoch();
    if (opts.max_batches > 0) sequences = std::min(sequences, opts.max_batches * opts.batch);
    double loss_sum = 0;
    int64_t tokens = 0;
    try {
      auto sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(model.device()));
      for (int64_t done = 0; done < sequences;) {
        int64_t b = std::min(opts.batch, sequences - done);
        auto batch = loader->Next(b).to(model.device());
        torch::Tensor loss;
        if (autocast) {
          at::autocast::set_autocast_enabled(at::kCUDA, true);
          at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
        }
        loss = model.Loss(batch.narrow(1, 0, opts.seq_len), batch.narrow(1, 1, opts.seq_len));
        if (autocast) {
          at::autocast::set_autocast_enabled(at::kCUDA, false);
          at::autocast::clear_cache();
        }
        sum.add_(loss.to(torch::kFloat64) * static_cast<double>(b * opts.seq_len));
        tokens += b * opts.seq_len;
        done += b;
      }
      loss_sum = sum.item<double>();
    } catch (const std::exception& e) {
      return Internal("evaluation of " + name + " failed: " + e.what());
    }
    DomainEval d;
    d.domain = name;
    d.tokens = tokens;
    d.loss = loss_sum / static_cast<double>(tokens);
    d.perplexity = std::exp(d.loss);
    // Bits per byte: nats per token -> bits, times this domain's tokens per byte.
    double tokens_per_byte = info->val.bytes > 0 ? static_cast<double>(info->val.tokens) / info->val.bytes : 0;
    d.bits_per_byte = d.loss / std::log(2.0) * tokens_per_byte;
    result.domains.push_back(d);
    weighted_loss += d.loss * static_cast<double>(tokens);
    result.tokens += tokens;
    double bytes = tokens_per_byte > 0 ? static_cast<double>(tokens) / tokens_per_byte : 0;
    weighted_bits += d.bits_per_byte * bytes;
    total_bytes += bytes;
  }
  model.SetTraining(true);
  if (result.tokens == 0) {
    return FailedPrecondition("no domain of " + prepared_dir + " has enough validation tokens for one sequence of " +
                              std::to_string(opts.seq_len + 1));
  }
  result.loss = weighted_loss / static_cast<double>(result.tokens);
  result.perplexity = std::exp(result.loss);
  result.bits_per_byte = total_bytes > 0 ? weighted_bits / total_bytes : 0;
  return result;
}

}  // namespace fedps
