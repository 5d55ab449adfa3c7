// Writes the seed corpora of the fuzz targets into DIR/<target>/ (committed under
// tests/fuzz/corpus/; regenerate with `build-fuzz/fuzz_seeds tests/fuzz/corpus` after a
// format change): frames of every codec kind, safetensors files, a staged update file,
// and connections' worth of requests to the shard of shard_fuzz.
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/transport/TBufferTransports.h>

#include <cstdio>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/env.h"
#include "common/safetensors.h"
#include "compression/codec.h"
#include "ps/rpc/Shard.h"
#include "ps/staged_store.h"
#include "tests/fuzz/shard_fuzz_setup.h"

using namespace fedps;

namespace {

// The bytes a client sends on one connection for the calls `send` makes (framed, compact).
std::string Connection(const std::function<void(rpc::ShardClient&)>& send) {
  auto buffer = std::make_shared<apache::thrift::transport::TMemoryBuffer>();
  auto framed = std::make_shared<apache::thrift::transport::TFramedTransport>(buffer);
  rpc::ShardClient client(std::make_shared<apache::thrift::protocol::TCompactProtocol>(framed));
  send(client);
  return buffer->getBufferAsString();
}

rpc::RequestHeader FuzzShardHeader() {
  rpc::RequestHeader h;
  h.run_id = shard_fuzz::kRunId;
  h.layout_hash = shard_fuzz::kLayoutHash;
  h.shard_index = 0;
  h.shard_epoch = shard_fuzz::kShardEpoch;
  h.caller = "seed";
  return h;
}

// Requests to shard_fuzz's shard: status; pulls; an update of the live member pushed frame
// by frame (staged), resent, committed (notify) and checkpointed; one 1000x its size (the
// norm bound, once updates are applied); a request above max_message_bytes, then status.
int WriteShardSeeds(const std::string& dir, Env* env) {
  using shard_fuzz::kFrameElements;
  using shard_fuzz::kSliceElements;
  CodecOptions o;
  o.kind = CodecKind::kBf16;
  o.chunk_elements = kFrameElements;
  o.threads = 1;
  auto codec = Codec::Create(o);
  std::vector<float> delta(kSliceElements, 1e-3f);
  auto small = (*codec)->Encode(delta);
  for (float& v : delta) v *= 1000;
  auto large = (*codec)->Encode(delta);
  if (!small.ok() || !large.ok()) return 1;
  const std::string member = shard_fuzz::kMember;
  auto push = [&](int64_t counter, const std::vector<std::string>& frames, int64_t index) {
    rpc::PushRequest p;
    p.header = FuzzShardHeader();
    p.update_id = member + "/" + std::to_string(shard_fuzz::kMemberEpoch) + "/" + std::to_string(counter);
    p.client_id = member;
    p.client_epoch = shard_fuzz::kMemberEpoch;
    p.base_version = 0;
    p.tokens = 1000;
    p.local_steps = 10;
    p.codec = "bf16";
    p.frame_index = index;
    p.total_frames = static_cast<int64_t>(frames.size());
    p.frame_elements = kFrameElements;
    p.frame = frames[static_cast<size_t>(index)];
    return p;
  };
  std::map<std::string, std::string> seeds;
  seeds["status"] = Connection([](rpc::ShardClient& c) { c.send_status(); });
  seeds["pull"] = Connection([](rpc::ShardClient& c) {
    for (int64_t i = 0; i < 2; ++i) {
      rpc::PullRequest r;
      r.header = FuzzShardHeader();
      r.codec = i == 0 ? "bf16" : "fp32";
      r.frame_index = i;
      if (i > 0) r.__set_version(0);
      c.send_pull(r);
    }
  });
  seeds["push-commit-checkpoint"] = Connection([&](rpc::ShardClient& c) {
    c.send_push(push(1, *small, 0));
    c.send_push(push(1, *small, 1));
    c.send_push(push(1, *small, 1));  // a resend
    rpc::CommitNotice n;
    n.header = FuzzShardHeader();
    n.update_id = member + "/1/1";
    n.seq = 1;
    c.send_commit_notify(n);
    rpc::CheckpointRequest k;
    k.header = FuzzShardHeader();
    k.reason = "seed";
    c.send_checkpoint(k);
  });
  seeds["push-large"] = Connection([&](rpc::ShardClient& c) {
    c.send_push(push(2, *large, 1));
    c.send_push(push(2, *large, 0));
  });
  std::string oversized = Connection([&](rpc::ShardClient& c) {
    rpc::PushRequest p = push(3, *small, 0);
    p.frame.append(static_cast<size_t>(shard_fuzz::kMaxMessageBytes), 'x');
    c.send_push(p);
    c.send_status();
  });
  seeds["oversized-then-status"] = oversized;
  for (const auto& [name, bytes] : seeds) {
    if (!env->WriteFileAtomic(JoinPath(dir, name), bytes).ok()) return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 1;
  }
  const std::string root = argv[1];
  Env* env = Env::Default();
  for (const char* t : {"frame", "config", "safetensors", "staged", "shard"}) {
    env->CreateDirs(JoinPath(root, t)).IgnoreError();
  }
  if (WriteShardSeeds(JoinPath(root, "shard"), env) != 0) return 1;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  std::vector<float> values(6000);
  for (float& v : values) v = normal(rng);
  std::vector<std::string> frames;
  for (CodecKind kind : {CodecKind::kFp32, CodecKind::kBf16, CodecKind::kInt8}) {
    CodecOptions o;
    o.kind = kind;
    o.chunk_elements = 4096;
    o.threads = 1;
    auto codec = Codec::Create(o);
    auto encoded = (*codec)->Encode(values);
    if (!encoded.ok()) return 1;
    for (size_t i = 0; i < encoded->size(); ++i) {
      env->WriteFileAtomic(JoinPath(root, "frame/" + std::string(CodecKindName(kind)) + "-" + std::to_string(i)),
                           (*encoded)[i])
          .IgnoreError();
    }
    if (kind == CodecKind::kBf16) frames = *encoded;
  }
  // A safetensors file of two tensors with metadata.
  std::vector<float> a(16, 1.5f);
  std::vector<int64_t> b = {1, -2, 3};
  TensorRef ta{DType::kF32, {4, 4}, a.data(), a.size() * 4, {}};
  TensorRef tb{DType::kI64, {3}, b.data(), b.size() * 8, {}};
  WriteSafetensors(JoinPath(root, "safetensors/two.safetensors"), {{"a", ta}, {"b", tb}}, {{"k", "v"}}, env)
      .IgnoreError();
  // A staged update as a shard writes it, for a 6000-value slice... of 4096 (the target's).
  StagedStore store(JoinPath(root, "staged.tmp"), StagedStore::Slice{0, 0, 4096}, env);
  store.Init().IgnoreError();
  CodecOptions o;
  o.chunk_elements = 4096;
  o.threads = 1;
  auto codec = Codec::Create(o);
  auto one = (*codec)->Encode(std::span<const float>(values.data(), 4096));
  auto writer = store.Begin("fuzz/1/1", "fuzz", {{"base_version", 0}, {"tokens", 1}, {"local_steps", 1}}, 1);
  if (!writer.ok() || !(*writer)->AddFrame(0, (*one)[0]).ok()) return 1;
  auto header = Codec::PeekHeader((*one)[0]);
  double sum_squares = 0;
  if (!(*codec)->CheckFrame((*one)[0], 4096, &sum_squares).ok()) return 1;
  if (!(*writer)->Finish({header->checksum}, sum_squares).ok()) return 1;
  auto text = env->ReadFile(store.Path("fuzz/1/1"));
  env->WriteFileAtomic(JoinPath(root, "staged/one-frame"), *text).IgnoreError();
  env->RemoveAll(JoinPath(root, "staged.tmp")).IgnoreError();
  std::printf("seeds in %s\n", root.c_str());
  return 0;
}
