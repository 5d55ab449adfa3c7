#include "client/federated_client.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>

#include "client/update_math.h"
#include "model/evaluate.h"
#include "ps/redis_wait.h"
#include "model/token_data.h"
#include "ps/rpc/shard_types.h"

namespace fedps {
namespace {

using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point t) {
  return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 200) return false;
  for (unsigned char c : name) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

std::string Rate(double v) {
  char buf[32];
  if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

std::string Bytes(double v) {
  char buf[32];
  if (v >= 1 << 30) std::snprintf(buf, sizeof buf, "%.2f GiB", v / (1 << 30));
  else if (v >= 1 << 20) std::snprintf(buf, sizeof buf, "%.2f MiB", v / (1 << 20));
  else if (v >= 1 << 10) std::snprintf(buf, sizeof buf, "%.1f KiB", v / (1 << 10));
  else std::snprintf(buf, sizeof buf, "%.0f B", v);
  return buf;
}

// The shard's ErrorCode of the channel's last failure (-1: transport / none).
int LastCode(const ShardChannel& ch) {
  return ch.last_error().code ? static_cast<int>(*ch.last_error().code) : -1;
}

bool IsFinalState(int state) {
  return state == rpc::UpdateState::STAGED || state == rpc::UpdateState::COMMITTED ||
         state == rpc::UpdateState::APPLIED || state == rpc::UpdateState::SKIPPED;
}

std::string HostName() {
  char host[256] = {0};
  if (::gethostname(host, sizeof host - 1) != 0) host[0] = 0;
  return host;
}

}  // namespace

StatusOr<std::pair<std::string, int>> ParseHostPort(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= address.size()) {
    return InvalidArgument("address \"" + address + "\" is not host:port");
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  for (size_t i = colon + 1; i < address.size(); ++i) {
    if (address[i] < '0' || address[i] > '9' || port > 65535) {
      return InvalidArgument("address \"" + address + "\" has a bad port");
    }
    port = port * 10 + (address[i] - '0');
  }
  if (port <= 0 || port > 65535) return InvalidArgument("address \"" + address + "\" has a bad port");
  return std::make_pair(host, port);
}

// ---- construction -----------------------------------------------------------------------

FederatedClient::FederatedClient(FederatedClientOptions options)
    : options_(std::move(options)), cfg_(options_.config) {}

FederatedClient::~FederatedClient() {
  heartbeat_stop_ = true;
  hb_cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
}

const std::string& FederatedClient::metrics_path() const { return metrics_->path(); }

Status FederatedClient::InitTls() {
  const TlsOptions& tls = options_.tls;
  if (!tls.mutual()) return CheckTls(tls, "127.0.0.1", "");  // addresses are checked at connect
  RETURN_IF_ERROR(CheckTls(tls, "", ""));
  ASSIGN_OR_RETURN(std::string pem, Env::Default()->ReadFile(tls.cert));
  ASSIGN_OR_RETURN(CertificateSubject subject, SubjectOfPem(pem));
  // Shards accept pushes only from the certificate's own name: say so now, not at the push.
  if (!options_.evaluator && (subject.role != kRoleClient || subject.name != options_.name)) {
    return InvalidArgument("--tls-cert " + tls.cert + " is " + subject.name + " (role '" + subject.role +
                           "'); this client is --name " + options_.name + ": issue it a certificate with "
                           "fedps-ctl tls issue --name " + options_.name + " --role client");
  }
  if (options_.evaluator && subject.role != kRoleClient && subject.role != kRoleOperator) {
    return InvalidArgument("--tls-cert " + tls.cert + " has role '" + subject.role + "': an evaluator pulls with a "
                           "client's or the operator's certificate");
  }
  ASSIGN_OR_RETURN(tls_, TlsSocketFactory::Create(tls, /*server=*/false));
  return Status::Ok();
}

StatusOr<std::unique_ptr<FederatedClient>> FederatedClient::Create(FederatedClientOptions options) {
  std::unique_ptr<FederatedClient> c(new FederatedClient(std::move(options)));
  try {
    RETURN_IF_ERROR(c->Init());
  } catch (const std::exception& e) {  // LibTorch (c10::Error) or the standard library
    return Internal(std::string("client set-up: ") + e.what());
  }
  return c;
}

Status FederatedClient::Init() {
  RETURN_IF_ERROR(InitTls());
  const ClientOptions& co = cfg_.client;
  if (!ValidName(options_.name)) {
    return InvalidArgument("client name \"" + options_.name + "\" must be 1-200 printable ASCII characters without spaces");
  }
  if (co.local_steps < 1 && co.local_time_s <= 0) {
    return InvalidArgument("client.local_steps must be >= 1 (or client.local_time_s > 0)");
  }
  if (!(co.throttle >= 1.0) || !std::isfinite(co.throttle)) {
    return InvalidArgument("client.throttle must be a finite number >= 1");
  }
  data_dir_ = options_.data_dir.empty() ? cfg_.data.prepared : options_.data_dir;
  state_dir_ = options_.state_dir.empty() ? JoinPath(JoinPath(cfg_.run.dir, "clients"), options_.name)
                                          : options_.state_dir;
  domains_ = SplitCommaList(cfg_.data.domains);
  if (cfg_.train.threads > 0) torch::set_num_threads(static_cast<int>(cfg_.train.threads));
  ASSIGN_OR_RETURN(torch::Device device, ParseDevice(cfg_.train.device));

  // Tokenizer, data, model: the same wiring as `fedps-ctl train`.
  tokenizer_path_ = cfg_.data.tokenizer.empty() ? JoinPath(data_dir_, "tokenizer.model") : cfg_.data.tokenizer;
  ASSIGN_OR_RETURN(tokenizer_, Tokenizer::Load(tokenizer_path_));
  ASSIGN_OR_RETURN(Manifest manifest, LoadManifest(data_dir_, tokenizer_->sha256()));
  // The domains this member trains on, as the registry and `fedps-ctl members` show them.
  member_domains_ = domains_.empty() ? manifest.DomainNames() : domains_;
  ASSIGN_OR_RETURN(ModelConfig model_config, ResolveModelConfig(cfg_.model, tokenizer_->vocab_size()));
  ASSIGN_OR_RETURN(model_, Model::Create(model_config, device, cfg_.run.seed));
  const ParamLayout& layout = model_->layout();
  if (cfg_.ps.num_shards < 1 || cfg_.ps.num_shards > 4096) {
    return InvalidArgument("ps.num_shards must be 1..4096");
  }
  ASSIGN_OR_RETURN(slices_, layout.Partition(static_cast<int>(cfg_.ps.num_shards)));

  // Codecs: the push codec is the run's; pulled frames decode whatever kind they carry.
  ASSIGN_OR_RETURN(push_kind_, ParseCodecKind(cfg_.compression.codec));
  update_path_ = std::make_unique<DeviceUpdate>(layout.total_numel(), device, push_kind_,
                                                cfg_.compression.error_feedback);
  ASSIGN_OR_RETURN(CodecKind pull_kind, ParseCodecKind(options_.pull_codec));
  CodecOptions pco;
  pco.kind = pull_kind;
  pco.threads = static_cast<int>(cfg_.compression.threads);
  ASSIGN_OR_RETURN(pull_codec_, Codec::Create(pco));

  // The run's identity; InitRun refuses a mismatch with what the shards registered.
  identity_.model_preset = model_config.preset;
  identity_.model_config = model_config.ToJson();
  identity_.layout_hash = layout.hash();
  identity_.tokenizer_sha256 = tokenizer_->sha256();
  identity_.codec = cfg_.compression.codec;
  identity_.num_shards = static_cast<int>(cfg_.ps.num_shards);
  identity_.apply_config = PsApplyConfig(cfg_.ps);
  ASSIGN_OR_RETURN(auto hp, ParseHostPort(cfg_.ps.redis));
  registry_options_.host = hp.first;
  registry_options_.port = hp.second;
  registry_options_.password = cfg_.ps.redis_password;
  registry_options_.run_id = cfg_.run.id;
  // Redis may be away (not started yet, restarting): wait for it up to ps.redis_wait_ms.
  Status run = WaitForRedis(cfg_.ps.redis, std::chrono::milliseconds(cfg_.ps.redis_wait_ms), [&]() -> Status {
    if (!registry_) {
      ASSIGN_OR_RETURN(registry_, RegistryLink::Connect(registry_options_));
    }
    return registry_->InitRun(identity_);
  }, [this] { return Stopping(); });
  if (!run.ok()) return run.WithContext("run \"" + cfg_.run.id + "\"");

  ASSIGN_OR_RETURN(store_, ClientStateStore::Open(state_dir_));
  ASSIGN_OR_RETURN(metrics_, MetricsLog::Open(JoinPath(state_dir_, "metrics.jsonl"), options_.name));
  if (options_.evaluator) return Status::Ok();

  ASSIGN_OR_RETURN(loader_, SequenceLoader::Open(data_dir_, Split::kTrain, domains_, cfg_.train.seq_len,
                                                 cfg_.run.seed));
  ASSIGN_OR_RETURN(trainer_, LocalTrainer::Create(model_.get(), loader_.get(), cfg_.train));
  auto loaded = store_->Load();
  if (loaded.ok()) {
    state_ = std::move(loaded).value();
    if (state_.loader) RETURN_IF_ERROR(loader_->Restore(*state_.loader).WithContext("state " + state_dir_));
    auto saved = store_->LoadOptimizer(model_->device());
    Status restored = saved.status();
    if (saved.ok()) {
      std::map<std::string, torch::Tensor> opt(saved->begin(), saved->end());
      restored = trainer_->LoadOptimizerState(opt, state_.trainer_step);
    }
    if (!restored.ok()) {
      // The moments only speed training up (client/client_state.h): go on with fresh ones,
      // at the saved step of the lr schedule. (With optimizer_save_every = 0 there are none.)
      if (restored.code() != StatusCode::kNotFound || co.optimizer_save_every > 0) {
        LOG(WARNING) << "client " << options_.name << ": optimizer moments not restored (" << restored.message()
                     << "); continuing with fresh ones";
      }
      const int64_t n = model_->layout().total_numel();
      const auto on_device = model_->flat_params().options();
      RETURN_IF_ERROR(trainer_->LoadOptimizerState({{"exp_avg", torch::zeros({n}, on_device)},
                                                    {"exp_avg_sq", torch::zeros({n}, on_device)},
                                                    {"step", torch::zeros({2})}},
                                                   state_.trainer_step));
    }
    LOG(INFO) << "client " << options_.name << ": resumed from " << state_dir_ << " (next update "
              << state_.next_counter << ", trainer step " << state_.trainer_step
              << (state_.pending ? ", pending update " + state_.pending->update_id : std::string()) << ")";
  } else if (loaded.status().code() != StatusCode::kNotFound) {
    return loaded.status();
  }
  return Status::Ok();
}

bool FederatedClient::Stopping() const {
  return stopping_.load() || (options_.stop != nullptr && options_.stop->load());
}

bool FederatedClient::SleepMs(int64_t ms) const {
  auto until = SteadyClock::now() + std::chrono::milliseconds(ms);
  while (SteadyClock::now() < until) {
    if (Stopping()) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - SteadyClock::now());
    std::this_thread::sleep_for(std::min(left, std::chrono::milliseconds(50)));
  }
  return !Stopping();
}

