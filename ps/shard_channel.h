// ShardChannel: one client connection to one fedps-shard, with Status-returning calls.
//
// Wire: TSocket (connect / send / receive timeouts) + TFramedTransport + TCompactProtocol,
// the server's stack (ps/shard_server.h), with Thrift's TConfiguration limits raised so
// frames of a few MB (and up to max_message_bytes) pass (DEPENDENCIES.md, traps 2-3).
//
// Errors (docs/protocol.md §10): a ShardError from the shard becomes a Status with the
// protocol's code (STALE_REFUSED -> kOutOfRange, FENCED -> kAborted, NOT_STAGED ->
// kNotFound, BAD_REQUEST -> kInvalidArgument, DATA_LOSS -> kDataLoss, UNAVAILABLE ->
// kUnavailable, IDENTITY_MISMATCH -> kFailedPrecondition, SNAPSHOT_EXPIRED -> kAborted,
// NOT_MEMBER -> kAborted, INTERNAL and unknown codes -> kInternal); the message is
// "<CODE>: <shard's message>", so FENCED, SNAPSHOT_EXPIRED and NOT_MEMBER (all kAborted)
// can be told apart by last_error().code.
// Transport failures (refused, reset, timeout) are kUnavailable; the connection is then
// closed and the next call reconnects (calls are never retried here: the caller's retry
// policy decides, and push/commit are idempotent on the shard). A connection the shard
// closed while it was idle (limits.idle_timeout_ms) is noticed before the next call and
// replaced. A push whose frame is above max_message_bytes is kInvalidArgument before
// anything is sent; a shard with a smaller limit answers BAD_REQUEST (kInvalidArgument)
// naming its limit. NOT_MEMBER (the client is not a live member at that epoch) is kAborted:
// join again.
//
// Building requests: every request but status() carries an rpc::RequestHeader (run_id,
// layout_hash = ParamLayout::hash() of the run's model, shard_index, shard_epoch from the
// shard directory or 0, caller). MakeHeader() fills one.
//
// Threads: a ShardChannel is NOT thread-safe (one connection, one call in flight). Use
// one channel per thread, or a mutex around it. Cheap to create: it connects lazily.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "ps/rpc/shard_types.h"

namespace apache::thrift::transport {
class TSocket;
class TTransport;
}
namespace fedps::rpc {
class ShardClient;
}

namespace fedps {

class TlsSocketFactory;  // ps/shard_tls.h

struct ShardChannelOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // required
  // TCP connect timeout. Default 2 s.
  std::chrono::milliseconds connect_timeout{2000};
  // Send and receive timeout of one call (a pull with wait_ms waits up to that long:
  // keep this above the largest wait_ms). Default 60 s.
  std::chrono::milliseconds call_timeout{60000};
  // Largest frame / message accepted either way. Default 512 MiB.
  int64_t max_message_bytes = int64_t{512} << 20;
  // Mutual TLS (ps/shard_tls.h), shared by a process's channels; null: plaintext, refused
  // unless `host` is a loopback address.
  std::shared_ptr<TlsSocketFactory> tls = nullptr;
};

// The details of the last failed call (for retry_after_ms, version, epoch).
struct ShardCallError {
  // The shard's ErrorCode; nullopt for a transport failure (or no error yet).
  std::optional<rpc::ErrorCode::type> code;
  std::optional<int64_t> version;
  std::optional<int64_t> retry_after_ms;
  std::optional<int64_t> epoch;
};

// Protocol §10: the Status code a ShardError code maps to (unknown codes: kInternal).
StatusCode StatusCodeForShardError(int code);
// "STALE_REFUSED", ...; "UNKNOWN(<n>)" for codes this build does not know.
std::string ShardErrorCodeName(int code);
// The Status for a ShardError: code per the table, message "<CODE>: <message>".
Status StatusFromShardError(const rpc::ShardError& error);

// A RequestHeader with these fields.
rpc::RequestHeader MakeHeader(const std::string& run_id, const std::string& layout_hash,
                              int shard_index, int64_t shard_epoch, const std::string& caller);

class ShardChannel {
 public:
  explicit ShardChannel(ShardChannelOptions options);
  ~ShardChannel();
  ShardChannel(const ShardChannel&) = delete;
  ShardChannel& operator=(const ShardChannel&) = delete;

  const ShardChannelOptions& options() const { return options_; }
  // "host:port".
  std::string address() const;

  // Connects now (calls connect on demand anyway). kUnavailable when it cannot.
  Status Connect();
  // Closes the connection (the next call reconnects).
  void Close();
  bool connected() const;

  // The shard's identity, state and position (no header).
  StatusOr<rpc::ShardStatus> GetStatus();
  // One frame of a pull (docs/protocol.md §2).
  StatusOr<rpc::PullResponse> Pull(const rpc::PullRequest& request);
  // One frame of an update (§3). The response tells the update's state.
  StatusOr<rpc::PushResponse> Push(const rpc::PushRequest& request);
  // Nudge after a commit (§4). kNotFound (NOT_STAGED): this shard has no slice for it.
  Status CommitNotify(const rpc::CommitNotice& notice);
  // A checkpoint now; returns when durable.
  StatusOr<rpc::CheckpointResponse> Checkpoint(const rpc::CheckpointRequest& request);

  // Details of the last failed call (cleared by a successful one).
  const ShardCallError& last_error() const { return last_error_; }
  // Bytes of frame payload sent (push) and received (pull) through this channel.
  int64_t frame_bytes_sent() const { return frame_bytes_sent_; }
  int64_t frame_bytes_received() const { return frame_bytes_received_; }

 private:
  // Runs one call with the connection open; maps exceptions; closes on transport errors.
  template <typename Fn>
  Status Call(const char* what, Fn&& fn);
  // The open connection was closed by the shard (readable while no call is in flight).
  bool PeerClosed() const;

  ShardChannelOptions options_;
  std::shared_ptr<apache::thrift::transport::TSocket> socket_;        // under transport_
  std::shared_ptr<apache::thrift::transport::TTransport> transport_;  // framed
  std::unique_ptr<rpc::ShardClient> client_;
  ShardCallError last_error_;
  int64_t frame_bytes_sent_ = 0;
  int64_t frame_bytes_received_ = 0;
};

}  // namespace fedps
