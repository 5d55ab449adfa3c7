#include "tests/data/data_test_util.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/env.h"
#include "tests/testing/temp_dir.h"

namespace fedps::datatest {

std::string TestdataPath(const std::string& name) {
  return JoinPath(fedps::testing::SourceDir(), "tests/data/testdata/" + name);
}

const Tokenizer& SharedTokenizer() {
  static const Tokenizer* tokenizer = [] {
    TokenizerTrainOptions opts;
    opts.inputs = {TestdataPath("code.txt"), TestdataPath("prose.txt")};
    opts.vocab_size = 512;
    opts.seed = 7;
    auto t = Tokenizer::Train(opts);
    if (!t.ok()) {
      ADD_FAILURE() << "training the shared tokenizer: " << t.status().ToString();
      std::abort();
    }
    return std::move(t).value().release();
  }();
  return *tokenizer;
}

void WriteText(const std::string& path, std::string_view text) {
  ASSERT_TRUE(Env::Default()->CreateDirs(Dirname(path)).ok());
  Status s = Env::Default()->WriteFileAtomic(path, text);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

std::string ReadText(const std::string& path) {
  auto text = Env::Default()->ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return text.ok() ? *text : std::string();
}

std::vector<std::string> SyntheticDocs(int n, uint64_t seed, int min_words, int max_words) {
  static const char* kWords[] = {"the",   "harbour", "boat",  "net",    "def",    "return", "value", "café",
                                 "Grüße", "if",      "else",  "while",  "42",     "3.14",   "data",  "model",
                                 "token", "über",    "naïve", "(x)",    "x = 1;", "{",      "}",     "print"};
  constexpr int kNumWords = sizeof(kWords) / sizeof(kWords[0]);
  uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  std::vector<std::string> docs;
  for (int d = 0; d < n; ++d) {
    int words = min_words + static_cast<int>(next() % static_cast<uint64_t>(max_words - min_words + 1));
    std::string doc = "doc " + std::to_string(seed) + "-" + std::to_string(d) + ":";
    for (int w = 0; w < words; ++w) {
      uint64_t r = next();
      if (r % 11 == 0) {
        doc += "\n" + std::string(static_cast<size_t>(r % 3) * 4, ' ');
      } else {
        doc += ' ';
      }
      doc += kWords[(r >> 8) % kNumWords];
    }
    docs.push_back(std::move(doc));
  }
  return docs;
}

void WriteJsonl(const std::string& path, const std::vector<std::string>& docs) {
  std::string out;
  for (const std::string& d : docs) out += nlohmann::json{{"text", d}}.dump() + "\n";
  WriteText(path, out);
}

std::vector<std::vector<int32_t>> SplitAtEos(const std::vector<uint32_t>& tokens, uint32_t eos) {
  std::vector<std::vector<int32_t>> docs(1);
  for (uint32_t t : tokens) {
    if (t == eos) {
      docs.emplace_back();
    } else {
      docs.back().push_back(static_cast<int32_t>(t));
    }
  }
  docs.pop_back();  // after the last </s>
  return docs;
}

}  // namespace fedps::datatest