// ---- membership -------------------------------------------------------------------------

Status FederatedClient::JoinFresh() {
  const std::string host = HostName();
  // A name whose lease is live belongs to another process: wait until it lapses (a killed
  // predecessor's lease runs out within client.lease_ms); a holder that keeps renewing it
  // for 2 x client.lease_ms is alive, and this process gives up.
  const auto lease = std::chrono::milliseconds(cfg_.client.lease_ms);
  std::optional<SteadyClock::time_point> held_since;
  auto last_line = SteadyClock::now();
  for (;;) {
    Status joined = WaitForRedis(cfg_.ps.redis, std::chrono::milliseconds(cfg_.ps.redis_wait_ms), [&]() -> Status {
      auto epoch = registry_->Join(options_.name, host, member_domains_, lease);
      if (!epoch.ok()) return epoch.status();
      std::lock_guard<std::mutex> lock(membership_mu_);
      epoch_ = *epoch;
      joined_ = true;
      return Status::Ok();
    }, [this] { return Stopping(); });
    if (joined.code() != StatusCode::kAlreadyExists) return joined.ok() ? joined : joined.WithContext("join");
    const auto now = SteadyClock::now();
    if (!held_since) {
      held_since = now;
      LOG(WARNING) << "client " << options_.name << ": " << joined.message() << "; waiting for it to lapse";
    }
    if (now - *held_since > 2 * lease + std::chrono::seconds(1)) {
      return FailedPrecondition("another live process holds the client name " + options_.name +
                                " (it renewed its lease for 2 x client.lease_ms = " +
                                std::to_string(2 * cfg_.client.lease_ms) + " ms): stop it, or start this client with "
                                "another --name. " + joined.message());
    }
    if (now - last_line > std::chrono::seconds(5)) {
      LOG(INFO) << "client " << options_.name << ": still waiting: " << joined.message();
      last_line = now;
    }
    if (!SleepMs(250)) return Aborted("stopped while waiting for the client name " + options_.name);
  }
}

Status FederatedClient::Rejoin(RegistryLink* registry, int64_t fenced_epoch) {
  std::lock_guard<std::mutex> lock(membership_mu_);
  if (epoch_ != fenced_epoch) return Status::Ok();  // someone else already joined again
  auto epoch = registry->Join(options_.name, HostName(), member_domains_, std::chrono::milliseconds(cfg_.client.lease_ms));
  if (epoch.status().code() == StatusCode::kAlreadyExists) {
    // Another process joined under this name after this one's lease lapsed: it owns the
    // name now. This one stops (its pending update stays in its state folder).
    Status replaced = FailedPrecondition("client " + options_.name + " epoch " + std::to_string(fenced_epoch) +
                                         " was fenced and another process took the name: " + epoch.status().message() +
                                         "; this process stops");
    replaced_ = replaced;
    stopping_ = true;
    return replaced;
  }
  if (!epoch.ok()) return epoch.status().WithContext("rejoin");
  LOG(WARNING) << "client " << options_.name << ": membership epoch " << fenced_epoch
               << " was fenced (its lease lapsed); joined again as epoch " << *epoch;
  epoch_ = *epoch;
  ++rejoins_;
  return Status::Ok();
}

int64_t FederatedClient::CurrentEpoch() {
  std::lock_guard<std::mutex> lock(membership_mu_);
  return epoch_;
}

void FederatedClient::HeartbeatLoop() {
  std::unique_ptr<RegistryLink> reg;
  const auto period = std::chrono::milliseconds(std::max<int64_t>(10, cfg_.client.heartbeat_ms));
  while (!heartbeat_stop_) {
    {
      std::unique_lock<std::mutex> lock(hb_mu_);
      hb_cv_.wait_for(lock, period, [&] { return heartbeat_stop_.load(); });
    }
    if (heartbeat_stop_) break;
    if (!reg) {
      auto r = RegistryLink::Connect(registry_options_);
      if (!r.ok()) {
        LOG(WARNING) << "heartbeat: " << r.status().message();
        continue;
      }
      reg = std::move(r).value();
    }
    nlohmann::json stats;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats = heartbeat_stats_;
    }
    const int64_t epoch = CurrentEpoch();
    Status s = reg->Heartbeat(options_.name, epoch, stats);
    if (s.code() == StatusCode::kAborted) {
      Status r = Rejoin(reg.get(), epoch);
      if (!r.ok()) LOG(WARNING) << "heartbeat: " << r.message();
    } else if (!s.ok()) {
      LOG(WARNING) << "heartbeat: " << s.message();  // Redis away: the lease may lapse; we rejoin then
    }
  }
}

// ---- shard directory and channels ------------------------------------------------------

