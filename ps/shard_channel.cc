// ShardChannel: see the header. Thrift throws; everything is caught here and converted.
#include "ps/shard_channel.h"

#include <thrift/TConfiguration.h>
#include <thrift/Thrift.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TSocket.h>
#include <thrift/transport/TTransportException.h>

#include <poll.h>

#include <algorithm>
#include <climits>
#include <mutex>

#include "ps/rpc/Shard.h"
#include "ps/shard_tls.h"

namespace fedps {

using apache::thrift::TConfiguration;
using apache::thrift::protocol::TCompactProtocol;
using apache::thrift::transport::TFramedTransport;
using apache::thrift::transport::TSocket;

StatusCode StatusCodeForShardError(int code) {
  switch (code) {
    case rpc::ErrorCode::STALE_REFUSED: return StatusCode::kOutOfRange;
    case rpc::ErrorCode::FENCED: return StatusCode::kAborted;
    case rpc::ErrorCode::NOT_STAGED: return StatusCode::kNotFound;
    case rpc::ErrorCode::BAD_REQUEST: return StatusCode::kInvalidArgument;
    case rpc::ErrorCode::DATA_LOSS: return StatusCode::kDataLoss;
    case rpc::ErrorCode::UNAVAILABLE: return StatusCode::kUnavailable;
    case rpc::ErrorCode::IDENTITY_MISMATCH: return StatusCode::kFailedPrecondition;
    case rpc::ErrorCode::SNAPSHOT_EXPIRED: return StatusCode::kAborted;
    case rpc::ErrorCode::NOT_MEMBER: return StatusCode::kAborted;
    default: return StatusCode::kInternal;
  }
}

std::string ShardErrorCodeName(int code) {
  auto it = rpc::_ErrorCode_VALUES_TO_NAMES.find(code);
  if (it == rpc::_ErrorCode_VALUES_TO_NAMES.end()) return "UNKNOWN(" + std::to_string(code) + ")";
  return it->second;
}

Status StatusFromShardError(const rpc::ShardError& error) {
  return Status(StatusCodeForShardError(error.code), ShardErrorCodeName(error.code) + ": " + error.message);
}

rpc::RequestHeader MakeHeader(const std::string& run_id, const std::string& layout_hash, int shard_index,
                              int64_t shard_epoch, const std::string& caller) {
  rpc::RequestHeader h;
  h.run_id = run_id;
  h.layout_hash = layout_hash;
  h.shard_index = shard_index;
  h.shard_epoch = shard_epoch;
  h.caller = caller;
  return h;
}

namespace {

// Thrift prints every failed connect to stderr by itself; the Status we return says it
// once, so its own messages go to the verbose log instead.
void QuietThriftOutput(const char* message) { VLOG(1) << "thrift: " << message; }

}  // namespace

ShardChannel::ShardChannel(ShardChannelOptions options) : options_(std::move(options)) {
  static std::once_flag once;
  std::call_once(once, [] { apache::thrift::GlobalOutput.setOutputFunction(QuietThriftOutput); });
}

ShardChannel::~ShardChannel() { Close(); }

std::string ShardChannel::address() const { return options_.host + ":" + std::to_string(options_.port); }

bool ShardChannel::connected() const { return transport_ != nullptr && transport_->isOpen(); }

bool ShardChannel::PeerClosed() const {
  if (!socket_) return false;
  // No call is in flight: anything readable is the end of the connection (the shard closed
  // it, e.g. after limits.idle_timeout_ms), never a reply.
  pollfd p{static_cast<int>(socket_->getSocketFD()), POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

void ShardChannel::Close() {
  if (transport_) {
    try {
      transport_->close();
    } catch (const std::exception&) {
      // closing a broken connection may throw; it is gone either way
    }
  }
  client_.reset();
  transport_.reset();
  socket_.reset();
}

Status ShardChannel::Connect() {
  if (connected() && !PeerClosed()) return Status::Ok();
  Close();
  if (options_.port <= 0 || options_.port > 65535) {
    return InvalidArgument("shard channel: bad port " + std::to_string(options_.port));
  }
  if (!options_.tls) RETURN_IF_ERROR(CheckTls(TlsOptions{}, options_.host, "shard " + address()));
  const int limit = static_cast<int>(std::min<int64_t>(options_.max_message_bytes, INT_MAX));
  auto config = std::make_shared<TConfiguration>(limit, limit);
  try {
    std::shared_ptr<TlsSocket> tls;
    std::shared_ptr<TSocket> socket;
    if (options_.tls) {
      tls = options_.tls->Connect(options_.host, options_.port, config);
      socket = tls;
    } else {
      socket = std::make_shared<TSocket>(options_.host, options_.port, config);
    }
    socket->setConnTimeout(static_cast<int>(options_.connect_timeout.count()));
    socket->setSendTimeout(static_cast<int>(options_.call_timeout.count()));
    socket->setRecvTimeout(static_cast<int>(options_.call_timeout.count()));
    socket->setNoDelay(true);
    auto framed = std::make_shared<TFramedTransport>(socket, config);
    framed->open();
    if (tls) tls->Handshake();  // a refused certificate shows here, not in the first call
    socket_ = socket;
    transport_ = framed;
    client_ = std::make_unique<rpc::ShardClient>(std::make_shared<TCompactProtocol>(framed));
  } catch (const std::exception& e) {
    Close();
    last_error_ = {};
    return Unavailable("shard " + address() + ": cannot connect: " + e.what());
  }
  return Status::Ok();
}

template <typename Fn>
Status ShardChannel::Call(const char* what, Fn&& fn) {
  last_error_ = {};
  Status s = Connect();
  if (!s.ok()) return s.WithContext(what);
  try {
    fn();
    return Status::Ok();
  } catch (const rpc::ShardError& e) {
    last_error_.code = e.code;
    if (e.__isset.version) last_error_.version = e.version;
    if (e.__isset.retry_after_ms) last_error_.retry_after_ms = e.retry_after_ms;
    if (e.__isset.epoch) last_error_.epoch = e.epoch;
    return StatusFromShardError(e).WithContext(std::string("shard ") + address() + " " + what);
  } catch (const std::exception& e) {
    // Transport or protocol failure: the connection's state is unknown; start afresh.
    Close();
    return Unavailable(std::string("shard ") + address() + " " + what + ": " + e.what());
  }
}

StatusOr<rpc::ShardStatus> ShardChannel::GetStatus() {
  rpc::ShardStatus out;
  RETURN_IF_ERROR(Call("status", [&] { client_->status(out); }));
  return out;
}

StatusOr<rpc::PullResponse> ShardChannel::Pull(const rpc::PullRequest& request) {
  rpc::PullResponse out;
  RETURN_IF_ERROR(Call("pull", [&] { client_->pull(out, request); }));
  frame_bytes_received_ += static_cast<int64_t>(out.frame.size());
  return out;
}

StatusOr<rpc::PushResponse> ShardChannel::Push(const rpc::PushRequest& request) {
  if (static_cast<int64_t>(request.frame.size()) > options_.max_message_bytes) {
    return InvalidArgument("shard " + address() + " push: a frame of " + std::to_string(request.frame.size()) +
                           " bytes is larger than max_message_bytes (" + std::to_string(options_.max_message_bytes) +
                           ")");
  }
  rpc::PushResponse out;
  RETURN_IF_ERROR(Call("push", [&] { client_->push(out, request); }));
  frame_bytes_sent_ += static_cast<int64_t>(request.frame.size());
  return out;
}

Status ShardChannel::CommitNotify(const rpc::CommitNotice& notice) {
  return Call("commit_notify", [&] { client_->commit_notify(notice); });
}

StatusOr<rpc::CheckpointResponse> ShardChannel::Checkpoint(const rpc::CheckpointRequest& request) {
  rpc::CheckpointResponse out;
  RETURN_IF_ERROR(Call("checkpoint", [&] { client_->checkpoint(out, request); }));
  return out;
}

}  // namespace fedps
