// fedps-client: one member of a fedps federation (client/federated_client.h), or with
// --evaluate an evaluator that scores the global model every few versions.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "client/federated_client.h"
#include "ps/tls_flags.h"
#include "common/config.h"
#include "common/logging.h"
#include "ps/redis_wait.h"

namespace {

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler needs a lock-free flag");

void OnSignal(int) {
  if (g_stop.exchange(true)) {
    // A second signal: the user insists. Leave without cleaning up; the state folder is
    // consistent at every instant (atomic writes), so a restart continues.
    static const char msg[] = "fedps-client: second signal, exiting now\n";
    ssize_t ignored = ::write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(130);
  }
}

void InstallSignalHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fedps-client: joins a fedps run, pulls the global model from the shards, trains local steps on "
      "its own data and pushes compressed pseudo-gradients; --evaluate scores the global model instead"};
  app.option_defaults()->always_capture_default();  // --help shows every default
  std::string config_path, data_dir, name, state_dir, device, pull_codec = "fp32";
  bool evaluate = false, verbose = false;
  int64_t max_updates = -1, local_steps = -1;
  double throttle = 0, local_time = -1;
  app.add_option("--config", config_path, "Run config (TOML): [run], [model], [ps], [client], [compression], [train]")
      ->required();
  app.add_option("--data", data_dir, "This client's prepared data folder (default: [data] prepared)");
  app.add_option("--name", name, "Client name in the registry (printable ASCII, no spaces)")->required();
  app.add_option("--state", state_dir, "State folder (default: <run.dir>/clients/<name>)");
  app.add_flag("--evaluate", evaluate, "Evaluator mode: evaluate every client.eval_every_versions versions");
  app.add_option("--max-updates", max_updates,
                 "Stop after this many committed updates (evaluations with --evaluate); 0: until stopped")
      ->check(CLI::NonNegativeNumber)
      ->default_str("client.max_updates");
  app.add_option("--local-steps", local_steps, "Inner steps per update (client.local_steps)")
      ->check(CLI::PositiveNumber)
      ->default_str("client.local_steps");
  app.add_option("--local-time", local_time, "Train for this many seconds per update instead (client.local_time_s)")
      ->check(CLI::NonNegativeNumber)
      ->default_str("client.local_time_s");
  app.add_option("--throttle", throttle, "Slow every step down by this factor (>= 1; simulated slow client)");
  app.add_option("--device", device, "auto, cpu, cuda, cuda:N (train.device)");
  app.add_option("--pull-codec", pull_codec, "Codec of pulled model frames: fp32 (default, lossless), bf16, int8");
  fedps::TlsOptions tls;
  fedps::AddTlsFlags(app, &tls, /*with_crl=*/false);
  app.add_flag("-v,--verbose", verbose, "Verbose logs");
  CLI11_PARSE(app, argc, argv);
  fedps::InitLogging(argv[0], verbose);
  InstallSignalHandlers();

  auto fail = [](const fedps::Status& s) {
    std::cerr << "fedps-client: error: " << s.message() << "\n";
    return 1;
  };
  auto cfg = fedps::LoadConfig(config_path);
  if (!cfg.ok()) return fail(cfg.status());
  if (max_updates >= 0) cfg->client.max_updates = max_updates;
  if (local_steps > 0) cfg->client.local_steps = local_steps;
  if (local_time >= 0) cfg->client.local_time_s = local_time;
  if (throttle != 0) {
    if (!(throttle >= 1.0)) return fail(fedps::InvalidArgument("--throttle must be >= 1"));
    cfg->client.throttle = throttle;
  }
  if (!device.empty()) cfg->train.device = device;

  fedps::FederatedClientOptions o;
  o.config = std::move(cfg).value();
  o.data_dir = data_dir;
  o.name = name;
  o.state_dir = state_dir;
  o.evaluator = evaluate;
  o.pull_codec = pull_codec;
  o.tls = tls;
  o.stop = &g_stop;
  // SIGTERM while Redis is away (starting, or joining again): a clean stop like any other;
  // a pending update stays in the state folder for the next start.
  auto stopped = [](const fedps::Status& s) {
    std::cerr << "fedps-client: " << s.message() << "; stopped cleanly\n";
    return 0;
  };
  auto client = fedps::FederatedClient::Create(std::move(o));
  if (!client.ok()) return fedps::StoppedWhileWaiting(client.status()) ? stopped(client.status()) : fail(client.status());
  fedps::Status s = (*client)->Run();
  if (!s.ok()) return fedps::StoppedWhileWaiting(s) ? stopped(s) : fail(s);
  return 0;
}