Status FederatedClient::RefreshDirectory(bool wait_for_all) {
  const size_t n = slices_.size();
  Backoff backoff(cfg_.client.retry_initial_ms, cfg_.client.retry_max_ms, 2.0, options_.backoff_seed);
  for (;;) {
    std::string missing;
    auto shards = registry_->Shards();
    if (shards.ok()) {
      std::vector<ShardAddress> dir(n);
      std::vector<bool> seen(n, false);
      for (const auto& s : *shards) {
        if (s.index < 0 || static_cast<size_t>(s.index) >= n) continue;
        if (!s.alive) continue;
        auto hp = ParseHostPort(s.address);
        if (!hp.ok()) return hp.status().WithContext("shard " + std::to_string(s.index) + " directory entry");
        if (s.slice_begin != slices_[s.index].begin || s.slice_end != slices_[s.index].end) {
          return FailedPrecondition("shard " + std::to_string(s.index) + " registered slice [" +
                                    std::to_string(s.slice_begin) + ", " + std::to_string(s.slice_end) +
                                    ") but this client's model partition says [" +
                                    std::to_string(slices_[s.index].begin) + ", " +
                                    std::to_string(slices_[s.index].end) + ")");
        }
        dir[s.index] = {hp->first, hp->second, s.epoch};
        seen[s.index] = true;
      }
      for (size_t i = 0; i < n; ++i) {
        if (!seen[i]) missing += (missing.empty() ? "" : ",") + std::to_string(i);
      }
      if (missing.empty() || !wait_for_all) {
        if (channels_.size() != n) channels_.resize(n);
        for (size_t i = 0; i < n; ++i) {
          if (!seen[i]) continue;
          bool moved = directory_.size() != n || directory_[i].host != dir[i].host || directory_[i].port != dir[i].port;
          if (moved || channels_[i].empty()) {
            channels_[i].clear();
            for (int j = 0; j < StreamsPerShard(); ++j) {
              ShardChannelOptions o;
              o.host = dir[i].host;
              o.port = dir[i].port;
              o.call_timeout = options_.shard_call_timeout;
              o.tls = tls_;
              channels_[i].push_back(std::make_unique<ShardChannel>(o));
            }
          }
        }
        if (directory_.size() != n) directory_.resize(n);
        for (size_t i = 0; i < n; ++i) {
          if (seen[i]) directory_[i] = dir[i];
        }
        if (missing.empty()) return Status::Ok();
      }
    } else if (!shards.status().retryable()) {
      return shards.status().WithContext("shard directory");
    }
    if (backoff.attempts() % 10 == 5) {
      if (shards.ok()) {
        LOG(WARNING) << "waiting for shard(s) " << missing << " to register";
      } else {
        LOG(WARNING) << "waiting for the registry: " << shards.status().message();
      }
    }
    if (!SleepMs(backoff.NextDelayMs())) return Aborted("stopped");
  }
}

ShardChannel& FederatedClient::Channel(int shard, int stream) { return *channels_[shard][stream]; }

int FederatedClient::StreamsPerShard() const { return static_cast<int>(cfg_.client.streams_per_shard); }

// ---- pull -------------------------------------------------------------------------------

FederatedClient::FramesPulled FederatedClient::PullFrames(const PullShape& shape, int stream, rpc::PullRequest req,
                                                          const std::vector<int64_t>& frames, int64_t* version,
                                                          std::span<float> dest, const std::atomic<bool>& abort) {
  FramesPulled out;
  const int shard = shape.shard;
  const int64_t E = shape.frame_elements, n = shape.slice_elements;
  ShardChannel& ch = Channel(shard, stream);
  Backoff backoff(cfg_.client.retry_initial_ms, cfg_.client.retry_max_ms, 2.0,
                  options_.backoff_seed ? options_.backoff_seed + 1000 + shard * 64 + stream : 0);
  int unavailable = 0;
  for (int64_t k : frames) {
    req.frame_index = k;
    for (;;) {
      if (Stopping()) {
        out.status = Aborted("stopped");
        return out;
      }
      if (abort) return out;  // another stream failed or must start again
      auto r = ch.Pull(req);
      if (r.ok()) {
        if (*version < 0) *version = r->version;
        if (r->version != *version || r->frame_index != k || r->total_frames != shape.total_frames ||
            r->slice_elements != n || r->frame_elements != E) {
          out.status = DataLoss("shard " + std::to_string(shard) + " answered frame " +
                                std::to_string(r->frame_index) + "/" + std::to_string(r->total_frames) +
                                " of version " + std::to_string(r->version) + " to a request for frame " +
                                std::to_string(k) + "/" + std::to_string(shape.total_frames) + " of version " +
                                std::to_string(*version));
          return out;
        }
        auto header = Codec::PeekHeader(r->frame);
        const int64_t want_count = std::min(E, n - k * E);
        if (!header.ok() || header->offset != static_cast<uint64_t>(k * E) ||
            header->count != static_cast<uint64_t>(want_count)) {
          if (++unavailable >= options_.unavailable_attempts) {
            out.status = DataLoss("shard " + std::to_string(shard) + " frame " + std::to_string(k) + " is malformed");
            return out;
          }
          continue;  // resend the request
        }
        Status d = pull_codec_->DecodeFrame(r->frame, dest);
        if (!d.ok()) {
          if (d.code() == StatusCode::kDataLoss && ++unavailable < options_.unavailable_attempts) continue;
          out.status = d.WithContext("shard " + std::to_string(shard) + " frame " + std::to_string(k));
          return out;
        }
        out.bytes += static_cast<int64_t>(r->frame.size());
        backoff.Reset();
        unavailable = 0;
        break;
      }
      const int code = LastCode(ch);
      if (code == rpc::ErrorCode::SNAPSHOT_EXPIRED) {
        out.restart = true;
        return out;
      }
      if (r.status().code() == StatusCode::kUnavailable && ++unavailable < options_.unavailable_attempts &&
          SleepMs(backoff.NextDelayMs(ch.last_error().retry_after_ms))) {
        continue;
      }
      out.status = r.status().WithContext("pull from shard " + std::to_string(shard));
      return out;
    }
  }
  return out;
}

Status FederatedClient::PullShard(int shard, std::optional<int64_t> min_version, PulledSlice* out) {
  const SliceRange range = slices_[shard];
  const int64_t n = range.size();
  std::span<float> dest = update_path_->PullBuffer().subspan(static_cast<size_t>(range.begin), static_cast<size_t>(n));
  ShardChannel& ch = Channel(shard);
  const ShardAddress addr = directory_[shard];
  Backoff backoff(cfg_.client.retry_initial_ms, cfg_.client.retry_max_ms, 2.0,
                  options_.backoff_seed ? options_.backoff_seed + shard : 0);
  int unavailable = 0, restarts = 0;
  int64_t bytes = 0;  // over every attempt
  auto retry = [&](const Status& s, std::optional<int64_t> after) -> Status {
    if (++unavailable >= options_.unavailable_attempts) return s;
    if (!SleepMs(backoff.NextDelayMs(after))) return Aborted("stopped");
    return Status::Ok();
  };
  for (;;) {
    if (Stopping()) return Aborted("stopped");
    auto st = ch.GetStatus();
    if (!st.ok()) {
      if (st.status().code() != StatusCode::kUnavailable) return st.status();
      RETURN_IF_ERROR(retry(st.status(), ch.last_error().retry_after_ms));
      continue;
    }
    if (st->run_id != cfg_.run.id || st->layout_hash != identity_.layout_hash || st->shard_index != shard ||
        st->num_shards != static_cast<int>(slices_.size())) {
      return FailedPrecondition("shard at " + ch.address() + " is shard " + std::to_string(st->shard_index) + "/" +
                                std::to_string(st->num_shards) + " of run \"" + st->run_id + "\" layout " +
                                st->layout_hash.substr(0, 12) + ", expected shard " + std::to_string(shard) + "/" +
                                std::to_string(slices_.size()) + " of run \"" + cfg_.run.id + "\" layout " +
                                identity_.layout_hash.substr(0, 12));
    }
    if (st->slice_begin != range.begin || st->slice_elements != n) {
      return FailedPrecondition("shard " + std::to_string(shard) + " holds [" + std::to_string(st->slice_begin) +
                                ", +" + std::to_string(st->slice_elements) + ") but the partition says [" +
                                std::to_string(range.begin) + ", +" + std::to_string(n) + ")");
    }
    if (st->state == rpc::ShardState::HALTED) {
      return DataLoss("shard " + std::to_string(shard) + " is HALTED (operator needed; see its log)");
    }
    if (st->state != rpc::ShardState::SERVING) {
      RETURN_IF_ERROR(retry(Unavailable("shard " + std::to_string(shard) + " is not serving yet"), std::nullopt));
      continue;
    }
    const int64_t E = st->frame_elements;
    if (E < 1 || static_cast<uint64_t>(E) > kMaxFrameElements) {
      return FailedPrecondition("shard " + std::to_string(shard) + " announces frame_elements " + std::to_string(E));
    }
    const std::string codec_name = options_.pull_codec;
    if (std::find(st->codecs.begin(), st->codecs.end(), codec_name) == st->codecs.end()) {
      return FailedPrecondition("shard " + std::to_string(shard) + " cannot encode pulls in codec " + codec_name);
    }
    const int64_t total_frames = (n + E - 1) / E;

    // Frame 0 names the version (waiting for min_version if asked); frames 1 .. N-2 are
    // pulled at that version over client.streams_per_shard connections at once (frame k on
    // connection k mod S), so a link's round trip is paid once per S frames; the last frame
    // comes last, as the shard releases a pull's snapshot soon after it (docs/protocol.md).
    rpc::PullRequest req;
    req.header = MakeHeader(cfg_.run.id, identity_.layout_hash, shard, addr.epoch, options_.name);
    req.codec = codec_name;
    if (min_version) {
      req.__set_min_version(*min_version);
      req.__set_wait_ms(static_cast<int32_t>(std::min<int64_t>(10000, options_.shard_call_timeout.count() / 2)));
    }
    const PullShape shape{shard, n, E, total_frames};
    std::atomic<bool> abort{false};
    int64_t version = -1;
    FramesPulled first = PullFrames(shape, 0, req, {0}, &version, dest, abort);
    bool restart = first.restart;
    if (!first.status.ok()) return first.status;
    bytes += first.bytes;
    if (!restart && total_frames > 1) {
      req.__isset.min_version = false;
      req.__isset.wait_ms = false;
      req.__set_version(version);
      const int streams = static_cast<int>(std::clamp<int64_t>(total_frames - 2, 1, StreamsPerShard()));
      std::vector<std::vector<int64_t>> parts(static_cast<size_t>(streams));
      for (int64_t k = 1; k + 1 < total_frames; ++k) parts[static_cast<size_t>(k % streams)].push_back(k);
      std::vector<FramesPulled> results(static_cast<size_t>(streams));
      auto run = [&](int j) {
        int64_t v = version;
        try {
          results[j] = PullFrames(shape, j, req, parts[j], &v, dest, abort);
        } catch (const std::exception& e) {
          results[j].status = Internal(std::string("pull stream: ") + e.what());
        }
        if (!results[j].status.ok() || results[j].restart) abort = true;
      };
      std::vector<std::thread> extra;
      for (int j = 1; j < streams; ++j) extra.emplace_back(run, j);
      run(0);
      for (auto& t : extra) t.join();
      for (const FramesPulled& r : results) {
        if (!r.status.ok()) return r.status;
        restart = restart || r.restart;
        bytes += r.bytes;
      }
      if (!restart) {
        FramesPulled last = PullFrames(shape, 0, req, {total_frames - 1}, &version, dest, abort);
        if (!last.status.ok()) return last.status;
        restart = last.restart;
        bytes += last.bytes;
      }
    }
    if (restart) {
      if (++restarts > 20) return Unavailable("shard " + std::to_string(shard) + ": the pull's snapshot expired 20 times");
      continue;  // pull again from frame 0
    }
    if (restart) continue;
    int64_t bad = FirstNonFinite(dest);
    if (bad >= 0) {
      return DataLoss("shard " + std::to_string(shard) + " served a non-finite parameter at slice element " +
                      std::to_string(bad) + " (version " + std::to_string(version) + ")");
    }
    out->version = version;
    out->frame_elements = E;
    out->bytes = bytes;
    return Status::Ok();
  }
}

