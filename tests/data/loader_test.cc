#include "model/loader.h"

#include <gtest/gtest.h>

#include <set>

#include "common/env.h"
#include "tests/data/data_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// One prepared folder shared by the tests: domains "a" (large), "b" (small), "tiny".
class LoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::ScopedTempDir();
    datatest::WriteJsonl(dir_->File("in/a.jsonl"), datatest::SyntheticDocs(50, 21));
    datatest::WriteJsonl(dir_->File("in/b.jsonl"), datatest::SyntheticDocs(8, 22));
    datatest::WriteText(dir_->File("in/tiny.txt"), "x");
    PrepareOptions o;
    o.inputs = {dir_->File("in/a.jsonl"), dir_->File("in/b.jsonl"), dir_->File("in/tiny.txt")};
    o.out_dir = dir_->File("data");
    o.max_shard_bytes = 2000;  // windows straddle shard boundaries
    o.progress = false;
    auto m = PrepareDataset(o, datatest::SharedTokenizer());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string Data() { return dir_->File("data"); }

  static std::unique_ptr<SequenceLoader> Open(std::vector<std::string> domains, int64_t seq_len, uint64_t seed,
                                              bool shuffle = true, Split split = Split::kTrain) {
    auto l = SequenceLoader::Open(Data(), split, domains, seq_len, seed, shuffle);
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    return l.ok() ? std::move(l).value() : nullptr;
  }

  // The whole token stream of a domain's split.
  static std::vector<int64_t> Stream(const std::string& domain, Split split = Split::kTrain) {
    auto m = LoadManifest(Data());
    auto s = TokenStream::Open(*m, *m->FindDomain(domain), split);
    std::vector<int64_t> out(static_cast<size_t>(s->size()));
    s->Copy(0, s->size(), out.data());
    return out;
  }

  static std::vector<std::vector<int64_t>> Rows(const torch::Tensor& t) {
    std::vector<std::vector<int64_t>> rows;
    auto a = t.accessor<int64_t, 2>();
    for (int64_t i = 0; i < t.size(0); ++i) {
      std::vector<int64_t> r;
      for (int64_t j = 0; j < t.size(1); ++j) r.push_back(a[i][j]);
      rows.push_back(std::move(r));
    }
    return rows;
  }

  static testing::ScopedTempDir* dir_;
};
testing::ScopedTempDir* LoaderTest::dir_ = nullptr;

TEST_F(LoaderTest, SequentialWindowsCoverTheStreamWithStrideSeqLen) {
  const int64_t L = 16;
  auto loader = Open({"a", "b"}, L, 1, /*shuffle=*/false);
  ASSERT_NE(loader, nullptr);
  std::vector<int64_t> a = Stream("a"), b = Stream("b");
  const int64_t na = (static_cast<int64_t>(a.size()) - 1) / L, nb = (static_cast<int64_t>(b.size()) - 1) / L;
  EXPECT_EQ(loader->sequences_per_epoch(), na + nb);
  EXPECT_EQ(loader->tokens(), static_cast<int64_t>(a.size() + b.size()));
  EXPECT_EQ(loader->domains(), (std::vector<std::string>{"a", "b"}));

  torch::Tensor batch = loader->Next(na + nb);
  EXPECT_EQ(batch.dtype(), torch::kInt64);
  EXPECT_EQ(batch.device(), torch::Device(torch::kCPU));
  ASSERT_EQ(batch.sizes(), (std::vector<int64_t>{na + nb, L + 1}));
  auto rows = Rows(batch);
  for (int64_t i = 0; i < na + nb; ++i) {
    const auto& src = i < na ? a : b;
    const int64_t start = (i < na ? i : i - na) * L;
    std::vector<int64_t> want(src.begin() + start, src.begin() + start + L + 1);
    ASSERT_EQ(rows[static_cast<size_t>(i)], want) << "window " << i;
  }
  // Consecutive windows of a domain share one token: every token is a target once.
  EXPECT_EQ(rows[0].back(), rows[1].front());
  // The epoch ended exactly: the next batch starts epoch 1 at window 0.
  EXPECT_EQ(loader->state().epoch, 1);
  EXPECT_EQ(loader->state().cursor, 0);
  EXPECT_EQ(Rows(loader->Next(1))[0], rows[0]);
}

