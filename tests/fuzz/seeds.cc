// Writes the seed corpora of the fuzz targets into DIR/<target>/ (committed under
// tests/fuzz/corpus/; regenerate with `build-fuzz/fuzz_seeds tests/fuzz/corpus` after a
// format change): frames of every codec kind, safetensors files, a staged update file.
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/env.h"
#include "common/safetensors.h"
#include "compression/codec.h"
#include "ps/staged_store.h"

using namespace fedps;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 1;
  }
  const std::string root = argv[1];
  Env* env = Env::Default();
  for (const char* t : {"frame", "config", "safetensors", "staged"}) env->CreateDirs(JoinPath(root, t)).IgnoreError();
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
  if (!(*writer)->Finish({header->checksum}).ok()) return 1;
  auto text = env->ReadFile(store.Path("fuzz/1/1"));
  env->WriteFileAtomic(JoinPath(root, "staged/one-frame"), *text).IgnoreError();
  env->RemoveAll(JoinPath(root, "staged.tmp")).IgnoreError();
  std::printf("seeds in %s\n", root.c_str());
  return 0;
}