Status FederatedClient::PullAll(std::optional<int64_t> min_version, std::vector<PulledSlice>* out) {
  const int n = static_cast<int>(slices_.size());
  for (int round = 0;; ++round) {
    RETURN_IF_ERROR(RefreshDirectory(/*wait_for_all=*/true));
    out->assign(n, PulledSlice{});
    std::vector<Status> results(n);
    std::vector<std::thread> workers;
    workers.reserve(n);
    for (int i = 0; i < n; ++i) {
      workers.emplace_back([this, i, min_version, &results, out] {
        try {
          results[i] = PullShard(i, min_version, &(*out)[i]);
        } catch (const std::exception& e) {
          results[i] = Internal(std::string("pull worker: ") + e.what());
        }
      });
    }
    for (auto& w : workers) w.join();
    bool again = false;
    for (int i = 0; i < n; ++i) {
      const Status& s = results[i];
      if (s.ok()) continue;
      if (Stopping()) return Aborted("stopped");
      // Transport trouble or a fenced epoch: the shard may have moved; re-read the directory.
      if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kAborted) {
        LOG(WARNING) << "pull: " << s.message() << "; re-reading the shard directory";
        again = true;
        continue;
      }
      return s;
    }
    if (!again) return Status::Ok();
    if (!SleepMs(std::min<int64_t>(cfg_.client.retry_max_ms, cfg_.client.retry_initial_ms << std::min(round, 5)))) {
      return Aborted("stopped");
    }
  }
}

// ---- training ---------------------------------------------------------------------------

Status FederatedClient::TrainLocal(TrainFigures* out) {
  const ClientOptions& co = cfg_.client;
  const bool timed = co.local_time_s > 0;
  const int64_t max_steps = timed ? INT64_MAX : co.local_steps;
  // Small chunks keep a stop request and the throttle responsive; one step per chunk when
  // throttled, so that every step is slowed.
  const int64_t chunk = co.throttle > 1.0 ? 1 : std::max<int64_t>(1, std::min<int64_t>(cfg_.train.log_every, 50));
  const auto start = SteadyClock::now();
  double loss_sum = 0;
  while (out->steps < max_steps) {
    if (Stopping()) {
      out->stopped = true;
      break;
    }
    double budget = 0;
    if (timed) {
      budget = co.local_time_s - SecondsSince(start);
      if (budget <= 0) break;
    }
    const auto t0 = SteadyClock::now();
    auto run = trainer_->Run(std::min(chunk, max_steps - out->steps), budget);
    if (!run.ok() && run.status().message().find("out of memory") != std::string::npos) {
      // Nothing of this update was saved: the state folder and a pending update are intact.
      return FailedPrecondition("the training device ran out of memory at train.micro_batch = " +
                                std::to_string(cfg_.train.micro_batch) + ", train.seq_len = " +
                                std::to_string(cfg_.train.seq_len) +
                                ": lower train.micro_batch (raise train.grad_accum to keep the batch) or the "
                                "model size; " + run.status().message());
    }
    ASSIGN_OR_RETURN(TrainResult r, std::move(run));
    const double dt = SecondsSince(t0);
    out->steps += r.steps;
    out->tokens += r.tokens;
    loss_sum += r.mean_loss * static_cast<double>(r.steps);
    if (!std::isfinite(r.mean_loss)) {
      return FailedPrecondition("local training diverged (loss " + std::to_string(r.mean_loss) +
                                "); lower train.lr or check the data");
    }
    if (co.throttle > 1.0 && r.steps > 0) {
      SleepMs(static_cast<int64_t>((co.throttle - 1.0) * dt * 1000.0));
    }
    if (r.stopped_by_budget || r.steps == 0) break;
  }
  out->seconds = SecondsSince(start);
  out->loss = out->steps > 0 ? loss_sum / static_cast<double>(out->steps) : 0;
  return Status::Ok();
}

StatusOr<Codec*> FederatedClient::PushCodec(int64_t frame_elements) {
  for (auto& c : push_codecs_) {
    if (c->options().chunk_elements == frame_elements) return c.get();
  }
  CodecOptions o;
  o.kind = push_kind_;
  o.zstd_level = static_cast<int>(cfg_.compression.zstd_level);
  o.threads = static_cast<int>(cfg_.compression.threads);
  o.int8_block = static_cast<int>(cfg_.compression.int8_block);
  o.topk_density = cfg_.compression.topk_density;
  o.chunk_elements = frame_elements;
  ASSIGN_OR_RETURN(auto codec, Codec::Create(o));
  push_codecs_.push_back(std::move(codec));
  return push_codecs_.back().get();
}

Status FederatedClient::PullBase(Base* out, std::optional<int64_t> min_version) {
  const auto t = SteadyClock::now();
  RETURN_IF_ERROR(PullAll(min_version, &out->slices));
  out->pull_s = SecondsSince(t);
  return Status::Ok();
}

Status FederatedClient::CheckDiskSpace(bool optimizer_due) {
  const int64_t params = model_->layout().total_numel();
  // What the next cycle writes at most (client/client_state.h): the pending update (below
  // 2 bytes a value for bf16 + zstd; 4 for fp32, int8 far less) and, when due, a new
  // optimizer file (8 bytes a value) beside the old one.
  const int64_t pending = (push_kind_ == CodecKind::kFp32 ? 4 : 2) * params + (int64_t{1} << 20);
  const int64_t optimizer = optimizer_due ? 8 * params + (int64_t{1} << 20) : 0;
  const int64_t margin = cfg_.client.min_free_disk_mb << 20;
  ASSIGN_OR_RETURN(int64_t free, store_->FreeBytes());
  if (free >= pending + optimizer + margin) return Status::Ok();
  auto mb = [](int64_t b) { return std::to_string(b >> 20) + " MB"; };
  return FailedPrecondition("state folder " + state_dir_ + " has " + mb(free) + " free; the next update needs " +
                            mb(pending) + " for its frames" + (optimizer_due ? " + " + mb(optimizer) + " for the optimizer moments" : "") +
                            " + client.min_free_disk_mb (" + mb(margin) + "): free disk space, or save the moments "
                            "less often (client.optimizer_save_every)");
}

Status FederatedClient::SaveOptimizer() {
  if (cfg_.client.optimizer_save_every <= 0) return Status::Ok();
  return store_->SaveOptimizer(trainer_->OptimizerState()).WithContext("saving the optimizer moments");
}

