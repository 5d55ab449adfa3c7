// safetensors: round trips of every dtype and metadata, damaged files (DataLoss, no crash),
// the torch glue, and interoperability with Python's `safetensors` both ways when available.
#include "common/safetensors.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/env.h"
#include "model/safetensors.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

std::string Bytes(size_t n, int seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + static_cast<size_t>(seed) * 17 + 7) & 0xff);
  return s;
}

void WriteRaw(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadRaw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// A file from a header JSON and a data area, for crafting damaged files.
std::string Craft(const std::string& header, const std::string& data, uint64_t claimed_len = UINT64_MAX) {
  uint64_t n = claimed_len == UINT64_MAX ? header.size() : claimed_len;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

TEST(SafetensorsTest, RoundTripAllDtypesAndMetadata) {
  testing::ScopedTempDir dir;
  const DType all[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64, DType::kI32,
                       DType::kI16, DType::kU16, DType::kU8,   DType::kI8,  DType::kBool};
  std::vector<std::string> payloads;
  std::vector<std::pair<std::string, TensorRef>> tensors;
  int i = 0;
  for (DType d : all) {
    std::vector<int64_t> shape = {3, i + 1};
    size_t bytes = 3 * static_cast<size_t>(i + 1) * DTypeSize(d);
    payloads.push_back(d == DType::kBool ? std::string(bytes, '\1') : Bytes(bytes, i));
    tensors.push_back({"t." + std::string(DTypeName(d)), TensorRef{d, shape, nullptr, bytes, {}}});
    ++i;
  }
  for (size_t k = 0; k < tensors.size(); ++k) tensors[k].second.data = payloads[k].data();
  tensors.push_back({"scalar", TensorRef{DType::kF32, {}, payloads[0].data(), 4, {}}});
  tensors.push_back({"empty", TensorRef{DType::kF32, {0, 5}, nullptr, 0, {}}});
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"version", "42"}, {"note", "ünïcode"}};
  const std::string path = dir.File("a.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, meta).ok());

  auto f = ReadSafetensors(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->metadata, meta);
  ASSERT_EQ(f->tensors.size(), tensors.size());
  for (size_t k = 0; k < tensors.size(); ++k) {
    // File order is the write order (data offsets increase).
    EXPECT_EQ(f->tensors[k].first, tensors[k].first);
    const TensorBytes& t = f->tensors[k].second;
    EXPECT_EQ(t.dtype, tensors[k].second.dtype);
    EXPECT_EQ(t.shape, tensors[k].second.shape);
    ASSERT_EQ(t.data.size(), tensors[k].second.bytes);
    if (t.data.size() > 0) {
      EXPECT_EQ(std::memcmp(t.data.data(), tensors[k].second.data, t.data.size()), 0);
    }
  }
  EXPECT_EQ(f->Find("t.BF16")->dtype, DType::kBF16);
  EXPECT_EQ(f->Find("scalar")->numel(), 1);
  EXPECT_EQ(f->Find("missing"), nullptr);

  // The data area starts 8-byte aligned and nothing but the file is left in the folder.
  std::string raw = ReadRaw(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  auto names = Env::Default()->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"a.safetensors"});

  auto index = ReadSafetensorsIndex(path);
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->entries.size(), tensors.size());
  EXPECT_EQ(index->file_size, raw.size());
}

TEST(SafetensorsTest, TensorsGivenByAReadFunctionAreWrittenInPieces) {
  // 80 MiB + 12 bytes of int8 produced piece by piece (pieces are 64 MiB at most), beside a
  // tensor in memory: the file reads back byte for byte.
  testing::ScopedTempDir dir;
  const std::string path = dir.File("pieces.safetensors");
  const size_t big = (size_t{80} << 20) + 12;
  size_t calls = 0, largest = 0;
  TensorRef gen;
  gen.dtype = DType::kI8;
  gen.shape = {static_cast<int64_t>(big)};
  gen.bytes = big;
  gen.read = [&](uint64_t offset, void* dst, size_t n) -> Status {
    ++calls;
    largest = std::max(largest, n);
    auto* out = static_cast<unsigned char*>(dst);
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<unsigned char>((offset + i) * 7 % 251);
    return Status::Ok();
  };
  const float small[2] = {1.5f, -2.0f};
  ASSERT_TRUE(WriteSafetensors(path, {{"small", {DType::kF32, {2}, small, 8, {}}}, {"gen", gen}}, {}).ok());
  EXPECT_EQ(calls, 2u);
  EXPECT_LE(largest, size_t{64} << 20);
  auto file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const TensorBytes* g = file->Find("gen");
  ASSERT_NE(g, nullptr);
  ASSERT_EQ(g->data.size(), big);
  for (size_t i = 0; i < big; i += 4099) ASSERT_EQ(static_cast<unsigned char>(g->data[i]), i * 7 % 251) << i;
  // A failing read fails the write and leaves no file.
  gen.read = [](uint64_t, void*, size_t) -> Status { return Internal("device gone"); };
  EXPECT_EQ(WriteSafetensors(dir.File("bad.safetensors"), {{"gen", gen}}, {}).code(), StatusCode::kInternal);
  EXPECT_FALSE(Env::Default()->Exists(dir.File("bad.safetensors")));
}

