#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include <thread>

#include "common/env.h"
#include "common/sha256.h"
#include "tests/data/data_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

using datatest::SharedTokenizer;
using datatest::TestdataPath;

std::vector<std::string> HardTexts() {
  return {
      datatest::ReadText(TestdataPath("code.txt")),
      datatest::ReadText(TestdataPath("prose.txt")),
      "def f(x):\n\tif x:\n\t\treturn 1\n\n\n    else:\n        return 2   \n",
      "   leading spaces, trailing spaces   ",
      "\n\nstarts with newlines",
      "Grüße aus Köln, déjà vu, façade, Æsir, ÿ",
      "emoji 🎉🚢🐟 and CJK 漢字 and Cyrillic Привет, never seen in training",
      "windows\r\nline\r\nendings\r\n",
      "mixed\t \t indentation\n\t    \tx",
      "<s> and </s> typed as text are text",
      "",
      " ",
      "\n",
  };
}

TEST(TokenizerTest, TrainsTheRequestedVocabularyWithLlamaIds) {
  const Tokenizer& t = SharedTokenizer();
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.IdToPiece(3), "\n");  // the newline symbol
  EXPECT_EQ(t.IdToPiece(4), "<0x00>");  // byte fallback pieces follow
  EXPECT_EQ(t.sha256(), Sha256Hex(t.serialized()));
  EXPECT_EQ(t.path(), "");
}

TEST(TokenizerTest, RoundTripIsLossless) {
  const Tokenizer& t = SharedTokenizer();
  for (const std::string& text : HardTexts()) {
    std::vector<int32_t> ids = t.Encode(text);
    EXPECT_EQ(t.Decode(ids), text) << "text: " << text;
    for (int32_t id : ids) {
      EXPECT_NE(id, t.bos_id());
      EXPECT_NE(id, t.eos_id());
      EXPECT_NE(id, t.unk_id()) << "byte fallback leaves no <unk>";
    }
  }
}

TEST(TokenizerTest, IndentationUsesWhitespacePiecesAndNewlineIsOneToken) {
  const Tokenizer& t = SharedTokenizer();
  std::vector<int32_t> ids = t.Encode("        return");
  // Eight spaces of indentation are learnt as whitespace-only pieces, not eight tokens.
  EXPECT_LT(ids.size(), 5u);
  EXPECT_EQ(t.Encode("\n"), std::vector<int32_t>{3});
  std::vector<int32_t> two = t.Encode("\n\n");
  EXPECT_EQ(two, (std::vector<int32_t>{3, 3}));
}

TEST(TokenizerTest, EncodingSplitsAfterNewlinesExactly) {
  const Tokenizer& t = SharedTokenizer();
  // The property that lets documents and long texts be encoded in pieces.
  const std::string a = "def f(x):\n    return x\n";
  const std::string b = "    # café\nprint(f(1))";
  std::vector<int32_t> joined = t.Encode(a);
  std::vector<int32_t> tail = t.Encode(b);
  joined.insert(joined.end(), tail.begin(), tail.end());
  EXPECT_EQ(t.Encode(a + b), joined);

  // A text over the chunking threshold encodes like its lines one by one.
  std::string code = datatest::ReadText(TestdataPath("code.txt"));
  std::string big;
  while (big.size() < (3u << 20)) big += code;
  std::vector<int32_t> expected;
  size_t pos = 0;
  while (pos < big.size()) {
    size_t end = big.find('\n', pos);
    end = end == std::string::npos ? big.size() : end + 1;
    std::vector<int32_t> part = t.Encode(std::string_view(big).substr(pos, end - pos));
    expected.insert(expected.end(), part.begin(), part.end());
    pos = end;
  }
  std::vector<int32_t> ids = t.Encode(big);
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(t.Decode(ids), big);
}