void FederatedClient::Communicate(CommJob* job) {
  try {
    ClientState& next = job->next;
    PendingUpdate& u = *next.pending;
    // zstd per shard slice on the codecs' threads.
    const auto t_code = SteadyClock::now();
    uint64_t bytes = 0, raw = 0;
    for (size_t i = 0; i < slices_.size(); ++i) {
      const SliceRange r = slices_[i];
      PendingShard& s = u.shards[i];
      auto codec = PushCodec(s.frame_elements);
      if (!codec.ok()) {
        job->outcome = codec.status();
        return;
      }
      StatusOr<std::vector<std::string>> frames =
          update_path_->device_rounding()
              ? (*codec)->EncodeBf16Bits(update_path_->Bf16Bits(r.begin, r.size()))
              : (*codec)->Encode(update_path_->Values(r.begin, r.size()), update_path_->HostResidual(r.begin, r.size()));
      if (!frames.ok()) {
        job->outcome = frames.status().WithContext("encoding shard " + std::to_string(i));
        return;
      }
      s.frames = std::move(frames).value();
      bytes += Codec::TotalBytes(s.frames);
      raw += 4 * static_cast<uint64_t>(r.size());
    }
    u.info["compress_s"] = SecondsSince(t_code);
    u.info["encode_s"] = u.info.value("quantize_s", 0.0) + SecondsSince(t_code);
    u.info["bytes_encoded"] = bytes;
    u.info["bytes_fp32"] = raw;
    const auto t_save = SteadyClock::now();
    u.info["state_s"] = u.info.value("optimizer_save_s", 0.0);
    Status saved = store_->Save(next).WithContext("saving client state");
    if (!saved.ok()) {
      job->outcome = saved;
      return;
    }
    u.info["state_s"] = u.info.value("optimizer_save_s", 0.0) + SecondsSince(t_save);
    state_ = std::move(next);
    job->outcome = FinishPending();
    if (!job->outcome.ok() || *job->outcome == Outcome::kStopped || !job->pull_after) return;
    // A committed update is in the model pulled next: wait (on the shards) until it is applied.
    std::optional<int64_t> min_version;
    if (*job->outcome == Outcome::kCommitted) min_version = stats_.last_seq;
    if (sync_mode() && *job->outcome == Outcome::kDropped) {
      // Dropped from a closed round: train the open round, from its base version.
      auto open = registry_->CurrentRound();
      if (open.ok()) min_version = open->base_version;
    }
    Status pulled = sync_mode() && min_version ? WaitForRound(*min_version) : Status::Ok();
    if (pulled.ok()) pulled = PullBase(&job->pulled, min_version);
    if (pulled.ok()) {
      job->did_pull = true;
    } else if (!Stopping()) {
      job->outcome = pulled;
    }
  } catch (const std::exception& e) {
    job->outcome = Internal(std::string("communication: ") + e.what());
  }
}

Status FederatedClient::RunTrainer() {
  const int64_t max_updates = cfg_.client.max_updates;
  const int64_t save_every = cfg_.client.optimizer_save_every;
  const bool pipelined = cfg_.client.pipeline_depth > 0;
  if (state_.pending) {
    ASSIGN_OR_RETURN(Outcome o, FinishPending());
    if (o == Outcome::kStopped) return Status::Ok();
  }
  Base base;                 // what the model in training was pulled as
  Base fresh;                // the pull buffer's contents, when newer than `base`
  bool buffer_fresh = false;
  int64_t committed = stats_.committed;  // as of the last time no job ran
  int64_t cycles = 0;
  std::unique_ptr<CommJob> job;  // the update being communicated, if any
  std::thread comm;
  auto wait_job = [&]() -> Status {
    if (!job) return Status::Ok();
    if (comm.joinable()) comm.join();
    std::unique_ptr<CommJob> done = std::move(job);
    committed = stats_.committed;
    if (done->did_pull) {
      fresh = std::move(done->pulled);
      buffer_fresh = true;
    }
    if (!done->outcome.ok()) return done->outcome.status();
    if (*done->outcome == Outcome::kStopped) stopping_ = true;
    return Status::Ok();
  };
  auto load_model = [&](int64_t counter) -> Status {
    if (!buffer_fresh) {
      // Sync mode: the round of the last commit (a restart's) closes first, and the model
      // trained is the open round's base version.
      std::optional<int64_t> min_version;
      if (sync_mode()) {
        const int64_t last_seq = state_.totals.value("last_seq", int64_t{0});
        if (last_seq > 0) {
          RETURN_IF_ERROR(WaitForRound(last_seq));
          min_version = last_seq;
        }
        auto open = registry_->CurrentRound();
        if (open.ok()) min_version = std::max(min_version.value_or(0), open->base_version);
      }
      Status p = PullBase(&fresh, min_version);
      if (!p.ok()) return p;
    }
    RETURN_IF_ERROR(update_path_->LoadPulled(model_->flat_params()));
    base = std::move(fresh);
    buffer_fresh = false;
    int64_t lo = INT64_MAX, hi = 0;
    for (const auto& p : base.slices) lo = std::min(lo, p.version), hi = std::max(hi, p.version);
    if (cfg_.client.reset_inner_optimizer) trainer_->ResetOptimizer();
    if (cfg_.train.schedule_clock == "federation") {
      // The inner lr follows the federation's committed steps (model/trainer.h).
      RETURN_IF_ERROR(trainer_->SetScheduleStep(FederationScheduleStep(lo, cfg_.client.local_steps)));
    }
    LOG(INFO) << "training update " << counter << " from versions " << lo << ".." << hi << " (pulled in "
              << base.pull_s << " s)";
    return Status::Ok();
  };

  auto loop = [&]() -> Status {
  Status result = load_model(state_.next_counter);
  while (result.ok() && !Stopping()) {
    const int64_t in_flight = job ? 1 : 0;
    if (max_updates > 0 && committed + in_flight >= max_updates) {
      if (in_flight == 0) break;
      result = wait_job();  // a drop would leave the budget unspent
      if (result.ok() && committed < max_updates && !Stopping()) result = load_model(state_.next_counter);
      continue;
    }
    const bool optimizer_due = save_every > 0 && (cycles + 1) % save_every == 0;
    result = CheckDiskSpace(optimizer_due);
    if (!result.ok()) break;
    TrainFigures tf;
    result = TrainLocal(&tf);
    if (!result.ok() || tf.stopped) break;  // abandoned: the saved cursor replays this data
    if (tf.steps == 0) {
      result = FailedPrecondition("local training made no step");
      break;
    }
    // The pipeline has one slot: the previous update must be settled before this one.
    const auto t_wait = SteadyClock::now();
    result = wait_job();
    if (!result.ok() || Stopping()) break;
    const double wait_s = SecondsSince(t_wait);
    const auto t_quant = SteadyClock::now();
    result = update_path_->Quantize(model_->flat_params());
    if (!result.ok()) break;
    const double quantize_s = SecondsSince(t_quant);
    ++cycles;

    auto next = std::make_unique<CommJob>();
    next->next = state_;
    PendingUpdate u;
    const int64_t epoch = CurrentEpoch();
    u.client_epoch = epoch;
    u.counter = state_.next_counter;
    u.update_id = options_.name + "/" + std::to_string(epoch) + "/" + std::to_string(u.counter);
    int64_t base_version = INT64_MAX, max_version = 0, pull_bytes = 0;
    for (const auto& p : base.slices) {
      base_version = std::min(base_version, p.version);
      max_version = std::max(max_version, p.version);
      pull_bytes += p.bytes;
      u.pulled_versions.push_back(p.version);
    }
    u.base_version = base_version;
    u.tokens = tf.tokens;
    u.local_steps = tf.steps;
    u.codec = std::string(CodecKindName(push_kind_));
    for (size_t i = 0; i < slices_.size(); ++i) {
      PendingShard s;
      s.shard = static_cast<int>(i);
      s.slice_begin = slices_[i].begin;
      s.slice_elements = slices_[i].size();
      s.frame_elements = base.slices[i].frame_elements;
      u.shards.push_back(std::move(s));
    }
    double optimizer_save_s = 0;
    if (optimizer_due) {
      const auto t_opt = SteadyClock::now();
      result = SaveOptimizer();
      if (!result.ok()) break;
      optimizer_save_s = SecondsSince(t_opt);
    }
    u.info = {{"train_loss", tf.loss},
              {"train_s", tf.seconds},
              {"pull_s", base.pull_s},
              {"wait_s", wait_s},
              {"quantize_s", quantize_s},
              {"optimizer_save_s", optimizer_save_s},
              {"tokens_per_s", tf.seconds > 0 ? double(tf.tokens) / tf.seconds : 0.0},
              {"pull_bytes", pull_bytes},
              {"max_pulled_version", max_version},
              {"pipelined", pipelined}};
    next->next.pending = std::move(u);
    next->next.next_counter = state_.next_counter + 1;
    next->next.trainer_step = trainer_->global_step();
    next->next.loader = loader_->state();
    next->pull_after = max_updates == 0 || committed + 1 < max_updates;
    job = std::move(next);
    if (pipelined) {
      // Train the next update from the newest model we hold while this one travels.
      if (!buffer_fresh) fresh = base;  // the first cycle: nothing newer pulled yet
      buffer_fresh = true;
      result = load_model(job->next.next_counter);
      if (!result.ok()) break;
      comm = std::thread([this, j = job.get()] { Communicate(j); });
    } else {
      Communicate(job.get());
      result = wait_job();
      if (result.ok() && !Stopping() && (max_updates == 0 || committed < max_updates)) {
        result = load_model(state_.next_counter);
      }
    }
  }
  return result;
  };
  Status result;
  try {
    result = loop();
  } catch (const std::exception& e) {  // LibTorch (a CUDA error, say): settle the job first
    result = Internal(std::string("client: ") + e.what());
  }
  Status settled = wait_job();
  if (result.ok()) result = settled;
  // An interrupted pull or push while stopping is a clean stop, not an error.
  if (!result.ok() && Stopping() && result.code() == StatusCode::kAborted) result = Status::Ok();
  if (result.ok() && Stopping() && cycles > 0) {
    Status s = SaveOptimizer();  // a clean stop keeps the newest moments
    if (!s.ok()) LOG(WARNING) << s.message();
  }
  return result;
}

