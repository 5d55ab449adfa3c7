// ShardTransport: the shard's end of its RPC connections, bounded by the [limits] section
// (docs/security.md): how many connections, how long one may sit idle or take to send a
// request, and how large a request may be. Thrift parts, used by ShardServer only.
//
//   * ShardServerSocket (a TServerSocket) listens when Listen() is called (so that port 0
//     resolves before the shard registers; serve()'s own listen() is then a no-op) and
//       - gives every accepted connection the server's TConfiguration. Thrift 0.17's TSocket
//         checks every read against its own MaxMessageSize (100 MiB unless configured), and
//         TServerSocket makes its sockets with the default: that is why frames between
//         ~100 MiB and the configured maximum were cut off with no answer;
//       - closes a connection at accept while max_connections are open (logged, counted);
//       - gives up a reply its peer does not take within read_timeout_ms (the socket's
//         send timeout).
//   * ShardFramedTransport (a TFramedTransport) waits at most idle_timeout_ms for a
//     connection's next request and reads each request with a deadline of read_timeout_ms
//     from its first byte: a peer that sits idle or stalls mid-request is cut off, its
//     thread and the buffer it was filling freed with the connection. It resets Thrift's
//     consumed-bytes counter after each message (without it a connection dies after
//     ~100 MiB in all, DEPENDENCIES.md trap 3), frees a read or write buffer above
//     kReclaimBytes after its message, and refuses a request above max_message_bytes
//     LOUDLY: it reads the request away in small pieces (no memory committed to it, same
//     deadline), logs it, and answers the call with the reply `oversized` builds from the
//     request's first bytes (a ShardError BAD_REQUEST naming the size and the limit); the
//     connection stays usable.
//
// Threads: the server socket is used by the serving thread (accept) and by Stop() (interrupt);
// the connection count is atomic. A transport belongs to its connection's thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <thrift/TConfiguration.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TServerSocket.h>
#include <thrift/transport/TSocket.h>

namespace fedps {

struct ConnectionLimits {
  int max_connections = 256;
  int64_t idle_timeout_ms = 300000;
  int64_t read_timeout_ms = 60000;
  int64_t max_message_bytes = int64_t{512} << 20;
};

// Connections open, and refusals made below the handler (counted in their log lines).
struct TransportCounters {
  std::atomic<int64_t> open_connections{0};
  std::atomic<int64_t> refused_connections{0};
  std::atomic<int64_t> timed_out_requests{0};
  std::atomic<int64_t> oversized_requests{0};
};

class TlsSocketFactory;  // ps/shard_tls.h

class ShardServerSocket : public apache::thrift::transport::TServerSocket {
 public:
  // `tls`: mutual TLS on every accepted connection (ps/shard_tls.h); null: plaintext.
  ShardServerSocket(const std::string& host, int port, ConnectionLimits limits,
                    std::shared_ptr<apache::thrift::TConfiguration> config,
                    std::shared_ptr<TransportCounters> counters, std::shared_ptr<TlsSocketFactory> tls = nullptr);
  // Binds and listens now; later calls (serve()'s) do nothing.
  void Listen();
  void listen() override { Listen(); }
  void close() override;

 protected:
  std::shared_ptr<apache::thrift::transport::TTransport> acceptImpl() override;
  std::shared_ptr<apache::thrift::transport::TSocket> createSocket(THRIFT_SOCKET client) override;

 private:
  const ConnectionLimits limits_;
  const std::shared_ptr<apache::thrift::TConfiguration> config_;
  const std::shared_ptr<TransportCounters> counters_;
  const std::shared_ptr<TlsSocketFactory> tls_;
  bool listening_ = false;
};

// Builds the reply to a request refused for its size: `head` holds the request's first
// bytes (at most kOversizedHead), `bytes` its size. nullopt: not a request it can answer
// (the connection is closed).
using OversizedReply = std::function<std::optional<std::string>(std::string_view head, int64_t bytes)>;

class ShardFramedTransport : public apache::thrift::transport::TFramedTransport {
 public:
  static constexpr uint32_t kReclaimBytes = 16u << 20;
  static constexpr size_t kOversizedHead = 4096;

  ShardFramedTransport(std::shared_ptr<apache::thrift::transport::TTransport> socket, ConnectionLimits limits,
                       std::shared_ptr<apache::thrift::TConfiguration> config, OversizedReply oversized,
                       std::shared_ptr<TransportCounters> counters);
  uint32_t readEnd() override;

 protected:
  bool readFrame() override;

 private:
  // Reads exactly `len` bytes before `deadline_us` (steady clock); throws TIMED_OUT after it.
  void ReadBefore(uint8_t* buf, uint32_t len, int64_t deadline_us);
  // Reads away the rest of an oversized request and answers it; false: close instead.
  bool RefuseOversized(int64_t bytes, int64_t deadline_us);

  const std::shared_ptr<apache::thrift::transport::TSocket> socket_;  // null for a non-TCP transport
  const ConnectionLimits limits_;
  const OversizedReply oversized_;
  const std::shared_ptr<TransportCounters> counters_;
};

class ShardTransportFactory : public apache::thrift::transport::TTransportFactory {
 public:
  ShardTransportFactory(ConnectionLimits limits, std::shared_ptr<apache::thrift::TConfiguration> config,
                        OversizedReply oversized, std::shared_ptr<TransportCounters> counters)
      : limits_(limits), config_(std::move(config)), oversized_(std::move(oversized)), counters_(std::move(counters)) {}
  std::shared_ptr<apache::thrift::transport::TTransport> getTransport(
      std::shared_ptr<apache::thrift::transport::TTransport> socket) override;

 private:
  const ConnectionLimits limits_;
  const std::shared_ptr<apache::thrift::TConfiguration> config_;
  const OversizedReply oversized_;
  const std::shared_ptr<TransportCounters> counters_;
};

}  // namespace fedps