TEST(SafetensorsTest, WriteRejectsBadInput) {
  testing::ScopedTempDir dir;
  float x[4] = {1, 2, 3, 4};
  const std::string p = dir.File("b.safetensors");
  EXPECT_EQ(WriteSafetensors(p, {{"a", {DType::kF32, {3}, x, 16, {}}}}, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(p, {{"a", {DType::kF32, {4}, x, 16, {}}}, {"a", {DType::kF32, {4}, x, 16, {}}}}, {}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(p, {{"__metadata__", {DType::kF32, {4}, x, 16, {}}}}, {}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(p, {{"", {DType::kF32, {4}, x, 16, {}}}}, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(p, {{"a", {DType::kF32, {-4}, x, 16, {}}}}, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(Env::Default()->Exists(p));
  EXPECT_EQ(WriteSafetensors(dir.File("no/such/dir/c.safetensors"), {{"a", {DType::kF32, {4}, x, 16, {}}}}, {}).code(),
            StatusCode::kNotFound);
}

TEST(SafetensorsTest, DamagedFilesAreDataLoss) {
  testing::ScopedTempDir dir;
  float x[4] = {1, 2, 3, 4};
  const std::string good = dir.File("good.safetensors");
  ASSERT_TRUE(WriteSafetensors(good, {{"a", {DType::kF32, {2, 2}, x, 16, {}}}, {"b", {DType::kF32, {4}, x, 16, {}}}},
                               {{"k", "v"}})
                  .ok());
  const std::string raw = ReadRaw(good);
  const std::string p = dir.File("bad.safetensors");
  auto expect_loss = [&](const std::string& bytes, const std::string& what) {
    WriteRaw(p, bytes);
    auto f = ReadSafetensors(p);
    EXPECT_EQ(f.status().code(), StatusCode::kDataLoss) << what << ": " << f.status().ToString();
    EXPECT_NE(f.status().message().find("bad.safetensors"), std::string::npos) << what;
    EXPECT_EQ(ReadSafetensorsIndex(p).status().code(), StatusCode::kDataLoss) << what;
  };
  // Truncations anywhere: inside the length, the header, the data.
  for (size_t cut : {size_t{0}, size_t{3}, size_t{8}, size_t{20}, raw.size() - 40, raw.size() - 1})
    expect_loss(raw.substr(0, cut), "truncated at " + std::to_string(cut));
  expect_loss(Craft("{}", "", uint64_t{1} << 62), "huge header length");
  expect_loss(Craft("{}", "", 1000), "header length past the end");
  expect_loss(Craft("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]", std::string(16, 'x')),
              "bad JSON");
  expect_loss(Craft("[1,2]", ""), "not an object");
  expect_loss(Craft(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", std::string(8, 'x')),
              "offsets past the end");
  expect_loss(Craft(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}})", std::string(16, 'x')),
              "begin > end");
  expect_loss(Craft(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", std::string(16, 'x')),
              "size mismatch");
  expect_loss(Craft(R"({"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}})", std::string(16, 'x')),
              "unknown dtype");
  expect_loss(Craft(R"({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", std::string(16, 'x')),
              "negative dim");
  expect_loss(Craft(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 16]}})",
                    std::string(16, 'x')),
              "numel overflow");
  expect_loss(Craft(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                    std::string(24, 'x')),
              "overlap");
  expect_loss(Craft(R"({"a": {"dtype": "F32", "shape": [4]}})", std::string(16, 'x')), "no offsets");
  expect_loss(Craft(R"({"__metadata__": {"k": 1}})", ""), "non-string metadata");
  expect_loss(Craft(R"({"a": 5})", ""), "entry not an object");
  EXPECT_EQ(ReadSafetensors(dir.File("missing.safetensors")).status().code(), StatusCode::kNotFound);
  // Random garbage never crashes.
  std::string junk = raw;
  for (size_t k = 0; k < 200; ++k) {
    junk = raw;
    junk[(k * 7919) % junk.size()] ^= static_cast<char>(1 + k % 255);
    WriteRaw(p, junk);
    auto f = ReadSafetensors(p);
    if (f.ok()) {
      EXPECT_LE(f->tensors.size(), 2u);
    }
  }
}