// ---- push and commit --------------------------------------------------------------------

FederatedClient::PushResult FederatedClient::PushFrames(const PendingUpdate& u, const PendingShard& slice,
                                                        int stream, const std::vector<int64_t>& frames,
                                                        std::vector<int64_t>* missing, const std::atomic<bool>& done) {
  PushResult res;
  const int shard = slice.shard;
  ShardChannel& ch = Channel(shard, stream);
  Backoff backoff(cfg_.client.retry_initial_ms, cfg_.client.retry_max_ms, 2.0,
                  options_.backoff_seed ? options_.backoff_seed + 100 + shard * 64 + stream : 0);
  rpc::PushRequest req;
  req.header = MakeHeader(cfg_.run.id, identity_.layout_hash, shard, directory_[shard].epoch, options_.name);
  req.update_id = u.update_id;
  req.client_id = options_.name;
  req.client_epoch = u.client_epoch;
  req.base_version = u.base_version;
  req.tokens = u.tokens;
  req.local_steps = u.local_steps;
  req.codec = u.codec;
  req.total_frames = static_cast<int64_t>(slice.frames.size());
  req.frame_elements = slice.frame_elements;
  int unavailable = 0, data_loss = 0;
  for (int64_t k : frames) {
    if (done) return res;  // another stream saw the update staged
    req.frame_index = k;
    req.frame = slice.frames[k];
    for (;;) {
      if (Stopping()) {
        res.status = Aborted("stopped");
        return res;
      }
      auto r = ch.Push(req);
      if (r.ok()) {
        res.state = r->state;
        res.shard_version = r->version;
        if (r->__isset.seq) res.seq = r->seq;
        res.bytes += static_cast<int64_t>(slice.frames[k].size());
        if (r->__isset.missing_frames) *missing = r->missing_frames;
        backoff.Reset();
        unavailable = 0;
        break;
      }
      const int code = LastCode(ch);
      if (r.status().code() == StatusCode::kUnavailable) {
        if (++unavailable >= options_.unavailable_attempts ||
            !SleepMs(backoff.NextDelayMs(ch.last_error().retry_after_ms))) {
          res.status = r.status().WithContext("push to shard " + std::to_string(shard));
          return res;
        }
        continue;
      }
      if (code == rpc::ErrorCode::DATA_LOSS && ++data_loss <= 5) continue;  // resend the frame
      if (ch.last_error().version) res.shard_version = *ch.last_error().version;
      res.status = r.status().WithContext("push to shard " + std::to_string(shard));
      return res;
    }
    if (IsFinalState(res.state)) return res;  // staged (or further): the rest is not needed
  }
  return res;
}

FederatedClient::PushResult FederatedClient::PushShard(const PendingUpdate& u, const PendingShard& slice) {
  // client.streams_per_shard connections push interleaved frames at once, so a link with
  // latency is not one frame per round trip; the shard accepts a frame once whichever
  // connection brings it (docs/protocol.md).
  const int shard = slice.shard;
  const int64_t total_frames = static_cast<int64_t>(slice.frames.size());
  const int streams = static_cast<int>(std::min<int64_t>(StreamsPerShard(), std::max<int64_t>(1, total_frames)));
  PushResult res;
  std::vector<int64_t> todo;
  for (int64_t k = 0; k < total_frames; ++k) todo.push_back(k);
  for (int round = 0; round < 4 && !todo.empty(); ++round) {
    std::vector<std::vector<int64_t>> parts(streams), missing(streams);
    for (size_t i = 0; i < todo.size(); ++i) parts[i % streams].push_back(todo[i]);
    std::vector<PushResult> results(streams);
    std::atomic<bool> done{false};
    auto run = [&](int j) {
      try {
        results[j] = PushFrames(u, slice, j, parts[j], &missing[j], done);
      } catch (const std::exception& e) {
        results[j].status = Internal(std::string("push stream: ") + e.what());
      }
      if (results[j].status.ok() && IsFinalState(results[j].state)) done = true;
    };
    std::vector<std::thread> extra;
    for (int j = 1; j < streams; ++j) extra.emplace_back(run, j);
    run(0);
    for (auto& t : extra) t.join();
    std::set<int64_t> again;
    for (int j = 0; j < streams; ++j) {
      const PushResult& r = results[j];
      res.bytes += r.bytes;
      res.shard_version = std::max(res.shard_version, r.shard_version);
      if (r.seq) res.seq = r.seq;
      if (!r.status.ok() && res.status.ok()) res.status = r.status;
      if (r.status.ok()) res.state = std::max(res.state, r.state);  // RECEIVING < STAGED < ... (the IDL)
      again.insert(missing[j].begin(), missing[j].end());
    }
    if (!res.status.ok() || IsFinalState(res.state)) return res;
    // RECEIVING after every frame went out: resend what the shard reported missing.
    todo.assign(again.begin(), again.end());
  }
  res.status = DataLoss("shard " + std::to_string(shard) + " still misses frames of " + u.update_id);
  return res;
}

void FederatedClient::PushAll(const PendingUpdate& u, std::vector<PushResult>* results) {
  const size_t n = u.shards.size();
  results->assign(n, PushResult{});
  std::vector<std::thread> workers;
  workers.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    workers.emplace_back([this, &u, i, results] {
      try {
        (*results)[i] = PushShard(u, u.shards[i]);
      } catch (const std::exception& e) {
        (*results)[i].status = Internal(std::string("push worker: ") + e.what());
      }
    });
  }
  for (auto& w : workers) w.join();
}

void FederatedClient::NotifyAll(const std::string& update_id, int64_t seq) {
  const size_t n = slices_.size();
  std::vector<std::thread> workers;
  for (size_t i = 0; i < n; ++i) {
    workers.emplace_back([this, i, &update_id, seq] {
      rpc::CommitNotice notice;
      notice.header = MakeHeader(cfg_.run.id, identity_.layout_hash, static_cast<int>(i), directory_[i].epoch,
                                 options_.name);
      notice.update_id = update_id;
      notice.seq = seq;
      Status s = Channel(static_cast<int>(i)).CommitNotify(notice);
      // A hint only: shards read the commit log themselves.
      if (!s.ok()) LOG(WARNING) << "commit_notify to shard " << i << ": " << s.message();
    });
  }
  for (auto& w : workers) w.join();
}

Status FederatedClient::DropPending(const std::string& reason) {
  const PendingUpdate& u = *state_.pending;
  LOG(WARNING) << "update " << u.update_id << " dropped: " << reason;
  RETURN_IF_ERROR(metrics_->Write("update_dropped", {{"update_id", u.update_id},
                                                     {"base_version", u.base_version},
                                                     {"tokens", u.tokens},
                                                     {"steps", u.local_steps},
                                                     {"reason", reason}}));
  std::fprintf(stderr, "[client %s] update %s dropped: %s\n", options_.name.c_str(), u.update_id.c_str(),
               reason.c_str());
  ClientState next = CopyWithoutPending(state_);
  next.totals["dropped"] = next.totals.value("dropped", int64_t{0}) + 1;
  RETURN_IF_ERROR(store_->Save(next));
  state_ = std::move(next);
  ++stats_.dropped;
  return Status::Ok();
}

