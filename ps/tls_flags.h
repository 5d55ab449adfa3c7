// The command-line options of mutual TLS (ps/shard_tls.h), the same for fedps-shard,
// fedps-client and fedps-ctl's commands that talk to shards.
#pragma once

#include <CLI/CLI.hpp>

#include "ps/shard_tls.h"

namespace fedps {

inline void AddTlsFlags(CLI::App& app, TlsOptions* tls, bool with_crl) {
  app.add_option("--tls-mode", tls->mode,
                 "off: plaintext, loopback addresses only; mutual: TLS with certificates on both ends")
      ->check(CLI::IsMember({"off", "mutual"}))
      ->capture_default_str();
  app.add_option("--tls-ca", tls->ca, "the federation CA's certificate (PEM; fedps-ctl tls init)");
  app.add_option("--tls-cert", tls->cert, "this process's certificate (PEM; fedps-ctl tls issue)");
  app.add_option("--tls-key", tls->key, "its private key (PEM)");
  if (with_crl) app.add_option("--tls-crl", tls->crl, "the CA's revocation list (PEM; fedps-ctl tls revoke)");
}

}  // namespace fedps
