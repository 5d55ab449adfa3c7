// ShardServer: the Thrift face of a ShardCore (docs/protocol.md §11) and its presence in
// the registry's shard directory.
//
//   * RPC: TThreadedServer (one thread per connection) + framed transport +
//     TCompactProtocol, bounded by ps/shard_transport.h: at most max_connections open,
//     idle and read timeouts, Thrift 0.17's TConfiguration limits (MaxFrameSize /
//     MaxMessageSize) raised to max_message_bytes on the socket and the transport alike
//     (DEPENDENCIES.md, traps 2-3), and a request above it read away and answered with
//     BAD_REQUEST naming the limit. The handler is a thin adapter: it converts requests
//     to ShardCore calls and CoreError to rpc::ShardError (same codes).
//   * Registry: Start() binds the port, registers the shard (lease ps.shard_lease_ms)
//     and hands the epoch to the core before the first request can arrive; the
//     ShardMembership (ps/shard_membership.h) then heartbeats, registers again after a
//     lapse and reports a shard that another process took (lost()).
//
// Threads: Start() starts the serving thread and the membership's heartbeat thread;
// Stop() ends both (idempotent; the destructor calls it). The ShardCore must outlive the
// server.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/status.h"
#include "ps/registry.h"
#include "ps/shard_core.h"
#include "ps/shard_membership.h"
#include "ps/shard_tls.h"
#include "ps/shard_transport.h"

namespace apache::thrift {
class TConfiguration;
class TProcessor;
namespace server {
class TServer;
}
}  // namespace apache::thrift

namespace fedps {

struct ShardServerOptions {
  std::string host = "127.0.0.1";  // address to listen on and advertise
  int port = 0;                    // 0: any free port (see port() after Start)
  int64_t lease_ms = 5000;         // the shard's directory lease
  ConnectionLimits limits;         // [limits]: connections, timeouts, message size
  RegistryOptions registry;        // the heartbeat's own connection
  TlsOptions tls;                  // plaintext on loopback, or mutual TLS (ps/shard_tls.h)
};

// What a ShardServer runs on each connection, for a transport other than its socket too
// (tests/fuzz/shard_fuzz.cc feeds it bytes as a connection would): the generated processor
// over the handler (TLS role checks when `tls`), and the framed transport factory with the
// connection limits and the reply to an oversized request. The protocol is compact.
struct ShardRpc {
  std::shared_ptr<apache::thrift::TProcessor> processor;
  std::shared_ptr<ShardTransportFactory> transports;
};
ShardRpc MakeShardRpc(ShardCore* core, bool tls, const ConnectionLimits& limits,
                      std::shared_ptr<apache::thrift::TConfiguration> config,
                      std::shared_ptr<TransportCounters> counters);

class ShardServer {
 public:
  ShardServer(ShardCore* core, ShardServerOptions options);
  ~ShardServer();
  ShardServer(const ShardServer&) = delete;
  ShardServer& operator=(const ShardServer&) = delete;

  // Binds, registers (epoch -> core), starts serving and heartbeating. kUnavailable when
  // the port is taken or Redis cannot be reached.
  Status Start();
  // Stops serving (open connections are closed) and heartbeating.
  void Stop();

  int port() const { return port_; }
  // The current directory epoch (it changes when the shard registers again).
  int64_t epoch() const { return membership_ ? membership_->epoch() : 0; }
  // Not OK once another live process owns the shard (this one is fenced for good).
  Status lost() const { return membership_ ? membership_->lost() : Status::Ok(); }
  std::string address() const { return options_.host + ":" + std::to_string(port_); }

 private:
  ShardCore* const core_;
  const ShardServerOptions options_;
  int port_ = 0;
  const std::shared_ptr<TransportCounters> counters_ = std::make_shared<TransportCounters>();
  std::shared_ptr<apache::thrift::server::TServer> server_;
  std::thread serve_thread_;
  std::unique_ptr<ShardMembership> membership_;
};

}  // namespace fedps
