// Helpers shared by the data tests: fixture paths, one tokenizer trained once
// per test binary, and synthetic corpora written into temp folders.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"

namespace fedps::datatest {

// tests/data/testdata/<name> in the source tree.
std::string TestdataPath(const std::string& name);

// A 512-piece tokenizer trained (in memory) on the code and prose fixtures.
const Tokenizer& SharedTokenizer();

// Writes `text` to `path`, creating folders; fails the test on error.
void WriteText(const std::string& path, std::string_view text);
std::string ReadText(const std::string& path);

// `n` deterministic pseudo-random documents of words, newlines and indentation.
std::vector<std::string> SyntheticDocs(int n, uint64_t seed, int min_words = 20, int max_words = 120);
// Writes documents as JSON lines {"text": ...}.
void WriteJsonl(const std::string& path, const std::vector<std::string>& docs);

// Splits a token stream at </s>: the documents' token lists without the </s>.
std::vector<std::vector<int32_t>> SplitAtEos(const std::vector<uint32_t>& tokens, uint32_t eos);

}  // namespace fedps::datatest