Status FederatedClient::WaitForRound(int64_t seq) {
  const int64_t round = seq - 1;  // round v makes version v + 1
  const auto start = SteadyClock::now();
  auto last_line = start - std::chrono::hours(1);
  Backoff backoff(cfg_.client.retry_initial_ms, cfg_.client.retry_max_ms, 2.0, options_.backoff_seed);
  for (;;) {
    if (Stopping()) return Aborted("stopped");
    auto r = registry_->CurrentRound();
    if (r.ok() && r->base_version > round) break;  // closed: a later round is open
    if (!r.ok() && r.status().code() != StatusCode::kUnavailable) {
      return r.status().WithContext("waiting for round " + std::to_string(round));
    }
    if (r.ok() && SteadyClock::now() - last_line >= std::chrono::seconds(5)) {
      last_line = SteadyClock::now();
      std::string waiting;
      for (const auto& name : r->waiting_for) waiting += (waiting.empty() ? "" : ", ") + name;
      std::fprintf(stderr, "[client %s] waiting for round %ld to close: %ld of %ld updates%s, timeout in %.1f s\n",
                   options_.name.c_str(), long(round), long(r->committed), long(r->expected),
                   waiting.empty() ? "" : (" (waiting for " + waiting + ")").c_str(),
                   double(std::max<int64_t>(0, r->deadline_ms - r->now_ms)) / 1000.0);
    }
    if (!SleepMs(r.ok() ? 100 : backoff.NextDelayMs())) return Aborted("stopped");
  }
  const double waited = SecondsSince(start);
  if (waited >= 1.0) {
    std::fprintf(stderr, "[client %s] round %ld closed after %.1f s\n", options_.name.c_str(), long(round), waited);
  }
  return metrics_->Write("round_wait", {{"round", round}, {"seq", seq}, {"wait_s", waited}});
}

Status FederatedClient::ClearPendingCommitted(int64_t seq, double push_s, double commit_s, int64_t bytes_sent) {
  const PendingUpdate& u = *state_.pending;
  const nlohmann::json info = u.info;  // a copy: state_ is replaced below
  const double raw = info.value("bytes_fp32", 0.0);
  const double encoded = info.value("bytes_encoded", 0.0);
  const int64_t staleness = seq - 1 - u.base_version;  // applied at version seq - 1
  const int64_t committed = state_.totals.value("committed", int64_t{0}) + 1;
  nlohmann::json rec = {{"update_id", u.update_id},
                        {"n", committed},
                        {"seq", seq},
                        {"base_version", u.base_version},
                        {"pulled_versions", u.pulled_versions},
                        {"staleness", staleness},
                        {"tokens", u.tokens},
                        {"steps", u.local_steps},
                        {"train_loss", info.value("train_loss", 0.0)},
                        {"tokens_per_s", info.value("tokens_per_s", 0.0)},
                        {"bytes_sent", bytes_sent},
                        {"bytes_encoded", encoded},
                        {"bytes_fp32", raw},
                        {"compression_ratio", encoded > 0 ? raw / encoded : 0.0},
                        {"pull_s", info.value("pull_s", 0.0)},
                        {"train_s", info.value("train_s", 0.0)},
                        {"encode_s", info.value("encode_s", 0.0)},
                        {"push_s", push_s},
                        {"commit_s", commit_s},
                        {"wait_s", info.value("wait_s", 0.0)},
                        {"quantize_s", info.value("quantize_s", 0.0)},
                        {"compress_s", info.value("compress_s", 0.0)},
                        {"state_s", info.value("state_s", 0.0)},
                        {"pipelined", info.value("pipelined", false)},
                        {"epoch", CurrentEpoch()}};
  if (sync_mode()) rec["round"] = seq - 1;
  RETURN_IF_ERROR(metrics_->Write("update", rec));
  std::fprintf(stderr,
               "[client %s] update %ld  seq %ld  loss %.4f  %s tok/s  sent %s  ratio %.2fx  staleness %ld  "
               "(pull %.1fs train %.1fs push %.1fs)\n",
               options_.name.c_str(), long(committed), long(seq), info.value("train_loss", 0.0),
               Rate(info.value("tokens_per_s", 0.0)).c_str(), Bytes(double(bytes_sent)).c_str(),
               encoded > 0 ? raw / encoded : 0.0, long(staleness), info.value("pull_s", 0.0),
               info.value("train_s", 0.0), push_s);
  ClientState next = CopyWithoutPending(state_);
  next.totals["committed"] = committed;
  next.totals["staleness_sum"] = next.totals.value("staleness_sum", int64_t{0}) + staleness;
  next.totals["tokens"] = next.totals.value("tokens", int64_t{0}) + u.tokens;
  next.totals["last_seq"] = seq;
  RETURN_IF_ERROR(store_->Save(next));
  state_ = std::move(next);
  ++stats_.committed;
  stats_.last_seq = seq;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    const double staleness_sum = static_cast<double>(state_.totals.value("staleness_sum", int64_t{0}));
    heartbeat_stats_ = {{"committed", committed},
                        {"updates", committed},
                        {"mean_staleness", committed > 0 ? staleness_sum / static_cast<double>(committed) : 0.0},
                        {"last_seq", seq},
                        {"tokens", state_.totals.value("tokens", int64_t{0})},
                        {"tokens_per_s", info.value("tokens_per_s", 0.0)},
                        {"train_loss", info.value("train_loss", 0.0)}};
  }
  return Status::Ok();
}

StatusOr<FederatedClient::Outcome> FederatedClient::FinishPending() {
  const PendingUpdate& u = *state_.pending;
  const auto t_push = SteadyClock::now();
  int64_t bytes_sent = 0;
  Backoff commit_backoff(cfg_.client.retry_initial_ms, cfg_.client.retry_max_ms, 2.0, options_.backoff_seed);

  // Committed already (a restart or a lost reply)?
  auto known = registry_->LookupCommit(u.update_id);
  if (known.ok()) {
    LOG(INFO) << "update " << u.update_id << " was already committed as seq " << known->seq;
    RETURN_IF_ERROR(ClearPendingCommitted(known->seq, 0, 0, 0));
    return Outcome::kCommitted;
  }

  for (int round = 0; round < options_.max_push_rounds; ++round) {
    if (Stopping()) return Outcome::kStopped;
    Status dir = RefreshDirectory(/*wait_for_all=*/true);
    if (!dir.ok()) {
      if (Stopping()) return Outcome::kStopped;
      return dir;
    }
    for (const auto& s : u.shards) {
      if (s.shard < 0 || static_cast<size_t>(s.shard) >= slices_.size() || s.slice_begin != slices_[s.shard].begin ||
          s.slice_elements != slices_[s.shard].size()) {
        RETURN_IF_ERROR(DropPending("its slices do not match the current partition"));
        return Outcome::kDropped;
      }
    }
    std::vector<PushResult> results;
    PushAll(u, &results);
    for (const auto& r : results) bytes_sent += r.bytes;
    if (Stopping()) return Outcome::kStopped;

    bool retry_round = false;
    std::optional<int64_t> seq;
    for (size_t i = 0; i < results.size(); ++i) {
      const PushResult& r = results[i];
      if (r.status.ok()) {
        if (r.seq && r.state != rpc::UpdateState::STAGED) seq = r.seq;
        continue;
      }
      switch (r.status.code()) {
        case StatusCode::kOutOfRange:  // STALE_REFUSED: final
          RETURN_IF_ERROR(DropPending("too stale: " + r.status.message()));
          return Outcome::kDropped;
        case StatusCode::kInvalidArgument:  // BAD_REQUEST: retrying the same bytes fails the same way
          RETURN_IF_ERROR(DropPending("refused: " + r.status.message()));
          return Outcome::kDropped;
        case StatusCode::kFailedPrecondition:  // IDENTITY_MISMATCH: wrong run or config
          return r.status;
        case StatusCode::kUnavailable:
        case StatusCode::kAborted:  // FENCED: re-read the directory
        case StatusCode::kDataLoss:
        case StatusCode::kNotFound:
        case StatusCode::kInternal:
          LOG(WARNING) << r.status.message() << "; pushing again";
          retry_round = true;
          break;
        default:
          return r.status;
      }
    }
    if (seq) {  // a shard already knows the commit (e.g. the commit reply was lost)
      auto c = registry_->LookupCommit(u.update_id);
      if (c.ok()) {
        NotifyAll(u.update_id, c->seq);
        RETURN_IF_ERROR(ClearPendingCommitted(c->seq, SecondsSince(t_push), 0, bytes_sent));
        return Outcome::kCommitted;
      }
    }
    if (retry_round) {
      if (!SleepMs(commit_backoff.NextDelayMs())) return Outcome::kStopped;
      continue;
    }

    // Every shard staged the update: commit it through the registry.
    const auto t_commit = SteadyClock::now();
    const double push_s = std::chrono::duration<double>(t_commit - t_push).count();
    nlohmann::json meta = {{"base_version", u.base_version}, {"pulled_versions", u.pulled_versions},
                           {"tokens", u.tokens},             {"local_steps", u.local_steps},
                           {"codec", u.codec},               {"client_epoch", u.client_epoch},
                           {"train_loss", u.info.value("train_loss", 0.0)}};
    for (;;) {
      if (Stopping()) return Outcome::kStopped;
      const int64_t epoch = CurrentEpoch();
      auto c = sync_mode() ? registry_->CommitToRound(u.update_id, options_.name, epoch, meta,
                                                      static_cast<int>(slices_.size()), u.base_version,
                                                      RoundOptionsFromConfig(cfg_.ps))
                           : registry_->CommitUpdate(u.update_id, options_.name, epoch, meta,
                                                     static_cast<int>(slices_.size()), u.base_version,
                                                     cfg_.ps.max_staleness);
      if (c.ok()) {
        NotifyAll(u.update_id, *c);
        RETURN_IF_ERROR(ClearPendingCommitted(*c, push_s, SecondsSince(t_commit), bytes_sent));
        return Outcome::kCommitted;
      }
      const Status& s = c.status();
      if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded) {
        LOG(WARNING) << "commit of " << u.update_id << ": " << s.message() << "; retrying";
        if (!SleepMs(commit_backoff.NextDelayMs())) return Outcome::kStopped;
        continue;
      }
      if (s.code() == StatusCode::kAborted) {  // our membership was fenced: join again, retry
        RETURN_IF_ERROR(Rejoin(registry_.get(), epoch));
        continue;
      }
      if (s.code() == StatusCode::kOutOfRange) {
        RETURN_IF_ERROR(DropPending((sync_mode() ? "not in its round: " : "too stale at commit: ") + s.message()));
        return Outcome::kDropped;
      }
      if (s.code() == StatusCode::kFailedPrecondition && s.message().find("not staged") != std::string::npos) {
        LOG(WARNING) << s.message() << "; pushing again";
        retry_round = true;  // a stage record expired or a shard restarted: push again
        break;
      }
      RETURN_IF_ERROR(DropPending("commit refused: " + s.message()));
      return Outcome::kDropped;
    }
    if (!SleepMs(commit_backoff.NextDelayMs())) return Outcome::kStopped;
  }
  RETURN_IF_ERROR(DropPending("not committed after " + std::to_string(options_.max_push_rounds) + " push rounds"));
  return Outcome::kDropped;
}

