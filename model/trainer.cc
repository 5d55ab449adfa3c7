#include "model/trainer.h"

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace fedps {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Enables bf16 autocast on CUDA for the lifetime of the guard.
class AutocastGuard {
 public:
  explicit AutocastGuard(bool on) : on_(on) {
    if (!on_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  }
  ~AutocastGuard() {
    if (!on_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
  }

 private:
  bool on_;
};

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

StatusOr<torch::Device> ParseDevice(const std::string& name) {
  try {
    if (name == "auto") {
      return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
    }
    torch::Device d(name);
    if (d.is_cuda() && !torch::cuda::is_available()) {
      return FailedPrecondition("device " + name + " requested but CUDA is not available");
    }
    return d;
  } catch (const std::exception&) {
    return InvalidArgument("bad device \"" + name + "\" (auto, cpu, cuda, cuda:N)");
  }
}

double LearningRate(const TrainOptions& o, int64_t step) {
  const double min_lr = o.lr * o.min_lr_ratio;
  if (step < o.warmup_steps) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  if (o.schedule == "constant") return o.lr;
  if (step >= o.steps) return o.schedule == "cosine" || o.schedule == "wsd" ? min_lr : o.lr;
  if (o.schedule == "cosine") {
    double span = std::max<double>(1.0, static_cast<double>(o.steps - o.warmup_steps));
    double p = std::clamp(static_cast<double>(step - o.warmup_steps) / span, 0.0, 1.0);
    return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(kPi * p));
  }
  // wsd: stable at the peak, then a linear decay over the last decay_fraction of steps.
  double decay_steps = std::max(1.0, std::floor(o.decay_fraction * static_cast<double>(o.steps)));
  double decay_start = static_cast<double>(o.steps) - decay_steps;
  if (static_cast<double>(step) < decay_start) return o.lr;
  double p = std::clamp((static_cast<double>(step) - decay_start) / decay_steps, 0.0, 1.0);
  return o.lr + (min_lr - o.lr) * p;
}

int64_t FederationScheduleStep(int64_t base_version, int64_t local_steps) {
  return std::max<int64_t>(0, base_version) * std::max<int64_t>(0, local_steps);
}

Status LocalTrainer::SetScheduleStep(int64_t step) {
  if (step < 0) return InvalidArgument("schedule step " + std::to_string(step) + " < 0");
  schedule_step_ = step;
  return Status::Ok();
}

LocalTrainer::LocalTrainer(Model* model, SequenceLoader* loader, const TrainOptions& opts)
    : model_(model), loader_(loader), opts_(opts) {}

StatusOr<std::unique_ptr<LocalTrainer>> LocalTrainer::Create(Model* model, SequenceLoader* loader,
                                                             const TrainOptions& opts) {
  if (model == nullptr || loader == nullptr) return InvalidArgument("trainer needs a model and a loader");
  if (opts.seq_len > model->config().max_seq_len) {
    return InvalidArgument("train.seq_len " + std::to_string(opts.seq_len) + " exceeds the model's max_seq_len " +
                           std::to_string(model->config().max_seq_len));
  }
  std::unique_ptr<LocalTrainer> t(new LocalTrainer(model, loader, opts));
  t->ResetOptimizer();
  return t;
}

void LocalTrainer::ResetOptimizer() {
  auto flat = model_->flat_params();
  exp_avg_ = torch::zeros_like(flat);
  exp_avg_sq_ = torch::zeros_like(flat);
  auto scalar = torch::TensorOptions().dtype(torch::kFloat32).device(flat.device());
  step_decay_ = torch::zeros({}, scalar);
  step_no_decay_ = torch::zeros({}, scalar);
}

void LocalTrainer::OptimizerStep(double lr) {
  // Two fused AdamW calls over views of the flat buffers: the matrices get
  // decoupled weight decay, the norms (after decay_numel) do not.
  const int64_t n = model_->layout().total_numel();
  const int64_t d = model_->layout().decay_numel();
  auto params = model_->flat_params();
  auto grads = model_->flat_grads();
  auto run = [&](int64_t begin, int64_t end, double wd, torch::Tensor& step) {
    if (end <= begin) return;
    std::vector<at::Tensor> p{params.narrow(0, begin, end - begin)};
    std::vector<at::Tensor> g{grads.narrow(0, begin, end - begin)};
    std::vector<at::Tensor> m{exp_avg_.narrow(0, begin, end - begin)};
    std::vector<at::Tensor> v{exp_avg_sq_.narrow(0, begin, end - begin)};
    // The fused kernel expects the step count already incremented (as
    // torch.optim does before calling it): bias correction uses 1 - beta^step.
    step.add_(1);
    std::vector<at::Tensor> s{step};
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, opts_.beta1, opts_.beta2, wd, opts_.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  };
  run(0, d, opts_.weight_decay, step_decay_);
  run(d, n, 0.0, step_no_decay_);
}

StatusOr<TrainResult> LocalTrainer::Run(int64_t max_steps, double time_budget_s,
                                        const std::function<Status(const StepLog&)>& on_log) {
  if (max_steps < 0) return InvalidArgument("max_steps must be >= 0");
  TrainResult result;
  const auto device = model_->device();
  const bool autocast = device.is_cuda() && opts_.bf16;
  const int64_t tokens_per_micro = opts_.micro_batch * opts_.seq_len;
  const auto start = std::chrono::steady_clock::now();
  auto window_start = start;
  int64_t window_tokens = 0;
  int64_t window_micro = 0;
  auto run_loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  auto window_loss_sum = torch::zeros_like(run_loss_sum);
  torch::Tensor grad_norm;
  int64_t run_micro = 0;
  model_->SetTraining(true);

  try {
    for (int64_t i = 0; i < max_steps; ++i) {
      if (time_budget_s > 0 && Seconds(start) >= time_budget_s) {
        result.stopped_by_budget = true;
        break;
      }
      model_->ZeroGrad();
      for (int64_t a = 0; a < opts_.grad_accum; ++a) {
        torch::Tensor batch = loader_->Next(opts_.micro_batch).to(device, /*non_blocking=*/true);
        auto inputs = batch.narrow(1, 0, opts_.seq_len);
        auto targets = batch.narrow(1, 1, opts_.seq_len);
        torch::Tensor loss;
        {
          AutocastGuard guard(autocast);
          loss = model_->Loss(inputs, targets, opts_.loss_chunk_rows);
        }
        (loss / static_cast<double>(opts_.grad_accum)).backward();
        auto detached = loss.detach().to(torch::kFloat64);
        run_loss_sum.add_(detached);
        window_loss_sum.add_(detached);
        ++run_micro;
        ++window_micro;
      }
      auto grads = model_->flat_grads();
      grad_norm = grads.norm();
      if (opts_.grad_clip > 0) {
        // clip_coef = min(1, max_norm / (norm + 1e-6)), kept on the device.
        auto coef = torch::clamp_max(opts_.grad_clip / (grad_norm + 1e-6), 1.0);
        grads.mul_(coef);
      }
      double lr = LearningRate(opts_, schedule_step_);
      OptimizerStep(lr);
      ++global_step_;
      ++schedule_step_;
      ++result.steps;
      result.tokens += tokens_per_micro * opts_.grad_accum;
      window_tokens += tokens_per_micro * opts_.grad_accum;

      bool last = i + 1 == max_steps;
      if (global_step_ % opts_.log_every == 0 || last) {
        // The one host synchronisation: read the window's loss.
        StepLog log;
        log.step = global_step_;
        log.run_steps = result.steps;
        log.loss = window_loss_sum.item<double>() / static_cast<double>(std::max<int64_t>(1, window_micro));
        log.lr = lr;
        log.grad_norm = grad_norm.item<double>();
        log.tokens = result.tokens;
        log.seconds = Seconds(start);
        double window_s = Seconds(window_start);
        log.tokens_per_s = window_s > 0 ? static_cast<double>(window_tokens) / window_s : 0;
        result.last_loss = log.loss;
        if (!std::isfinite(log.loss)) {
          return FailedPrecondition("training diverged: loss is " + std::to_string(log.loss) + " at step " +
                                    std::to_string(global_step_) + " (lower train.lr?)");
        }
        window_loss_sum.zero_();
        window_micro = 0;
        window_tokens = 0;
        window_start = std::chrono::steady_clock::now();
        if (on_log) RETURN_IF_ERROR(on_log(log));
      }
    }
    if (window_micro > 0) {
      result.last_loss = window_loss_sum.item<double>() / static_cast<double>(window_micro);
    }
    result.mean_loss = run_micro > 0 ? run_loss_sum.item<double>() / static_cast<double>(run_micro) : 0;
    if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
  } catch (const c10::Error& e) {
    // LibTorch's message without its C++ backtrace (dozens of frames that name no setting).
    return Internal(std::string("training step failed: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("training step failed: ") + e.what());
  }
  result.seconds = Seconds(start);
  result.tokens_per_s = result.seconds > 0 ? static_cast<double>(result.tokens) / result.seconds : 0;
  return result;
}

std::vector<std::pair<std::string, torch::Tensor>> LocalTrainer::OptimizerState() const {
  auto steps = torch::stack({step_decay_.cpu(), step_no_decay_.cpu()});
  // The moments stay where they are (on a GPU, SaveTensors copies them out piece by piece).
  return {{"exp_avg", exp_avg_}, {"exp_avg_sq", exp_avg_sq_}, {"step", steps}};
}

Status LocalTrainer::LoadOptimizerState(const std::map<std::string, torch::Tensor>& state,
                                        int64_t global_step) {
  const int64_t n = model_->layout().total_numel();
  for (const char* name : {"exp_avg", "exp_avg_sq", "step"}) {
    if (!state.count(name)) return DataLoss(std::string("optimizer state lacks \"") + name + "\"");
  }
  const auto& m = state.at("exp_avg");
  const auto& v = state.at("exp_avg_sq");
  const auto& s = state.at("step");
  if (m.numel() != n || v.numel() != n || s.numel() != 2 || m.scalar_type() != torch::kFloat32 ||
      v.scalar_type() != torch::kFloat32) {
    return DataLoss("optimizer state does not match the model (" + std::to_string(m.numel()) + " vs " +
                    std::to_string(n) + " values)");
  }
  if (global_step < 0) return InvalidArgument("negative global step");
  auto device = model_->device();
  exp_avg_.copy_(m.reshape({n}).to(device));
  exp_avg_sq_.copy_(v.reshape({n}).to(device));
  auto steps = s.to(torch::kFloat32).reshape({2});
  step_decay_.copy_(steps[0].to(device));
  step_no_decay_.copy_(steps[1].to(device));
  global_step_ = global_step;
  schedule_step_ = global_step;
  return Status::Ok();
}

}  // namespace fedps
