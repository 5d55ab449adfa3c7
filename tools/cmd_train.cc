// fedps-ctl train | eval | export | generate: the centralised baseline and the
// commands that work on any checkpoint (a baseline's or, later, a federation's).
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "common/config.h"
#include "common/env.h"
#include "common/metrics_log.h"
#include "model/checkpoint.h"
#include "model/evaluate.h"
#include "model/hf_export.h"
#include "model/loader.h"
#include "model/token_data.h"
#include "model/tokenizer.h"
#include "model/trainer.h"
#include "tools/commands.h"

namespace fedps::tools {
namespace {

std::string Hms(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", long(s / 3600), long(s / 60 % 60), long(s % 60));
  else std::snprintf(buf, sizeof buf, "%ld:%02ld", long(s / 60), long(s % 60));
  return buf;
}

std::string Rate(double v) {
  char buf[32];
  if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

void PrintEval(const EvalResult& r, int64_t step) {
  std::fprintf(stderr, "[eval] step %ld  loss %.4f  ppl %.2f  bpb %.4f\n", long(step), r.loss, r.perplexity,
               r.bits_per_byte);
  for (const auto& d : r.domains) {
    std::fprintf(stderr, "         %-24s loss %.4f  ppl %8.2f  bpb %.4f  (%ld tokens)\n", d.domain.c_str(), d.loss,
                 d.perplexity, d.bits_per_byte, long(d.tokens));
  }
}

// ---- train ----------------------------------------------------------------------------

struct TrainArgs {
  std::string config;
  bool resume = false;
  int64_t steps = 0;
  int64_t stop_at_step = 0;
  std::string device;
  std::string run_dir;
};

Status RunTrain(const TrainArgs& args) {
  ASSIGN_OR_RETURN(RunConfig cfg, LoadConfig(args.config));
  if (args.steps > 0) cfg.train.steps = args.steps;
  if (!args.device.empty()) cfg.train.device = args.device;
  if (!args.run_dir.empty()) cfg.run.dir = args.run_dir;
  const TrainOptions& t = cfg.train;
  Env* env = Env::Default();
  if (t.threads > 0) torch::set_num_threads(static_cast<int>(t.threads));
  ASSIGN_OR_RETURN(torch::Device device, ParseDevice(t.device));

  std::string tokenizer_path = cfg.data.tokenizer.empty() ? JoinPath(cfg.data.prepared, "tokenizer.model") : cfg.data.tokenizer;
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(tokenizer_path));
  ASSIGN_OR_RETURN(Manifest manifest, LoadManifest(cfg.data.prepared, tokenizer->sha256()));
  std::vector<std::string> domains = SplitCommaList(cfg.data.domains);

  const std::string ckpt_root = JoinPath(cfg.run.dir, "checkpoints");
  std::optional<CheckpointContents> resume_from;
  if (args.resume) {
    ASSIGN_OR_RETURN(std::string latest, LatestValidCheckpoint(ckpt_root));
    ASSIGN_OR_RETURN(CheckpointContents ckpt, LoadCheckpoint(latest));
    if (ckpt.tokenizer_sha256 != tokenizer->sha256()) {
      return FailedPrecondition("checkpoint " + latest + " was trained with tokenizer " + ckpt.tokenizer_sha256 +
                                " but the config's tokenizer is " + tokenizer->sha256());
    }
    resume_from = std::move(ckpt);
  } else if (env->Exists(JoinPath(ckpt_root, "latest"))) {
    return FailedPrecondition("run folder " + cfg.run.dir +
                              " already holds checkpoints; pass --resume to continue it or choose another run.dir");
  }

  ModelConfig model_config;
  std::unique_ptr<Model> model;
  if (resume_from) {
    ASSIGN_OR_RETURN(model, ModelFromCheckpoint(*resume_from, device));
    model_config = model->config();
  } else {
    ASSIGN_OR_RETURN(model_config, ResolveModelConfig(cfg.model, tokenizer->vocab_size()));
    ASSIGN_OR_RETURN(model, Model::Create(model_config, device, cfg.run.seed));
  }
  ASSIGN_OR_RETURN(auto loader, SequenceLoader::Open(cfg.data.prepared, Split::kTrain, domains, t.seq_len, cfg.run.seed));
  ASSIGN_OR_RETURN(auto trainer, LocalTrainer::Create(model.get(), loader.get(), t));
  int64_t tokens_done = 0;
  if (resume_from) {
    ASSIGN_OR_RETURN(LoaderState ls, LoaderState::FromJson(resume_from->state.value("loader", nlohmann::json())));
    RETURN_IF_ERROR(loader->Restore(ls));
    RETURN_IF_ERROR(trainer->LoadOptimizerState(resume_from->optimizer, resume_from->step));
    tokens_done = resume_from->state.value("tokens", int64_t{0});
    std::fprintf(stderr, "[train] resumed from %s at step %ld\n", resume_from->path.c_str(), long(resume_from->step));
  }

  ASSIGN_OR_RETURN(auto metrics, MetricsLog::Open(JoinPath(cfg.run.dir, "metrics.jsonl"), "train"));
  const int64_t params = ParameterCount(model_config);
  const double flops_per_token = FlopsPerToken(model_config, t.seq_len);
  RETURN_IF_ERROR(metrics->Write("start", {{"config", args.config},
                                           {"model", model_config.ToJson()},
                                           {"parameters", params},
                                           {"device", device.str()},
                                           {"step", trainer->global_step()},
                                           {"resumed", resume_from.has_value()}}));
  std::fprintf(stderr, "[train] %s: model %s, %.2fM parameters, %ld steps of %ld tokens on %s\n", cfg.run.id.c_str(),
               model_config.preset.c_str(), double(params) / 1e6, long(t.steps),
               long(t.micro_batch * t.grad_accum * t.seq_len), device.str().c_str());

  EvalOptions eval_opts;
  eval_opts.seq_len = t.seq_len;
  eval_opts.batch = t.micro_batch;
  eval_opts.max_batches = t.eval_batches;
  eval_opts.bf16 = t.bf16;
  auto evaluate = [&]() -> Status {
    ASSIGN_OR_RETURN(EvalResult r, Evaluate(*model, cfg.data.prepared, domains, eval_opts));
    PrintEval(r, trainer->global_step());
    auto j = r.ToJson();
    j["step"] = trainer->global_step();
    j["tokens"] = tokens_done;
    return metrics->Write("eval", j);
  };
  auto checkpoint = [&]() -> Status {
    CheckpointSaveOptions so;
    so.step = trainer->global_step();
    so.state = {{"loader", loader->state().ToJson()}, {"tokens", tokens_done}, {"run_id", cfg.run.id}};
    so.optimizer = trainer->OptimizerState();
    so.tokenizer_path = tokenizer_path;
    so.tokenizer_sha256 = tokenizer->sha256();
    so.keep = t.keep_checkpoints;
    ASSIGN_OR_RETURN(std::string path, SaveCheckpoint(ckpt_root, *model, so));
    std::fprintf(stderr, "[train] checkpoint %s\n", path.c_str());
    return metrics->Write("checkpoint", {{"step", so.step}, {"path", path}});
  };

  // A fresh run evaluates the initial model, so curves start at step 0.
  if (!resume_from && t.eval_every > 0) RETURN_IF_ERROR(evaluate());
  const auto start = std::chrono::steady_clock::now();
  const int64_t first_step = trainer->global_step();
  // --stop-at-step ends the run early (checkpointed, resumable) without changing the schedule.
  const int64_t end_step = args.stop_at_step > 0 ? std::min(args.stop_at_step, t.steps) : t.steps;
  while (trainer->global_step() < end_step) {
    int64_t step = trainer->global_step();
    int64_t next = end_step;
    if (t.eval_every > 0) next = std::min(next, (step / t.eval_every + 1) * t.eval_every);
    if (t.checkpoint_every > 0) next = std::min(next, (step / t.checkpoint_every + 1) * t.checkpoint_every);
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double budget = t.time_budget_s > 0 ? t.time_budget_s - elapsed : 0;
    if (t.time_budget_s > 0 && budget <= 0) break;
    auto on_log = [&](const StepLog& log) -> Status {
      double total_elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      double per_step = total_elapsed / double(std::max<int64_t>(1, log.step - first_step));
      // MFU against H100/H200 dense bf16 peak (989 TFLOP/s); printed on CUDA only.
      double mfu = log.tokens_per_s * flops_per_token / 989e12;
      std::string mfu_text = device.is_cuda() ? "  MFU " + std::to_string(mfu).substr(0, 5) : "";
      std::fprintf(stderr, "[train] step %ld/%ld  loss %.4f  lr %.2e  grad %.3f  %s tok/s%s  elapsed %s  ETA %s\n",
                   long(log.step), long(t.steps), log.loss, log.lr, log.grad_norm, Rate(log.tokens_per_s).c_str(),
                   mfu_text.c_str(), Hms(total_elapsed).c_str(), Hms(per_step * double(t.steps - log.step)).c_str());
      return metrics->Write("train", {{"step", log.step},
                                      {"loss", log.loss},
                                      {"lr", log.lr},
                                      {"grad_norm", log.grad_norm},
                                      {"tokens", tokens_done + log.tokens},
                                      {"tokens_per_s", log.tokens_per_s},
                                      {"mfu", device.is_cuda() ? mfu : 0.0}});
    };
    ASSIGN_OR_RETURN(TrainResult r, trainer->Run(next - step, budget, on_log));
    tokens_done += r.tokens;
    int64_t now = trainer->global_step();
    bool stop = r.stopped_by_budget;
    if ((t.eval_every > 0 && now % t.eval_every == 0) && now < end_step) RETURN_IF_ERROR(evaluate());
    if ((t.checkpoint_every > 0 && now % t.checkpoint_every == 0) && now < end_step) RETURN_IF_ERROR(checkpoint());
    if (stop) {
      std::fprintf(stderr, "[train] time budget of %.0f s reached at step %ld\n", t.time_budget_s, long(now));
      break;
    }
  }
  RETURN_IF_ERROR(evaluate());
  RETURN_IF_ERROR(checkpoint());
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  RETURN_IF_ERROR(metrics->Write("end", {{"step", trainer->global_step()}, {"tokens", tokens_done}, {"seconds", seconds}}));
  std::fprintf(stderr, "[train] done: %ld steps, %ld tokens in %s\n", long(trainer->global_step()), long(tokens_done),
               Hms(seconds).c_str());
  return Status::Ok();
}

// ---- eval / export / generate ------------------------------------------------------------

struct EvalArgs {
  std::string checkpoint;
  std::string data;
  std::string domains;
  int64_t seq_len = 0;
  int64_t batch = 8;
  int64_t batches = 16;
  std::string device = "auto";
  bool json = false;
};

Status RunEval(const EvalArgs& args) {
  ASSIGN_OR_RETURN(torch::Device device, ParseDevice(args.device));
  ASSIGN_OR_RETURN(CheckpointContents ckpt, LoadCheckpoint(args.checkpoint, /*with_optimizer=*/false));
  ASSIGN_OR_RETURN(Manifest manifest, LoadManifest(args.data, ckpt.tokenizer_sha256));
  ASSIGN_OR_RETURN(auto model, ModelFromCheckpoint(ckpt, device));
  EvalOptions o;
  o.seq_len = args.seq_len > 0 ? args.seq_len : std::min<int64_t>(model->config().max_seq_len, 128);
  o.batch = args.batch;
  o.max_batches = args.batches;
  ASSIGN_OR_RETURN(EvalResult r, Evaluate(*model, args.data, SplitCommaList(args.domains), o));
  if (args.json) {
    auto j = r.ToJson();
    j["checkpoint"] = ckpt.path;
    j["step"] = ckpt.step;
    std::cout << j.dump(2) << "\n";
  } else {
    PrintEval(r, ckpt.step);
  }
  return Status::Ok();
}

struct ExportArgs {
  std::string checkpoint;
  std::string out;
  bool force = false;
};

Status RunExport(const ExportArgs& args) {
  ASSIGN_OR_RETURN(CheckpointContents ckpt, LoadCheckpoint(args.checkpoint, /*with_optimizer=*/false));
  ASSIGN_OR_RETURN(auto model, ModelFromCheckpoint(ckpt, torch::kCPU));
  RETURN_IF_ERROR(ExportHuggingFace(*model, ckpt.tokenizer_path(), args.out, args.force));
  std::fprintf(stderr, "[export] wrote %s (LlamaForCausalLM, %.2fM parameters, step %ld)\n", args.out.c_str(),
               double(ParameterCount(model->config())) / 1e6, long(ckpt.step));
  return Status::Ok();
}

struct GenerateArgs {
  std::string checkpoint;
  std::vector<std::string> prompts;
  int64_t tokens = 64;
  // 0: greedy (the most likely next token), as transformers' generate() is by default
  // (its text-generation pipeline samples unless given do_sample=False); > 0 samples at
  // that temperature among the top_k.
  double temperature = 0;
  int64_t top_k = 40;
  uint64_t seed = 1;
  std::string device = "auto";
  bool json = false;
};

Status RunGenerate(const GenerateArgs& args) {
  ASSIGN_OR_RETURN(torch::Device device, ParseDevice(args.device));
  ASSIGN_OR_RETURN(CheckpointContents ckpt, LoadCheckpoint(args.checkpoint, /*with_optimizer=*/false));
  ASSIGN_OR_RETURN(auto model, ModelFromCheckpoint(ckpt, device));
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(ckpt.tokenizer_path()));
  if (args.temperature < 0) return InvalidArgument("--temperature must be >= 0");
  model->SetTraining(false);
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(args.seed);
  nlohmann::json out = nlohmann::json::array();
  const int64_t context = model->config().max_seq_len;
  for (const auto& prompt : args.prompts) {
    std::vector<int32_t> ids = tokenizer->Encode(prompt);
    if (ids.empty()) ids.push_back(static_cast<int32_t>(tokenizer->eos_id()));
    std::vector<int32_t> generated;
    for (int64_t i = 0; i < args.tokens; ++i) {
      int64_t n = std::min<int64_t>(context, static_cast<int64_t>(ids.size()));
      std::vector<int64_t> window(ids.end() - n, ids.end());
      auto input = torch::tensor(window, torch::kInt64).view({1, n}).to(device);
      auto logits = model->Forward(input).index({0, n - 1}).to(torch::kCPU, torch::kFloat32);
      int64_t next;
      if (args.temperature == 0) {
        next = logits.argmax().item<int64_t>();
      } else {
        logits = logits / args.temperature;
        if (args.top_k > 0 && args.top_k < logits.size(0)) {
          auto kth = std::get<0>(logits.topk(args.top_k)).index({args.top_k - 1});
          logits = torch::where(logits < kth, torch::full_like(logits, -INFINITY), logits);
        }
        auto probs = torch::softmax(logits, 0);
        next = at::multinomial(probs, 1, false, gen).item<int64_t>();
      }
      if (next == tokenizer->eos_id()) break;
      ids.push_back(static_cast<int32_t>(next));
      generated.push_back(static_cast<int32_t>(next));
    }
    std::string text = tokenizer->Decode(generated);
    if (args.json) {
      out.push_back({{"prompt", prompt}, {"completion", text}, {"completion_ids", generated}});
    } else {
      std::cout << "--- prompt: " << prompt << "\n" << prompt << text << "\n";
    }
  }
  if (args.json) std::cout << nlohmann::json{{"checkpoint", ckpt.path}, {"step", ckpt.step}, {"samples", out}}.dump(2) << "\n";
  return Status::Ok();
}

}  // namespace