TEST_F(LoaderTest, EpochPermutationVisitsEveryWindowExactlyOnce) {
  for (int64_t L : {1, 3, 7, 16, 64}) {
    auto loader = Open({"a", "b"}, L, 42);
    ASSERT_NE(loader, nullptr);
    const int64_t n = loader->sequences_per_epoch();
    for (int64_t epoch : {0, 1, 5}) {
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (int64_t p = 0; p < n; ++p) {
        int64_t w = loader->WindowAt(epoch, p);
        ASSERT_GE(w, 0);
        ASSERT_LT(w, n);
        ++seen[static_cast<size_t>(w)];
      }
      EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), n) << "L=" << L << " epoch=" << epoch;
    }
  }
  // Through Next(): one epoch of shuffled batches holds exactly the sequential windows.
  auto shuffled = Open({"a", "b"}, 8, 3);
  auto ordered = Open({"a", "b"}, 8, 3, /*shuffle=*/false);
  const int64_t n = shuffled->sequences_per_epoch();
  auto x = Rows(shuffled->Next(n));
  auto y = Rows(ordered->Next(n));
  EXPECT_NE(x, y);
  std::sort(x.begin(), x.end());
  std::sort(y.begin(), y.end());
  EXPECT_EQ(x, y);
}

TEST_F(LoaderTest, OrderDependsOnSeedAndEpochOnly) {
  auto a = Open({"a", "b"}, 8, 7);
  auto b = Open({"a", "b"}, 8, 7);
  auto c = Open({"a", "b"}, 8, 8);
  const int64_t n = a->sequences_per_epoch();
  std::vector<int64_t> e0, e1, other;
  for (int64_t p = 0; p < n; ++p) {
    e0.push_back(a->WindowAt(0, p));
    e1.push_back(a->WindowAt(1, p));
    other.push_back(c->WindowAt(0, p));
  }
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, other);
  EXPECT_TRUE(torch::equal(a->Next(5), b->Next(5)));
  // Permutation of a 1-element and 2-element index space.
  auto single = SequenceLoader::Open(Data(), Split::kTrain, {"b"}, (Stream("b").size() - 1), 1);
  ASSERT_TRUE(single.ok()) << single.status().ToString();
  EXPECT_EQ((*single)->sequences_per_epoch(), 1);
  EXPECT_EQ((*single)->WindowAt(3, 0), 0);
}

TEST_F(LoaderTest, RestoreContinuesExactlyAcrossEpochs) {
  const int64_t L = 16, B = 5;
  auto original = Open({"a", "b"}, L, 99);
  const int64_t n = original->sequences_per_epoch();
  const int64_t steps = 2 * n / B + 3;  // runs into the third epoch
  std::vector<torch::Tensor> batches;
  std::vector<LoaderState> states;
  for (int64_t s = 0; s < steps; ++s) {
    states.push_back(original->state());
    batches.push_back(original->Next(B));
  }
  EXPECT_EQ(original->state().epoch, 2);
  for (int64_t from : {int64_t{0}, int64_t{1}, n / B, steps - 2}) {
    SCOPED_TRACE(from);
    // Through JSON, as a checkpoint stores it.
    nlohmann::json saved = nlohmann::json::parse(states[static_cast<size_t>(from)].ToJson().dump());
    auto state = LoaderState::FromJson(saved);
    ASSERT_TRUE(state.ok()) << state.status().ToString();
    EXPECT_EQ(*state, states[static_cast<size_t>(from)]);
    auto resumed = Open({"a", "b"}, L, /*seed=*/12345);  // the state carries the seed
    ASSERT_TRUE(resumed->Restore(*state).ok());
    for (int64_t s = from; s < steps; ++s) {
      ASSERT_TRUE(torch::equal(resumed->Next(B), batches[static_cast<size_t>(s)])) << "step " << s;
    }
    EXPECT_EQ(resumed->state(), original->state());
  }
}

