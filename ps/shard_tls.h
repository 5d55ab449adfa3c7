// Mutual TLS on shard connections (docs/security.md): the options every process takes, the
// Thrift socket factory that makes TLS sockets on both ends, and the peer's identity that
// the shard's handler checks.
//
// mode "off" (the default): plaintext, allowed only on loopback addresses; a shard refuses to
// listen, and a client or tool to connect, anywhere else in plaintext. mode "mutual": both
// ends present a certificate signed by the federation's CA (common/tls_certs.h) and check
// the other's (TLS 1.2 or later): a shard accepts a connection only with a valid, unrevoked
// (`crl`) certificate and learns its holder (CN) and role (OU); a client or tool accepts
// only a shard's certificate (role "shard"). No host names are checked: the CA and the
// subject are.
//
// Threads: a TlsSocketFactory is shared by the sockets it makes (OpenSSL's SSL_CTX is
// thread-safe once set up); a socket belongs to its connection's thread.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <thrift/TConfiguration.h>
#include <thrift/transport/TSSLSocket.h>

#include "common/status.h"
#include "common/tls_certs.h"

namespace fedps {

struct TransportCounters;  // ps/shard_transport.h

struct TlsOptions {
  std::string mode = "off";  // "off" (loopback only) or "mutual"
  std::string ca = "";       // the CA certificate (PEM): whom to trust
  std::string cert = "";     // this process's certificate (PEM)
  std::string key = "";      // its private key (PEM)
  std::string crl = "";      // the CA's revocation list (PEM); read by shards, optional
  bool mutual() const { return mode == "mutual"; }
};

// InvalidArgument for an unknown mode, a mutual mode without ca/cert/key, or plaintext on an
// address that is not loopback (`what` names the address's use, e.g. "ps.host").
Status CheckTls(const TlsOptions& tls, const std::string& host, const std::string& what);

// A TLS connection's socket. On the shard's side it keeps its peer's certificate subject
// (after the handshake); on a client's it refuses a peer that is not a shard.
class TlsSocket : public apache::thrift::transport::TSSLSocket {
 public:
  TlsSocket(std::shared_ptr<apache::thrift::transport::SSLContext> ctx, THRIFT_SOCKET socket,
            std::shared_ptr<THRIFT_SOCKET> interrupt, std::shared_ptr<apache::thrift::TConfiguration> config,
            std::shared_ptr<TransportCounters> counters);
  TlsSocket(std::shared_ptr<apache::thrift::transport::SSLContext> ctx, const std::string& host, int port,
            std::shared_ptr<apache::thrift::TConfiguration> config);
  ~TlsSocket() override;

  // The peer's certificate subject once the handshake is done.
  std::optional<CertificateSubject> peer() const { return peer_; }
  // Completes the handshake now (a client's, so that a refused certificate shows at
  // connect); throws TSSLException / TTransportException.
  void Handshake() { checkHandshake(); }

 protected:
  void authorize() override;

 private:
  std::optional<CertificateSubject> peer_;
  const std::shared_ptr<TransportCounters> counters_;  // null on the client side
};

class TlsSocketFactory : public apache::thrift::transport::TSSLSocketFactory {
 public:
  // Loads ca, cert, key (and, for a shard, the crl when set). InvalidArgument naming the file
  // that is missing or unreadable.
  static StatusOr<std::shared_ptr<TlsSocketFactory>> Create(const TlsOptions& tls, bool server);

  // A shard's accepted connection, counted in `counters` while it lives.
  std::shared_ptr<TlsSocket> Accepted(THRIFT_SOCKET socket, std::shared_ptr<THRIFT_SOCKET> interrupt,
                                      std::shared_ptr<apache::thrift::TConfiguration> config,
                                      std::shared_ptr<TransportCounters> counters);
  // A client's connection to a shard.
  std::shared_ptr<TlsSocket> Connect(const std::string& host, int port,
                                     std::shared_ptr<apache::thrift::TConfiguration> config);

 private:
  TlsSocketFactory() = default;
};

// The TLS peer of the connection the calling thread serves (set per request by the shard
// server's event handler); nullopt for a plaintext connection.
std::optional<CertificateSubject> CurrentTlsPeer();
void SetCurrentTlsSocket(const TlsSocket* socket);

}  // namespace fedps