// The appender: tensors written from several threads in any order come back whole with
// the metadata; nothing is visible under the name before Finish; an unfinished or failed
// appender leaves no file behind.
TEST(SafetensorsAppenderTest, TensorsFromSeveralThreadsInAnyOrderRoundTrip) {
  testing::ScopedTempDir dir;
  const std::string path = dir.File("a.safetensors");
  auto app = SafetensorsAppender::Create(path, 4096);
  ASSERT_TRUE(app.ok()) << app.status().ToString();
  constexpr int kTensors = 24;
  std::vector<std::string> data(kTensors);
  for (int i = 0; i < kTensors; ++i) data[static_cast<size_t>(i)] = Bytes(1000 + 37 * static_cast<size_t>(i), i);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = kTensors - 1 - t; i >= 0; i -= 4) {  // backwards, interleaved
        TensorRef r;
        r.dtype = DType::kU8;
        r.shape = {static_cast<int64_t>(data[static_cast<size_t>(i)].size())};
        r.data = data[static_cast<size_t>(i)].data();
        r.bytes = data[static_cast<size_t>(i)].size();
        if (!(*app)->Add("t." + std::to_string(i), r).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_FALSE(Env::Default()->Exists(path));
  TensorRef dup;
  dup.dtype = DType::kU8;
  dup.shape = {1};
  dup.data = "x";
  dup.bytes = 1;
  EXPECT_EQ((*app)->Add("t.3", dup).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE((*app)->Finish({{"k", "v"}}).ok());
  EXPECT_EQ((*app)->Finish({}).code(), StatusCode::kFailedPrecondition);
  auto f = ReadSafetensors(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->metadata.at("k"), "v");
  ASSERT_EQ(f->tensors.size(), static_cast<size_t>(kTensors));
  for (int i = 0; i < kTensors; ++i) {
    const TensorBytes* t = f->Find("t." + std::to_string(i));
    ASSERT_NE(t, nullptr) << i;
    EXPECT_EQ(t->data, data[static_cast<size_t>(i)]) << i;
  }
  auto names = Env::Default()->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"a.safetensors"});  // the temporary file is gone
}

TEST(SafetensorsAppenderTest, UnfinishedOrOverfullLeavesNoFile) {
  testing::ScopedTempDir dir;
  const std::string path = dir.File("b.safetensors");
  const std::string bytes = Bytes(64, 1);
  TensorRef r;
  r.dtype = DType::kU8;
  r.shape = {64};
  r.data = bytes.data();
  r.bytes = bytes.size();
  {
    auto app = SafetensorsAppender::Create(path, 1024);
    ASSERT_TRUE(app.ok());
    ASSERT_TRUE((*app)->Add("x", r).ok());
    EXPECT_EQ((*app)->data_bytes(), 64u);
    auto names = Env::Default()->ListDir(dir.path());
    ASSERT_TRUE(names.ok());
    EXPECT_EQ(names->size(), 1u);  // the temporary file
  }  // dropped unfinished
  auto names = Env::Default()->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  EXPECT_TRUE(names->empty());
  // A header larger than the reserve: refused, nothing left.
  auto small = SafetensorsAppender::Create(path, 16);
  ASSERT_TRUE(small.ok());
  ASSERT_TRUE((*small)->Add("x", r).ok());
  Status s = (*small)->Finish({{"long", std::string(100, 'm')}});
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s.message().find("reserved"), std::string::npos) << s.ToString();
  names = Env::Default()->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  EXPECT_TRUE(names->empty());
  // A size that does not match the shape.
  auto third = SafetensorsAppender::Create(path, 1024);
  ASSERT_TRUE(third.ok());
  r.shape = {63};
  EXPECT_EQ((*third)->Add("x", r).code(), StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, TorchGlueRoundTrip) {
  testing::ScopedTempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> ts = {
      {"f32", torch::randn({3, 5})},
      {"bf16", torch::randn({7}).to(torch::kBFloat16)},
      {"f16", torch::randn({2, 2, 2}).to(torch::kHalf)},
      {"i64", torch::arange(10)},
      {"u8", torch::arange(6, torch::kUInt8).view({2, 3})},
      {"bool", torch::tensor({true, false, true})},
      {"strided", torch::randn({4, 6}).t()},  // non-contiguous: copied
      {"big", torch::randn({5, 4'000'000})},  // 80 MB: read back in two pieces
      {"empty", torch::empty({0, 3})},
  };
  const std::string p = dir.File("t.safetensors");
  ASSERT_TRUE(SaveTensors(p, ts, {{"a", "b"}}).ok());
  std::map<std::string, std::string> meta;
  auto back = LoadTensors(p, &meta);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(meta.at("a"), "b");
  ASSERT_EQ(back->size(), ts.size());
  for (size_t k = 0; k < ts.size(); ++k) {
    EXPECT_EQ((*back)[k].first, ts[k].first);
    EXPECT_EQ((*back)[k].second.scalar_type(), ts[k].second.scalar_type());
    EXPECT_TRUE(torch::equal((*back)[k].second, ts[k].second)) << ts[k].first;
  }
  EXPECT_FALSE(TensorRefFromTorch(torch::randn({4, 6}).t()).ok());
  EXPECT_FALSE(TensorRefFromTorch(torch::randn({2}, torch::kComplexFloat)).ok());
}