TEST_F(LoaderTest, RestoreRefusesAStateOfAnotherDatasetOrShape) {
  auto l16 = Open({"a", "b"}, 16, 1);
  auto l8 = Open({"a", "b"}, 8, 1);
  auto only_a = Open({"a"}, 16, 1);
  l16->Next(3);
  Status s = l8->Restore(l16->state());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(s.message(), "sequences per epoch")) << s.message();
  EXPECT_FALSE(only_a->Restore(l16->state()).ok());
  LoaderState bad = l16->state();
  bad.cursor = l16->sequences_per_epoch();
  EXPECT_EQ(l16->Restore(bad).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(LoaderState::FromJson(nlohmann::json()).ok());
  EXPECT_FALSE(LoaderState::FromJson({{"seed", 1}, {"epoch", -1}, {"cursor", 0}}).ok());
  EXPECT_FALSE(LoaderState::FromJson({{"seed", 1}, {"epoch", "x"}, {"cursor", 0}}).ok());
}

TEST_F(LoaderTest, DomainSelectionAndErrors) {
  auto b_then_a = Open({"b", "a"}, 8, 1);
  EXPECT_EQ(b_then_a->domains(), (std::vector<std::string>{"a", "b"})) << "manifest order";
  auto unknown = SequenceLoader::Open(Data(), Split::kTrain, {"a", "zzz"}, 8, 1);
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(unknown.status().message(), "zzz")) << unknown.status().message();
  EXPECT_TRUE(Contains(unknown.status().message(), "a, b, tiny")) << unknown.status().message();
  auto tiny = SequenceLoader::Open(Data(), Split::kTrain, {}, 8, 1);
  EXPECT_EQ(tiny.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(tiny.status().message(), "domain tiny")) << tiny.status().message();
  EXPECT_FALSE(SequenceLoader::Open(Data(), Split::kTrain, {"a"}, 0, 1).ok());
  EXPECT_FALSE(SequenceLoader::Open(dir_->File("nowhere"), Split::kTrain, {}, 8, 1).ok());
  // Validation, in order, with the manifest's byte counts for bits per byte.
  auto val = Open({"a"}, 8, 1, /*shuffle=*/false, Split::kValidation);
  ASSERT_NE(val, nullptr);
  std::vector<int64_t> stream = Stream("a", Split::kValidation);
  auto row = Rows(val->Next(1))[0];
  EXPECT_EQ(row, std::vector<int64_t>(stream.begin(), stream.begin() + 9));
  const DomainInfo* a = val->manifest().FindDomain("a");
  EXPECT_EQ(val->tokens(), a->val.tokens);
  EXPECT_GT(a->val.bytes, a->val.tokens);
  EXPECT_EQ(val->Next(0).sizes(), (std::vector<int64_t>{0, 9}));
}

TEST(LoaderDtypeTest, ReadsUint32Shards) {
  // A hand-made folder with a vocabulary past 65536: tokens are stored as uint32.
  testing::ScopedTempDir dir;
  std::vector<uint32_t> tokens;
  for (uint32_t i = 0; i < 41; ++i) tokens.push_back(i % 5 == 4 ? 2u : 65536u + i * 100);
  datatest::WriteText(dir.File("d/train-00000.bin"),
                      std::string(reinterpret_cast<const char*>(tokens.data()), 20 * 4));
  datatest::WriteText(dir.File("d/train-00001.bin"),
                      std::string(reinterpret_cast<const char*>(tokens.data() + 20), 21 * 4));
  Manifest m;
  m.tokenizer.sha256 = std::string(64, '0');
  m.tokenizer.vocab_size = 70000;
  m.dtype = TokenDtype::kUint32;
  DomainInfo d;
  d.name = "d";
  d.train.documents = 8;
  d.train.tokens = 41;
  d.train.shards = {{"d/train-00000.bin", 20, ""}, {"d/train-00001.bin", 21, ""}};
  m.domains.push_back(d);
  datatest::WriteText(dir.File("manifest.json"), m.ToJson().dump());
  auto loader = SequenceLoader::Open(dir.path(), Split::kTrain, {}, 10, 0, /*shuffle=*/false);
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  EXPECT_EQ((*loader)->sequences_per_epoch(), 4);
  torch::Tensor t = (*loader)->Next(4);
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t j = 0; j <= 10; ++j) {
      ASSERT_EQ(t[i][j].item<int64_t>(), static_cast<int64_t>(tokens[static_cast<size_t>(i * 10 + j)]));
    }
  }
}

}  // namespace
}  // namespace fedps