TEST(TokenizerTest, EncodeIsSafeFromManyThreads) {
  const Tokenizer& t = SharedTokenizer();
  std::vector<std::string> texts = HardTexts();
  std::vector<std::vector<int32_t>> expected;
  for (const auto& text : texts) expected.push_back(t.Encode(text));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int round = 0; round < 50; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          size_t j = (i + static_cast<size_t>(k)) % texts.size();
          if (t.Encode(texts[j]) != expected[j]) ++mismatches[static_cast<size_t>(k)];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(TokenizerTest, DecodeMapsOutOfRangeIdsToReplacementCharacter) {
  const Tokenizer& t = SharedTokenizer();
  std::vector<int32_t> ids = t.Encode("ab");
  ids.push_back(600);  // past the 512-piece vocabulary (models pad theirs)
  ids.push_back(-1);
  std::vector<int32_t> tail = t.Encode("cd");
  ids.insert(ids.end(), tail.begin(), tail.end());
  EXPECT_EQ(t.Decode(ids), "ab\xEF\xBF\xBD\xEF\xBF\xBD" "cd");
  EXPECT_EQ(t.Decode({t.bos_id(), t.eos_id()}), "");
}

TEST(TokenizerTest, TrainingIsDeterministicAndWritesTheModelFile) {
  testing::ScopedTempDir dir;
  TokenizerTrainOptions opts;
  opts.inputs = {TestdataPath("code.txt"), "prose=" + TestdataPath("prose.txt"), TestdataPath("docs.jsonl")};
  opts.vocab_size = 400;
  opts.seed = 11;
  opts.output_path = dir.File("a/tokenizer.model");
  auto first = Tokenizer::Train(opts);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  opts.output_path = dir.File("b/tokenizer.model");
  auto second = Tokenizer::Train(opts);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ((*first)->vocab_size(), 400);
  EXPECT_EQ((*first)->sha256(), (*second)->sha256());
  EXPECT_EQ((*first)->path(), dir.File("a/tokenizer.model"));

  auto names = Env::Default()->ListDir(dir.File("a"));
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"tokenizer.model"});  // no temporaries left

  auto loaded = Tokenizer::Load(dir.File("a/tokenizer.model"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->sha256(), (*first)->sha256());
  EXPECT_EQ((*loaded)->sha256(), *Sha256File(dir.File("a/tokenizer.model")));
  const std::string text = "    return 'Grüße'\n";
  EXPECT_EQ((*loaded)->Encode(text), (*first)->Encode(text));
}

TEST(TokenizerTest, SampleBudgetChangesWhatIsLearnt) {
  TokenizerTrainOptions opts;
  opts.inputs = {TestdataPath("code.txt"), TestdataPath("prose.txt")};
  opts.vocab_size = 400;
  opts.max_training_bytes = 3000;  // less than the inputs: lines are sampled
  auto a = Tokenizer::Train(opts);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = Tokenizer::Train(opts);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*a)->sha256(), (*b)->sha256()) << "same seed, same sample";
  opts.seed = 99;
  auto c = Tokenizer::Train(opts);
  ASSERT_TRUE(c.ok());
  EXPECT_NE((*a)->sha256(), (*c)->sha256()) << "another seed samples other lines";
}

TEST(TokenizerTest, TrainingErrorsAreClear) {
  TokenizerTrainOptions opts;
  opts.inputs = {TestdataPath("prose.txt")};
  opts.vocab_size = 100000;
  auto too_big = Tokenizer::Train(opts);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("Vocabulary size too high"), std::string::npos)
      << too_big.status().message();

  opts.vocab_size = 200;
  EXPECT_EQ(Tokenizer::Train(opts).status().code(), StatusCode::kInvalidArgument);

  opts.vocab_size = 400;
  opts.inputs = {"/nonexistent/corpus.txt"};
  auto missing = Tokenizer::Train(opts);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/corpus.txt"), std::string::npos);

  opts.inputs = {TestdataPath("malformed.jsonl")};
  auto malformed = Tokenizer::Train(opts);
  ASSERT_FALSE(malformed.ok());
  EXPECT_NE(malformed.status().message().find("malformed.jsonl:3"), std::string::npos)
      << malformed.status().message();
}

TEST(TokenizerTest, LoadErrorsNameTheFile) {
  testing::ScopedTempDir dir;
  auto missing = Tokenizer::Load(dir.File("none.model"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("none.model"), std::string::npos);
  datatest::WriteText(dir.File("junk.model"), "this is not a protobuf");
  auto junk = Tokenizer::Load(dir.File("junk.model"));
  EXPECT_EQ(junk.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(junk.status().message().find("junk.model"), std::string::npos);
}

}  // namespace
}  // namespace fedps