// ---- Run --------------------------------------------------------------------------------

Status FederatedClient::Run() {
  try {
    if (options_.evaluator) return RunEvaluator();
    RETURN_IF_ERROR(JoinFresh());
    LOG(INFO) << "client " << options_.name << " joined run " << cfg_.run.id << " as epoch " << CurrentEpoch()
              << (sync_mode() ? " (synchronous rounds)" : "");
    RETURN_IF_ERROR(metrics_->Write("start", {{"name", options_.name},
                                              {"epoch", CurrentEpoch()},
                                              {"run_id", cfg_.run.id},
                                              {"model", identity_.model_config},
                                              {"layout_hash", identity_.layout_hash},
                                              {"codec", identity_.codec},
                                              {"local_steps", cfg_.client.local_steps},
                                              {"local_time_s", cfg_.client.local_time_s},
                                              {"throttle", cfg_.client.throttle},
                                              {"mode", cfg_.ps.mode},
                                              {"device", model_->device().str()},
                                              {"resumed_pending", state_.pending.has_value()}}));
    heartbeat_stop_ = false;
    heartbeat_ = std::thread([this] { HeartbeatLoop(); });
    Status result = RunTrainer();
    heartbeat_stop_ = true;
    hb_cv_.notify_all();
    if (heartbeat_.joinable()) heartbeat_.join();
    {
      std::lock_guard<std::mutex> lock(membership_mu_);
      if (!replaced_.ok()) result = replaced_;  // the loop saw only the stop
    }
    stats_.rejoins = rejoins_.load();
    Status leave = registry_->Leave(options_.name, CurrentEpoch());
    if (!leave.ok()) LOG(WARNING) << "leave: " << leave.message();
    Status end = metrics_->Write("end", {{"committed", stats_.committed},
                                         {"dropped", stats_.dropped},
                                         {"rejoins", stats_.rejoins},
                                         {"stopped", Stopping()},
                                         {"pending", state_.pending ? state_.pending->update_id : ""},
                                         {"error", result.ok() ? "" : result.ToString()}});
    if (!end.ok()) LOG(WARNING) << end.message();
    std::fprintf(stderr, "[client %s] %s: %ld updates committed, %ld dropped%s\n", options_.name.c_str(),
                 result.ok() ? "done" : "stopped on error", long(stats_.committed), long(stats_.dropped),
                 state_.pending ? (", update " + state_.pending->update_id + " pending (re-pushed on restart)").c_str()
                                : "");
    return result;
  } catch (const std::exception& e) {
    heartbeat_stop_ = true;
    hb_cv_.notify_all();
    if (heartbeat_.joinable()) heartbeat_.join();
    return Internal(std::string("client: ") + e.what());
  }
}

// ---- evaluator --------------------------------------------------------------------------

StatusOr<int64_t> FederatedClient::FederationTokens(int64_t up_to_seq) {
  // Sums tokens of the committed log from the start (evaluator only): the trimmed part's
  // total, then the kept entries (CommittedAfter starts at the oldest kept seq).
  ASSIGN_OR_RETURN(int64_t tokens, registry_->TrimmedTokens());
  int64_t after = 0;
  while (after < up_to_seq) {
    ASSIGN_OR_RETURN(auto batch, registry_->CommittedAfter(after, std::min<int64_t>(1000, up_to_seq - after)));
    if (batch.empty()) break;
    for (const auto& c : batch) {
      const nlohmann::json& m = c.meta;
      if (m.is_object() && m.contains("tokens") && m["tokens"].is_number_integer()) tokens += m["tokens"].get<int64_t>();
      after = c.seq;
    }
  }
  return tokens;
}

Status FederatedClient::RunEvaluator() {
  const int64_t every = std::max<int64_t>(1, cfg_.client.eval_every_versions);
  const int64_t max_evals = cfg_.client.max_updates;
  EvalOptions eo;
  eo.seq_len = cfg_.train.seq_len;
  eo.batch = cfg_.train.micro_batch;
  eo.max_batches = cfg_.train.eval_batches;
  eo.bf16 = cfg_.train.bf16;
  RETURN_IF_ERROR(metrics_->Write("start", {{"name", options_.name}, {"mode", "evaluator"}, {"every", every}}));
  std::optional<int64_t> target;  // first evaluation: whatever version the shards are at
  while (!Stopping() && (max_evals == 0 || stats_.evaluations < max_evals)) {
    std::vector<PulledSlice> pulled;
    Status s = PullAll(target, &pulled);
    if (!s.ok()) {
      if (Stopping()) break;
      return s;
    }
    int64_t version = INT64_MAX, max_version = 0;
    for (const auto& p : pulled) {
      version = std::min(version, p.version);
      max_version = std::max(max_version, p.version);
    }
    if (target && version < *target) continue;  // the shards have not got there yet
    RETURN_IF_ERROR(update_path_->LoadPulled(model_->flat_params(), /*keep_base=*/false));
    ASSIGN_OR_RETURN(EvalResult r, Evaluate(*model_, data_dir_, domains_, eo));
    auto tokens = FederationTokens(version);
    nlohmann::json j = r.ToJson();
    j["version"] = version;
    j["max_version"] = max_version;
    if (tokens.ok()) j["federation_tokens"] = *tokens;
    RETURN_IF_ERROR(metrics_->Write("eval", j));
    std::fprintf(stderr, "[evaluator %s] version %ld  loss %.4f  ppl %.2f  bpb %.4f%s\n", options_.name.c_str(),
                 long(version), r.loss, r.perplexity, r.bits_per_byte,
                 tokens.ok() ? ("  federation tokens " + Rate(double(*tokens))).c_str() : "");
    ++stats_.evaluations;
    target = (version / every + 1) * every;
  }
  RETURN_IF_ERROR(metrics_->Write("end", {{"evaluations", stats_.evaluations}}));
  return Status::Ok();
}

}  // namespace fedps
