// ShardServer: see the header.
#include "ps/shard_server.h"

#include <thrift/TConfiguration.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/server/TThreadedServer.h>
#include <thrift/transport/TBufferTransports.h>
#include <unistd.h>

#include <climits>
#include <csignal>
#include <optional>
#include <string_view>

#include "ps/rpc/Shard.h"
#include "ps/rpc/shard_constants.h"

namespace fedps {

using apache::thrift::TConfiguration;
using apache::thrift::protocol::TCompactProtocol;
using apache::thrift::protocol::TCompactProtocolFactory;
using apache::thrift::protocol::TMessageType;
using apache::thrift::server::TThreadedServer;
using apache::thrift::transport::TMemoryBuffer;

namespace {

rpc::ShardError ToRpcError(const CoreError& e) {
  rpc::ShardError x;
  x.code = static_cast<rpc::ErrorCode::type>(static_cast<int>(e.code));
  x.message = e.message;
  if (e.version) x.__set_version(*e.version);
  if (e.retry_after_ms) x.__set_retry_after_ms(*e.retry_after_ms);
  if (e.epoch) x.__set_epoch(*e.epoch);
  return x;
}

void ThrowIfError(const CoreError& e) {
  if (!e.ok()) throw ToRpcError(e);
}

// The reply to a request above limits.max_message_bytes: every method of the service
// declares `1: ShardError error`, so one result shape answers any of them. nullopt when the
// request's first bytes are not a compact-protocol call (then the connection is closed).
std::optional<std::string> OversizedRequestReply(std::string_view head, int64_t bytes, int64_t limit) {
  std::string name;
  TMessageType type;
  int32_t seqid = 0;
  try {
    auto in = std::make_shared<TMemoryBuffer>(reinterpret_cast<uint8_t*>(const_cast<char*>(head.data())),
                                              static_cast<uint32_t>(head.size()));
    TCompactProtocol(in).readMessageBegin(name, type, seqid);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (type != apache::thrift::protocol::T_CALL) return std::nullopt;
  rpc::ShardError error;
  error.code = rpc::ErrorCode::BAD_REQUEST;
  error.message = "request of " + std::to_string(bytes) +
                  " bytes is larger than this shard's limits.max_message_bytes (" + std::to_string(limit) +
                  "); send frames of at most a few MB";
  auto out = std::make_shared<TMemoryBuffer>();
  TCompactProtocol p(out);
  p.writeMessageBegin(name, apache::thrift::protocol::T_REPLY, seqid);
  p.writeStructBegin("result");
  p.writeFieldBegin("error", apache::thrift::protocol::T_STRUCT, 1);
  error.write(&p);
  p.writeFieldEnd();
  p.writeFieldStop();
  p.writeStructEnd();
  p.writeMessageEnd();
  return out->getBufferAsString();
}

CoreHeader FromRpc(const rpc::RequestHeader& h) {
  return CoreHeader{h.run_id, h.layout_hash, h.shard_index, h.shard_epoch, h.caller};
}

// Tells the handler which connection a request came on (its TLS peer), before each call.
class TlsPeerTracker : public apache::thrift::server::TServerEventHandler {
 public:
  void processContext(void*, std::shared_ptr<apache::thrift::transport::TTransport> transport) override {
    SetCurrentTlsSocket(dynamic_cast<const TlsSocket*>(transport.get()));
  }
};

// With mutual TLS, who may call what (docs/security.md, "Roles"): the caller's certificate
// role must be one of `roles`, and for a push its name must be the update's client_id.
// IDENTITY_MISMATCH otherwise (a wrong credential: retrying cannot help). Plaintext
// connections (loopback only) are not checked.
void RequireRole(bool tls, std::initializer_list<const char*> roles, const std::string& what,
                 const std::string* client_id = nullptr) {
  if (!tls) return;
  const std::optional<CertificateSubject> peer = CurrentTlsPeer();
  auto refuse = [&](const std::string& why) {
    throw ToRpcError(CoreError::Make(ShardErrorCode::kIdentityMismatch, what + ": " + why));
  };
  if (!peer) refuse("no TLS peer certificate on this connection");
  bool allowed = false;
  std::string names;
  for (const char* r : roles) {
    allowed = allowed || peer->role == r;
    names += std::string(names.empty() ? "" : " or ") + r;
  }
  if (!allowed) refuse("the caller's certificate is " + peer->name + " (role '" + peer->role + "'); needs " + names);
  if (client_id && peer->name != *client_id) {
    refuse("the caller's certificate names " + peer->name + ", not client " + *client_id);
  }
}

// The handler: request -> ShardCore call -> response or ShardError. Anything else thrown
// inside (std::bad_alloc, a bug) becomes INTERNAL rather than a dropped connection.
class Handler : public rpc::ShardIf {
 public:
  Handler(ShardCore* core, bool tls) : core_(core), tls_(tls) {}

  void status(rpc::ShardStatus& out) override {
    RequireRole(tls_, {kRoleClient, kRoleOperator, kRoleShard}, "status");
    Guard([&] {
      CoreStatus s = core_->GetStatus();
      const ShardCoreOptions& o = core_->options();
      out.protocol_version = rpc::g_shard_constants.PROTOCOL_VERSION;
      out.run_id = o.run_id;
      out.layout_hash = o.layout_hash;
      out.shard_index = o.shard_index;
      out.num_shards = o.num_shards;
      out.epoch = s.epoch;
      out.state = static_cast<rpc::ShardState::type>(static_cast<int>(s.state));
      out.slice_begin = o.slice_begin;
      out.slice_elements = o.slice_elements;
      out.frame_elements = o.ps.frame_elements;
      out.codecs = core_->codecs();
      out.version = s.version;
      out.committed_seq = s.committed_seq;
      out.optimizer_steps = s.optimizer_steps;
      out.buffered_updates = s.buffered_updates;
      out.receiving_updates = s.receiving_updates;
      out.staged_updates = s.staged_updates;
      out.checkpoint_version = s.checkpoint_version;
      out.max_staleness = o.ps.max_staleness;
    });
  }

  void pull(rpc::PullResponse& out, const rpc::PullRequest& req) override {
    RequireRole(tls_, {kRoleClient, kRoleOperator}, "pull");
    Guard([&] {
      PullArgs a;
      a.header = FromRpc(req.header);
      a.codec = req.codec;
      a.frame_index = req.frame_index;
      if (req.__isset.version) a.version = req.version;
      if (req.__isset.min_version) a.min_version = req.min_version;
      if (req.__isset.wait_ms) a.wait_ms = req.wait_ms;
      PullResult r;
      ThrowIfError(core_->Pull(a, &r));
      out.version = r.version;
      out.frame_index = r.frame_index;
      out.total_frames = r.total_frames;
      out.frame_elements = r.frame_elements;
      out.slice_elements = r.slice_elements;
      out.codec = r.codec;
      out.frame = std::move(r.frame);
      out.snapshot_ttl_ms = r.snapshot_ttl_ms;
    });
  }

  void push(rpc::PushResponse& out, const rpc::PushRequest& req) override {
    RequireRole(tls_, {kRoleClient}, "push", &req.client_id);
    Guard([&] {
      PushArgs a;
      a.header = FromRpc(req.header);
      a.update_id = req.update_id;
      a.client_id = req.client_id;
      a.client_epoch = req.client_epoch;
      a.base_version = req.base_version;
      a.tokens = req.tokens;
      a.local_steps = req.local_steps;
      a.codec = req.codec;
      a.frame_index = req.frame_index;
      a.total_frames = req.total_frames;
      a.frame_elements = req.frame_elements;
      a.frame = req.frame;  // one copy of a few MB; the core decodes from it
      PushResult r;
      ThrowIfError(core_->Push(a, &r));
      out.state = static_cast<rpc::UpdateState::type>(static_cast<int>(r.state));
      out.frames_received = r.frames_received;
      out.total_frames = r.total_frames;
      out.version = r.version;
      if (r.seq) out.__set_seq(*r.seq);
      if (r.stage_ttl_ms) out.__set_stage_ttl_ms(*r.stage_ttl_ms);
      if (r.missing_frames) out.__set_missing_frames(*r.missing_frames);
    });
  }

  void commit_notify(const rpc::CommitNotice& n) override {
    RequireRole(tls_, {kRoleClient, kRoleOperator}, "commit_notify");
    Guard([&] { ThrowIfError(core_->CommitNotify(FromRpc(n.header), n.update_id, n.seq)); });
  }

  void checkpoint(rpc::CheckpointResponse& out, const rpc::CheckpointRequest& req) override {
    RequireRole(tls_, {kRoleOperator}, "checkpoint");
    Guard([&] {
      CheckpointResult r;
      ThrowIfError(core_->Checkpoint(FromRpc(req.header), req.reason, &r));
      out.version = r.version;
      out.optimizer_steps = r.optimizer_steps;
      out.path = r.path;
      out.duration_ms = r.duration_ms;
    });
  }

 private:
  template <typename Fn>
  void Guard(Fn&& fn) {
    try {
      fn();
    } catch (const rpc::ShardError&) {
      throw;
    } catch (const std::exception& e) {
      LOG(ERROR) << "shard handler: " << e.what();
      throw ToRpcError(CoreError::Make(ShardErrorCode::kInternal, e.what()));
    }
  }

  ShardCore* const core_;
  const bool tls_;
};

}  // namespace

ShardRpc MakeShardRpc(ShardCore* core, bool tls, const ConnectionLimits& limits,
                      std::shared_ptr<TConfiguration> config, std::shared_ptr<TransportCounters> counters) {
  auto oversized = [max = limits.max_message_bytes](std::string_view head, int64_t bytes) {
    return OversizedRequestReply(head, bytes, max);
  };
  return {std::make_shared<rpc::ShardProcessor>(std::make_shared<Handler>(core, tls)),
          std::make_shared<ShardTransportFactory>(limits, std::move(config), oversized, std::move(counters))};
}

ShardServer::ShardServer(ShardCore* core, ShardServerOptions options) : core_(core), options_(std::move(options)) {}

ShardServer::~ShardServer() { Stop(); }

Status ShardServer::Start() {
  // A peer that disconnects mid-write must not kill the process (trap 5).
  std::signal(SIGPIPE, SIG_IGN);
  const ConnectionLimits& limits = options_.limits;
  const int limit = static_cast<int>(std::min<int64_t>(limits.max_message_bytes, INT_MAX));
  auto config = std::make_shared<TConfiguration>(limit, limit);
  RETURN_IF_ERROR(CheckTls(options_.tls, options_.host, "ps.host"));
  std::shared_ptr<TlsSocketFactory> tls;
  if (options_.tls.mutual()) {
    ASSIGN_OR_RETURN(tls, TlsSocketFactory::Create(options_.tls, /*server=*/true));
  }
  auto socket = std::make_shared<ShardServerSocket>(options_.host, options_.port, limits, config, counters_, tls);
  try {
    socket->Listen();
    port_ = socket->getPort();
  } catch (const std::exception& e) {
    return Unavailable("cannot listen on " + options_.host + ":" + std::to_string(options_.port) + ": " + e.what());
  }

  const ShardCoreOptions& o = core_->options();
  ShardInfo info;
  info.index = o.shard_index;
  info.address = address();
  info.slice_begin = o.slice_begin;
  info.slice_end = o.slice_begin + o.slice_elements;
  info.pid = ::getpid();
  membership_ = std::make_unique<ShardMembership>(core_, info, ShardMembershipOptions{options_.lease_ms, options_.registry});
  RETURN_IF_ERROR(membership_->Start());

  ShardRpc rpc = MakeShardRpc(core_, options_.tls.mutual(), limits, config, counters_);
  server_ = std::make_shared<TThreadedServer>(rpc.processor, socket, rpc.transports,
                                              std::make_shared<TCompactProtocolFactory>());
  if (tls) server_->setServerEventHandler(std::make_shared<TlsPeerTracker>());
  serve_thread_ = std::thread([this] {
    try {
      server_->serve();
    } catch (const std::exception& e) {
      LOG(ERROR) << "shard server stopped: " << e.what();
    }
  });
  return Status::Ok();
}

void ShardServer::Stop() {
  if (membership_) membership_->Stop();
  if (server_) server_->stop();
  if (serve_thread_.joinable()) serve_thread_.join();
}

}  // namespace fedps
