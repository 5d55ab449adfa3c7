// ShardTransport: see the header.
#include "ps/shard_transport.h"

#include "ps/shard_tls.h"

#include <arpa/inet.h>
#include <glog/logging.h>
#include <thrift/transport/TTransportException.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

namespace fedps {

using apache::thrift::TConfiguration;
using apache::thrift::transport::TFramedTransport;
using apache::thrift::transport::TServerSocket;
using apache::thrift::transport::TSocket;
using apache::thrift::transport::TTransport;
using apache::thrift::transport::TTransportException;

namespace {

int64_t SteadyUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int Millis(int64_t ms) { return static_cast<int>(std::clamp<int64_t>(ms, 1, INT32_MAX)); }

// "address:port", numeric (TSocket::getOrigin resolves the peer's name: a DNS query).
std::string Peer(TTransport* t) {
  auto* socket = dynamic_cast<TSocket*>(t);
  return socket ? socket->getPeerAddress() + ":" + std::to_string(socket->getPeerPort()) : "?";
}

// An accepted connection, counted while it lives.
class CountedSocket : public TSocket {
 public:
  CountedSocket(THRIFT_SOCKET socket, std::shared_ptr<THRIFT_SOCKET> interrupt, std::shared_ptr<TConfiguration> config,
                std::shared_ptr<TransportCounters> counters)
      : TSocket(socket, std::move(interrupt), std::move(config)), counters_(std::move(counters)) {
    ++counters_->open_connections;
  }
  ~CountedSocket() override { --counters_->open_connections; }

