// The shard's request handling on arbitrary bytes, as one connection delivers them to a
// running shard: the server's framed transport (ShardFramedTransport with the server's
// limits; max_message_bytes small, so that the oversized-request path runs too), the
// compact protocol and the generated processor over the real handler and a real ShardCore
// (MakeShardRpc, ps/shard_server.h). The core serves a 2-frame slice from a temporary
// folder, registered in the shard directory of its own redis-server (a child process) by a
// ShardMembership that heartbeats, and the run has a live member "fuzz" (epoch 1), so that
// pushes of its updates pass the membership check into receiving, staging and the norm
// bound. One input is one connection: requests are processed until its bytes end or the
// connection would be closed (any exception, as TThreadedServer does). State carries over
// between inputs as it does between connections (bounded by the small [limits] below).
// Anything may be refused; nothing may crash or trip a sanitizer.
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <thrift/TConfiguration.h>
#include <thrift/TProcessor.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/transport/TVirtualTransport.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <glog/logging.h>

#include "ps/registry.h"
#include "ps/shard_core.h"
#include "ps/shard_membership.h"
#include "ps/shard_server.h"
#include "tests/fuzz/shard_fuzz_setup.h"

namespace {

using apache::thrift::protocol::TCompactProtocol;

// One connection's two directions: reads come from the input, writes (replies) are dropped.
class FuzzConnection : public apache::thrift::transport::TVirtualTransport<FuzzConnection> {
 public:
  FuzzConnection(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool isOpen() const override { return true; }
  uint32_t read(uint8_t* buf, uint32_t len) {
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(len, size_ - offset_));
    std::memcpy(buf, data_ + offset_, n);
    offset_ += n;
    return n;
  }
  void write(const uint8_t*, uint32_t) {}

 private:
  const uint8_t* data_;
  size_t size_;
  size_t offset_ = 0;
};

// A free TCP port on 127.0.0.1 (bound and released; the server binds it right after).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::perror("shard_fuzz: free port");
    std::abort();
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

// The redis-server child: it dies with this process (PR_SET_PDEATHSIG), crash included.
void StartRedis(const std::string& dir, int port) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const std::string p = std::to_string(port);
    ::execlp("redis-server", "redis-server", "--port", p.c_str(), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", dir.c_str(), "--logfile", (dir + "/redis.log").c_str(),
             static_cast<char*>(nullptr));
    std::perror("shard_fuzz: exec redis-server");
    ::_exit(127);
  }
  if (pid < 0) {
    std::perror("shard_fuzz: fork");
    std::abort();
  }
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "shard_fuzz: %s\n", what.c_str());
  std::abort();
}

template <typename T>
T Must(fedps::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "shard_fuzz: %s: %s\n", what, v.status().ToString().c_str());
    std::abort();
  }
  return std::move(v).value();
}

void Must(const fedps::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "shard_fuzz: %s: %s\n", what, s.ToString().c_str());
    std::abort();
  }
}

struct Shard {
  std::unique_ptr<fedps::ShardCore> core;
  std::unique_ptr<fedps::ShardMembership> membership;
  fedps::ShardRpc rpc;
};

Shard* StartShard() {
  namespace setup = fedps::shard_fuzz;
  char dir_template[] = "/tmp/shard_fuzz.XXXXXX";
  const char* dir = ::mkdtemp(dir_template);
  if (dir == nullptr) Fail("mkdtemp failed");
  const int port = FreePort();
  StartRedis(dir, port);

  fedps::RegistryOptions ro;
  ro.port = port;
  ro.run_id = setup::kRunId;
  std::unique_ptr<fedps::Registry> registry;
  for (int i = 0; i < 100 && !registry; ++i) {  // until the server answers
    auto r = fedps::Registry::Connect(ro);
    if (r.ok()) registry = std::move(*r);
    else std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!registry) Fail("redis-server did not answer on port " + std::to_string(port));
  fedps::RunIdentity id;
  id.model_preset = "fuzz";
  id.layout_hash = setup::kLayoutHash;
  id.tokenizer_sha256 = "fuzz";
  id.codec = "bf16";
  id.num_shards = 1;
  Must(registry->InitRun(id), "InitRun");
  const int64_t member_epoch =
      Must(registry->Join(setup::kMember, fedps::ClientInfo{}, std::chrono::hours(24)), "Join");
  if (member_epoch != setup::kMemberEpoch) Fail("member epoch " + std::to_string(member_epoch));

  auto* shard = new Shard;
  fedps::ShardCoreOptions co;
  co.run_id = setup::kRunId;
  co.layout_hash = setup::kLayoutHash;
  co.slice_elements = setup::kSliceElements;
  co.dir = std::string(dir) + "/shard";
  co.ps.frame_elements = setup::kFrameElements;
  co.ps.checkpoint_every = 0;
  co.registry = ro;
  co.max_receiving = 4;
  co.max_receiving_per_client = 2;
  co.max_staged = 8;
  co.max_staged_per_client = 4;
  co.receive_timeout_ms = 2000;
  co.max_pull_wait_ms = 10;  // a pull's wait_ms costs real time
  co.decode_threads = 1;
  co.init_slice = [] { return fedps::StatusOr<std::vector<float>>(std::vector<float>(setup::kSliceElements, 0.5f)); };
  shard->core = Must(fedps::ShardCore::Create(co), "ShardCore::Create");
  Must(shard->core->Start(), "ShardCore::Start");
  fedps::ShardInfo info;
  info.index = 0;
  info.address = "127.0.0.1:1";
  info.slice_begin = 0;
  info.slice_end = setup::kSliceElements;
  info.pid = ::getpid();
  shard->membership = std::make_unique<fedps::ShardMembership>(shard->core.get(), info,
                                                               fedps::ShardMembershipOptions{60000, ro});
  Must(shard->membership->Start(), "ShardMembership::Start");
  if (shard->membership->epoch() != setup::kShardEpoch) {
    Fail("shard epoch " + std::to_string(shard->membership->epoch()));
  }
  for (int i = 0; i < 200 && shard->core->GetStatus().state != fedps::ShardState::kServing; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (shard->core->GetStatus().state != fedps::ShardState::kServing) Fail("the shard is not serving");

  fedps::ConnectionLimits limits;
  limits.max_message_bytes = setup::kMaxMessageBytes;
  limits.read_timeout_ms = 1000;
  const int max = static_cast<int>(limits.max_message_bytes);
  shard->rpc = fedps::MakeShardRpc(shard->core.get(), /*tls=*/false, limits,
                                   std::make_shared<apache::thrift::TConfiguration>(max, max),
                                   std::make_shared<fedps::TransportCounters>());
  return shard;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  FLAGS_minloglevel = 3;  // refusals log warnings by the thousand
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Shard* shard = StartShard();
  auto connection = std::make_shared<FuzzConnection>(data, size);
  auto transport = shard->rpc.transports->getTransport(connection);
  auto protocol = std::make_shared<TCompactProtocol>(transport);
  for (int request = 0; request < 64; ++request) {
    try {
      if (!shard->rpc.processor->process(protocol, protocol, nullptr)) break;
    } catch (const std::exception&) {
      break;  // the server closes the connection
    }
  }
  return 0;
}