void AddTrainCommands(CLI::App& root, CommandList& commands) {
  {
    auto args = std::make_shared<TrainArgs>();
    auto* cmd = root.add_subcommand("train", "Train the centralised baseline on pooled data (same trainer as the clients)");
    cmd->add_option("-c,--config", args->config, "Run config (TOML), e.g. configs/tiny.toml")->required();
    cmd->add_flag("--resume", args->resume, "Continue from the run folder's newest valid checkpoint");
    cmd->add_option("--steps", args->steps, "Override train.steps (the schedule's length)")->default_str("train.steps");
    cmd->add_option("--stop-at-step", args->stop_at_step,
                    "Stop (with a checkpoint) at this global step; --resume continues the same schedule")
        ->default_str("none: the schedule's end");
    cmd->add_option("--device", args->device, "Override train.device (auto, cpu, cuda, cuda:N)");
    cmd->add_option("--run-dir", args->run_dir, "Override run.dir");
    commands.push_back({cmd, [args] { return RunTrain(*args); }});
  }
  {
    auto args = std::make_shared<EvalArgs>();
    auto* cmd = root.add_subcommand("eval", "Validation loss, perplexity and bits per byte per domain of a checkpoint");
    cmd->add_option("--checkpoint", args->checkpoint, "Checkpoint folder (step-N) or checkpoints root")->required();
    cmd->add_option("--data", args->data, "Prepared dataset folder (its validation split)")->required();
    cmd->add_option("--domains", args->domains, "Comma-separated domains (default: all)");
    cmd->add_option("--seq-len", args->seq_len, "Sequence length (default: min(128, model context))");
    cmd->add_option("--batch", args->batch, "Sequences per batch");
    cmd->add_option("--batches", args->batches, "Batches per domain (0: the whole split)");
    cmd->add_option("--device", args->device, "auto, cpu, cuda, cuda:N");
    cmd->add_flag("--json", args->json, "Print JSON");
    commands.push_back({cmd, [args] { return RunEval(*args); }});
  }
  {
    auto args = std::make_shared<ExportArgs>();
    auto* cmd = root.add_subcommand("export", "Export a checkpoint as a Hugging Face LlamaForCausalLM folder");
    cmd->add_option("--checkpoint", args->checkpoint, "Checkpoint folder (step-N) or checkpoints root")->required();
    cmd->add_option("-o,--out", args->out, "Output folder")->required();
    cmd->add_flag("--force", args->force, "Replace an existing output folder");
    commands.push_back({cmd, [args] { return RunExport(*args); }});
  }
  {
    auto args = std::make_shared<GenerateArgs>();
    auto* cmd = root.add_subcommand(
        "generate", "Continue prompts with a checkpoint: greedy by default, sampled with --temperature > 0");
    cmd->add_option("--checkpoint", args->checkpoint, "Checkpoint folder (step-N) or checkpoints root")->required();
    cmd->add_option("-p,--prompt", args->prompts, "Prompt (repeatable)")->required();
    cmd->add_option("-n,--tokens", args->tokens, "Tokens to generate per prompt");
    cmd->add_option("--temperature", args->temperature,
                    "0: greedy, the most likely token each step (as transformers' generate() by default); "
                    "> 0: sample at this temperature");
    cmd->add_option("--top-k", args->top_k, "When sampling: among the k most likely tokens (0: all)");
    cmd->add_option("--seed", args->seed, "When sampling: the seed");
    cmd->add_option("--device", args->device, "auto, cpu, cuda, cuda:N");
    cmd->add_flag("--json", args->json, "Print JSON");
    commands.push_back({cmd, [args] { return RunGenerate(*args); }});
  }
}

}  // namespace fedps::tools