 private:
  const std::shared_ptr<TransportCounters> counters_;
};

}  // namespace

// ---- server socket ------------------------------------------------------------------------

ShardServerSocket::ShardServerSocket(const std::string& host, int port, ConnectionLimits limits,
                                     std::shared_ptr<TConfiguration> config,
                                     std::shared_ptr<TransportCounters> counters, std::shared_ptr<TlsSocketFactory> tls)
    : TServerSocket(host, port),
      limits_(limits),
      config_(std::move(config)),
      counters_(std::move(counters)),
      tls_(std::move(tls)) {
  setInterruptableChildren(true);
  setSendTimeout(Millis(limits_.read_timeout_ms));
}

void ShardServerSocket::Listen() {
  if (listening_) return;
  TServerSocket::listen();
  listening_ = true;
}

void ShardServerSocket::close() {
  TServerSocket::close();
  listening_ = false;
}

std::shared_ptr<TSocket> ShardServerSocket::createSocket(THRIFT_SOCKET client) {
  if (tls_) return tls_->Accepted(client, pChildInterruptSockReader_, config_, counters_);
  return std::make_shared<CountedSocket>(client, pChildInterruptSockReader_, config_, counters_);
}

std::shared_ptr<TTransport> ShardServerSocket::acceptImpl() {
  std::shared_ptr<TTransport> client = TServerSocket::acceptImpl();
  const int64_t open = counters_->open_connections.load();
  if (open <= limits_.max_connections) return client;
  const int64_t refused = ++counters_->refused_connections;
  LOG_EVERY_N(WARNING, 100) << "refused a connection from " << Peer(client.get()) << ": " << open - 1
                            << " are open (limits.max_connections " << limits_.max_connections << "); " << refused
                            << " refused so far";
  client->close();
  // The serving loop goes on accepting after CLIENT_DISCONNECT.
  throw TTransportException(TTransportException::CLIENT_DISCONNECT, "limits.max_connections reached");
}

// ---- framed transport ---------------------------------------------------------------------

ShardFramedTransport::ShardFramedTransport(std::shared_ptr<TTransport> socket, ConnectionLimits limits,
                                           std::shared_ptr<TConfiguration> config, OversizedReply oversized,
                                           std::shared_ptr<TransportCounters> counters)
    : TFramedTransport(socket, DEFAULT_BUFFER_SIZE, kReclaimBytes, std::move(config)),
      socket_(std::dynamic_pointer_cast<TSocket>(socket)),
      limits_(limits),
      oversized_(std::move(oversized)),
      counters_(std::move(counters)) {}

uint32_t ShardFramedTransport::readEnd() {
  uint32_t n = TFramedTransport::readEnd();
  resetConsumedMessageSize();
  return n;
}

void ShardFramedTransport::ReadBefore(uint8_t* buf, uint32_t len, int64_t deadline_us) {
  uint32_t have = 0;
  while (have < len) {
    const int64_t left_us = deadline_us - SteadyUs();
    if (left_us <= 0) {
      const int64_t n = ++counters_->timed_out_requests;
      LOG(WARNING) << "cut off " << Peer(socket_.get()) << ": a request not complete " << limits_.read_timeout_ms
                   << " ms after its first byte (limits.read_timeout_ms); " << n << " cut off so far";
      throw TTransportException(TTransportException::TIMED_OUT, "request not complete within limits.read_timeout_ms");
    }
    if (socket_) socket_->setRecvTimeout(Millis((left_us + 999) / 1000));
    uint32_t got = 0;
    try {
      got = transport_->read(buf + have, len - have);
    } catch (const TTransportException& e) {
      if (e.getType() != TTransportException::TIMED_OUT) throw;
      continue;  // the deadline, checked above, says what happened
    }
    if (got == 0) throw TTransportException(TTransportException::END_OF_FILE, "connection closed mid-request");
    have += got;
  }
}

bool ShardFramedTransport::readFrame() {
  for (;;) {
    // The first byte may take the idle timeout (the socket's receive timeout between
    // requests); the rest of the request has read_timeout_ms from then on.
    uint8_t size_bytes[4];
    if (socket_) socket_->setRecvTimeout(Millis(limits_.idle_timeout_ms));
    const uint32_t first = transport_->read(size_bytes, sizeof(size_bytes));
    if (first == 0) return false;  // closed between requests
    const int64_t deadline_us = SteadyUs() + limits_.read_timeout_ms * 1000;
    if (first < sizeof(size_bytes)) ReadBefore(size_bytes + first, sizeof(size_bytes) - first, deadline_us);
    int32_t size_nbo;
    std::memcpy(&size_nbo, size_bytes, sizeof(size_nbo));
    const int32_t size = static_cast<int32_t>(ntohl(static_cast<uint32_t>(size_nbo)));
    if (size < 0) throw TTransportException(TTransportException::CORRUPTED_DATA, "negative frame size");
    if (size > limits_.max_message_bytes) {
      if (RefuseOversized(size, deadline_us)) continue;
      throw TTransportException(TTransportException::CORRUPTED_DATA, "oversized request");
    }
    if (static_cast<uint32_t>(size) > rBufSize_) {
      rBuf_.reset(new uint8_t[static_cast<uint32_t>(size)]);
      rBufSize_ = static_cast<uint32_t>(size);
    }
    ReadBefore(rBuf_.get(), static_cast<uint32_t>(size), deadline_us);
    setReadBuffer(rBuf_.get(), static_cast<uint32_t>(size));
    return true;
  }
}

bool ShardFramedTransport::RefuseOversized(int64_t bytes, int64_t deadline_us) {
  const int64_t n = ++counters_->oversized_requests;
  LOG(WARNING) << "refusing a request of " << bytes << " bytes from " << Peer(socket_.get())
               << " (limits.max_message_bytes " << limits_.max_message_bytes << "); " << n << " refused so far";
  std::vector<uint8_t> head(std::min<size_t>(static_cast<size_t>(bytes), kOversizedHead));
  ReadBefore(head.data(), static_cast<uint32_t>(head.size()), deadline_us);
  std::vector<uint8_t> sink(64 << 10);
  for (int64_t left = bytes - static_cast<int64_t>(head.size()); left > 0;) {
    const uint32_t n = static_cast<uint32_t>(std::min<int64_t>(left, static_cast<int64_t>(sink.size())));
    ReadBefore(sink.data(), n, deadline_us);
    left -= n;
  }
  std::optional<std::string> reply =
      oversized_(std::string_view(reinterpret_cast<const char*>(head.data()), head.size()), bytes);
  if (!reply) return false;
  const uint32_t size_nbo = htonl(static_cast<uint32_t>(reply->size()));
  transport_->write(reinterpret_cast<const uint8_t*>(&size_nbo), sizeof(size_nbo));
  transport_->write(reinterpret_cast<const uint8_t*>(reply->data()), static_cast<uint32_t>(reply->size()));
  transport_->flush();
  return true;
}

std::shared_ptr<TTransport> ShardTransportFactory::getTransport(std::shared_ptr<TTransport> socket) {
  return std::make_shared<ShardFramedTransport>(std::move(socket), limits_, config_, oversized_, counters_);
}

}  // namespace fedps
