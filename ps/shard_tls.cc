// Mutual TLS on shard connections: see the header.
#include "ps/shard_tls.h"

#include <arpa/inet.h>
#include <glog/logging.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <csignal>
#include <cstdio>
#include <memory>

#include "common/env.h"
#include "ps/shard_transport.h"

namespace fedps {

using apache::thrift::TConfiguration;
using apache::thrift::transport::SSLContext;
using apache::thrift::transport::TSSLException;
using apache::thrift::transport::TSSLSocket;

namespace {

bool IsLoopback(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr a{};
  return ::inet_pton(AF_INET, host.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

thread_local const TlsSocket* current_socket = nullptr;

}  // namespace

Status CheckTls(const TlsOptions& tls, const std::string& host, const std::string& what) {
  if (tls.mode != "off" && tls.mode != "mutual") {
    return InvalidArgument("tls mode '" + tls.mode + "' is not \"off\" or \"mutual\"");
  }
  if (tls.mutual()) {
    if (tls.ca.empty() || tls.cert.empty() || tls.key.empty()) {
      return InvalidArgument("mutual TLS needs --tls-ca, --tls-cert and --tls-key (make them with fedps-ctl tls)");
    }
    return Status::Ok();
  }
  if (!IsLoopback(host)) {
    return InvalidArgument(what + " " + host + " is not a loopback address: plaintext is allowed only on this machine; "
                           "use mutual TLS (--tls-mode mutual with --tls-ca/--tls-cert/--tls-key, docs/security.md)");
  }
  return Status::Ok();
}

TlsSocket::TlsSocket(std::shared_ptr<SSLContext> ctx, THRIFT_SOCKET socket, std::shared_ptr<THRIFT_SOCKET> interrupt,
                     std::shared_ptr<TConfiguration> config, std::shared_ptr<TransportCounters> counters)
    : TSSLSocket(std::move(ctx), socket, std::move(interrupt), std::move(config)), counters_(std::move(counters)) {
  server(true);
  if (counters_) ++counters_->open_connections;
}

TlsSocket::TlsSocket(std::shared_ptr<SSLContext> ctx, const std::string& host, int port,
                     std::shared_ptr<TConfiguration> config)
    : TSSLSocket(std::move(ctx), host, port, std::move(config)) {
  server(false);
}

TlsSocket::~TlsSocket() {
  if (counters_) --counters_->open_connections;
}

void TlsSocket::authorize() {
  // OpenSSL verified the chain (and the CRL where loaded) in the handshake; this checks the
  // verdict and that a certificate was presented, then reads its subject.
  const long verdict = SSL_get_verify_result(ssl_);
  if (verdict != X509_V_OK) {
    throw TSSLException(std::string("peer certificate refused: ") + X509_verify_cert_error_string(verdict));
  }
  X509* cert = SSL_get1_peer_certificate(ssl_);
  if (cert == nullptr) throw TSSLException("the peer presented no certificate");
  auto subject = SubjectOf(cert);
  X509_free(cert);
  if (!subject.ok()) throw TSSLException("peer certificate: " + subject.status().message());
  if (!server() && subject->role != kRoleShard) {
    throw TSSLException("the peer's certificate is " + subject->name + " (" + subject->role + "), not a shard's");
  }
  peer_ = *subject;
}

StatusOr<std::shared_ptr<TlsSocketFactory>> TlsSocketFactory::Create(const TlsOptions& tls, bool server) {
  for (const auto& [what, path] : {std::pair{"tls ca", tls.ca}, {"tls cert", tls.cert}, {"tls key", tls.key}}) {
    if (!Env::Default()->Exists(path)) return InvalidArgument(std::string(what) + " " + path + " does not exist");
  }
  // OpenSSL writes with write(2), which raises SIGPIPE when the peer has closed (a refused
  // certificate, a restarted shard): ignored process-wide once TLS is in use, like the
  // shard does for plaintext (Thrift's plain sockets send with MSG_NOSIGNAL).
  std::signal(SIGPIPE, SIG_IGN);
  std::shared_ptr<TlsSocketFactory> f(new TlsSocketFactory());
  try {
    f->loadTrustedCertificates(tls.ca.c_str());
    f->loadCertificate(tls.cert.c_str());
    f->loadPrivateKey(tls.key.c_str());
    f->authenticate(true);  // SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("loading the TLS certificates: ") + e.what());
  }
  SSL_CTX* ctx = f->ctx_->get();
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return InvalidArgument("tls key " + tls.key + " does not belong to tls cert " + tls.cert);
  }
  if (server && !tls.crl.empty()) {
    std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(tls.crl.c_str(), "r"), &std::fclose);
    if (!file) return InvalidArgument("tls crl " + tls.crl + " cannot be opened");
    X509_CRL* crl = PEM_read_X509_CRL(file.get(), nullptr, nullptr, nullptr);
    if (crl == nullptr) return InvalidArgument("tls crl " + tls.crl + " is not a PEM certificate revocation list");
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    const int added = X509_STORE_add_crl(store, crl);
    X509_CRL_free(crl);
    if (added != 1) return InvalidArgument("tls crl " + tls.crl + " could not be loaded");
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  }
  return f;
}

std::shared_ptr<TlsSocket> TlsSocketFactory::Accepted(THRIFT_SOCKET socket, std::shared_ptr<THRIFT_SOCKET> interrupt,
                                                      std::shared_ptr<TConfiguration> config,
                                                      std::shared_ptr<TransportCounters> counters) {
  return std::make_shared<TlsSocket>(ctx_, socket, std::move(interrupt), std::move(config), std::move(counters));
}

std::shared_ptr<TlsSocket> TlsSocketFactory::Connect(const std::string& host, int port,
                                                     std::shared_ptr<TConfiguration> config) {
  return std::make_shared<TlsSocket>(ctx_, host, port, std::move(config));
}

std::optional<CertificateSubject> CurrentTlsPeer() {
  return current_socket ? current_socket->peer() : std::nullopt;
}

void SetCurrentTlsSocket(const TlsSocket* socket) { current_socket = socket; }

}  // namespace fedps