TEST(SafetensorsTest, InteropWithPythonSafetensors) {
  const char* py = std::getenv("FEDPS_PYTHON");
  if (py == nullptr || *py == '\0') GTEST_SKIP() << "FEDPS_PYTHON not set (run through ctest)";
  testing::ScopedTempDir dir;
  std::string out;
  // Python writes, we read.
  const std::string from_py = dir.File("py.safetensors");
  const std::string script =
      "import sys\n"
      "try:\n"
      "    import numpy as np\n"
      "    from safetensors.numpy import save_file, load_file\n"
      "except ImportError as e:\n"
      "    print('SKIP', e); sys.exit(77)\n"
      "if sys.argv[1] == 'write':\n"
      "    save_file({'w': np.arange(12, dtype=np.float32).reshape(3, 4), 'i': np.array([-1, 2], dtype=np.int64),"
      " 'h': np.ones(5, dtype=np.float16)}, sys.argv[2], metadata={'m': 'x'})\n"
      "else:\n"
      "    t = load_file(sys.argv[2])\n"
      "    assert (t['f32'] == np.arange(6, dtype=np.float32).reshape(2, 3)).all(), t\n"
      "    assert (t['i32'] == np.array([7, -7], dtype=np.int32)).all(), t\n"
      "    print('python read ok')\n";
  const std::string script_path = dir.File("st.py");
  WriteRaw(script_path, script);
  int rc = testing::RunShellCapturing(std::string(py) + " " + script_path + " write " + from_py + " 2>&1", &out);
  if (rc == 77 || rc == 127) GTEST_SKIP() << "python safetensors unavailable: " << out;
  ASSERT_EQ(rc, 0) << out;
  std::map<std::string, std::string> meta;
  auto f = LoadTensors(from_py, &meta);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(meta.at("m"), "x");
  std::map<std::string, torch::Tensor> t(f->begin(), f->end());
  ASSERT_EQ(t.size(), 3u);
  EXPECT_TRUE(torch::equal(t.at("w"), torch::arange(12, torch::kFloat).view({3, 4})));
  EXPECT_TRUE(torch::equal(t.at("i"), torch::tensor({int64_t{-1}, int64_t{2}})));
  EXPECT_EQ(t.at("h").scalar_type(), torch::kHalf);
  // We write, Python reads.
  const std::string to_py = dir.File("ours.safetensors");
  ASSERT_TRUE(SaveTensors(to_py, {{"f32", torch::arange(6, torch::kFloat).view({2, 3})},
                                  {"i32", torch::tensor({7, -7}, torch::kInt)}})
                  .ok());
  out.clear();
  rc = testing::RunShellCapturing(std::string(py) + " " + script_path + " read " + to_py + " 2>&1", &out);
  EXPECT_EQ(rc, 0) << out;
}

}  // namespace
}  // namespace fedps
