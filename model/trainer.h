// LocalTrainer: the inner loop shared by the centralised baseline (`fedps-ctl
// train`) and the federation's clients.
//
// It trains a Model on batches from a SequenceLoader with AdamW over the model's
// flat parameter vector (two fused AdamW calls: the decayed matrices occupy
// [0, decay_numel) of the layout, norms the rest), a warm-up + cosine / WSD /
// constant schedule driven by a global step counter that survives restarts, global
// gradient-norm clipping and gradient accumulation. On CUDA it computes in bf16
// under autocast with fp32 master weights and moments.
//
// The schedule's position (schedule_step) advances with every step like global_step, but
// a caller may move it: a federation client on train.schedule_clock = "federation" sets
// it, before each cycle, to the federation's committed inner steps (FederationScheduleStep),
// so that its lr follows the whole federation's progress rather than its own step count.
//
// No host synchronisation inside the step loop: losses and gradient norms are
// accumulated on the device and read only on logging steps (`log_every`) and at
// the end. A time budget is checked against the host clock, which runs ahead of
// the GPU by at most a few queued steps.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/config.h"
#include "common/status.h"
#include "model/decoder.h"
#include "model/loader.h"

namespace fedps {

// train.device -> a device: "auto" is CUDA 0 when present, else the CPU; "cuda[:N]"
// without CUDA is an error.
StatusOr<torch::Device> ParseDevice(const std::string& name);

// Learning rate for the optimizer step with 0-based index `step` (warm-up, then
// the schedule; after opts.steps it stays at the final value).
double LearningRate(const TrainOptions& opts, int64_t step);

// The federation clock: the schedule step of a cycle trained from global version
// base_version, each committed update being local_steps inner steps: base_version *
// local_steps, the inner steps the federation had committed when the cycle's model was
// pulled. train.steps then counts the inner steps of all clients together.
int64_t FederationScheduleStep(int64_t base_version, int64_t local_steps);

// What the trainer reports on logging steps.
struct StepLog {
  int64_t step = 0;           // global optimizer steps done
  int64_t run_steps = 0;      // steps done in this Run()
  double loss = 0;            // mean training loss since the previous log
  double lr = 0;
  double grad_norm = 0;       // before clipping, at the last step
  int64_t tokens = 0;         // tokens trained in this Run()
  double seconds = 0;         // wall time of this Run() so far
  double tokens_per_s = 0;    // since the previous log
};

struct TrainResult {
  int64_t steps = 0;          // optimizer steps done in this Run()
  int64_t tokens = 0;
  double seconds = 0;
  double tokens_per_s = 0;
  double mean_loss = 0;       // over every micro-batch of this Run()
  double last_loss = 0;       // of the last logging window (or the last step)
  bool stopped_by_budget = false;
};

class LocalTrainer {
 public:
  // The model and loader must outlive the trainer.
  static StatusOr<std::unique_ptr<LocalTrainer>> Create(Model* model, SequenceLoader* loader,
                                                        const TrainOptions& opts);

  // Trains until `max_steps` more steps are done or `time_budget_s` (> 0) has
  // passed, whichever comes first. `on_log` runs every opts.log_every steps and
  // after the last one; an error from it stops training and is returned.
  StatusOr<TrainResult> Run(int64_t max_steps, double time_budget_s,
                            const std::function<Status(const StepLog&)>& on_log = {});

  int64_t global_step() const { return global_step_; }
  // The schedule step of the next optimizer step: its lr is LearningRate(opts, schedule_step()).
  int64_t schedule_step() const { return schedule_step_; }
  // Moves the schedule (not the AdamW step count); step >= 0.
  Status SetScheduleStep(int64_t step);

  // Optimizer state for checkpoints: "exp_avg", "exp_avg_sq" (flat fp32, the live tensors
  // on the model's device: write them before training on) and "step" (the two AdamW step
  // counts, a CPU copy).
  std::vector<std::pair<std::string, torch::Tensor>> OptimizerState() const;
  // Restores state written by OptimizerState(); checks sizes. The schedule step becomes
  // global_step.
  Status LoadOptimizerState(const std::map<std::string, torch::Tensor>& state, int64_t global_step);
  // Zeroes the moments and step count (a client starting over, say).
  void ResetOptimizer();

 private:
  LocalTrainer(Model* model, SequenceLoader* loader, const TrainOptions& opts);
  void OptimizerStep(double lr);

  Model* model_;
  SequenceLoader* loader_;
  TrainOptions opts_;
  int64_t global_step_ = 0;
  int64_t schedule_step_ = 0;
  torch::Tensor exp_avg_, exp_avg_sq_;        // flat, on the model's device
  torch::Tensor step_decay_, step_no_decay_;  // AdamW step counts (fp32 scalars on device)
};

}  // namespace fedps
