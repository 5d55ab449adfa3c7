// Tokenizer: a lossless byte-fallback BPE tokenizer (SentencePiece) that fedps
// trains on its own corpora and applies when preparing data and generating text.
//
// Lossless means Decode(Encode(text)) == text for any UTF-8 text: code
// indentation, tabs, runs of blank lines and characters never seen in training
// survive. The settings that make it so (see Train):
//   - normalization "identity" and no whitespace clean-up: SentencePiece's default
//     NFKC normaliser and whitespace collapsing rewrite code;
//   - byte fallback: an unseen character becomes its UTF-8 bytes (<0xNN> pieces),
//     never <unk>;
//   - no dummy prefix: Encode(a) + Encode(b) decodes to a + b, so documents and
//     chunks of a document can be encoded separately and joined;
//   - "\n" is a user-defined symbol: SentencePiece trains line by line, so without
//     it a newline would only ever be byte-encoded;
//   - whitespace-only pieces ("▁▁▁▁") are allowed, so indentation is cheap;
//   - digits are split, so numbers are not memorised as opaque pieces.
// Ids follow Hugging Face's LlamaTokenizer: <unk>=0, <s>=1, </s>=2, no pad id.
// Encode never adds <s> or </s>; token data puts </s> after each document.
//
// The model file is SentencePiece's serialized ModelProto. Its sha256 identifies
// the tokenizer across the federation (a client refuses data or checkpoints made
// with another one).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace fedps {

struct TokenizerTrainOptions {
  // `[domain=]path` specs as for `fedps-ctl prepare` (the domain is ignored): a
  // .txt file (one document), a .jsonl file (field "text") or a folder of them.
  std::vector<std::string> inputs;
  int64_t vocab_size = 4096;
  // Text sampled for training, spread evenly over the inputs (an input smaller
  // than its share gives all of it and the rest goes to the others). Lines are
  // sampled with a hash of (seed, input, file, line), so the sample and the
  // model are the same for the same inputs and seed.
  int64_t max_training_bytes = 20 << 20;
  uint64_t seed = 1234;
  // Where tokenizer.model is written (atomically); "" keeps it in memory only
  // (PrepareDataset writes a copy into its output folder).
  std::string output_path;
};

class Tokenizer {
 public:
  // The user-defined newline symbol every fedps tokenizer has.
  static constexpr std::string_view kNewline = "\n";

  static StatusOr<std::unique_ptr<Tokenizer>> Train(const TokenizerTrainOptions& options);
  // Loads a tokenizer.model file (any SentencePiece model; fedps-trained ones
  // have the properties described at the top of this file).
  static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_path);
  // From the bytes of a model file; `path` is only reported by path().
  static StatusOr<std::unique_ptr<Tokenizer>> FromSerialized(std::string model_bytes,
                                                             std::string path = "");
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text`; no <s> / </s> added. Safe to call from several threads
  // at once (SentencePiece's Encode is const and keeps no mutable state; the
  // data tests check it). Long texts are encoded in chunks split after a
  // newline, which gives the same ids (no piece crosses a newline) with
  // bounded memory.
  std::vector<int32_t> Encode(std::string_view text) const;
  // Text of `ids`. Control ids (<s>, </s>) decode to nothing; ids outside the
  // vocabulary (a model's vocabulary is padded past the tokenizer's) decode to
  // U+FFFD so that generation never fails on them.
  std::string Decode(const std::vector<int32_t>& ids) const;

  int64_t vocab_size() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  std::string IdToPiece(int32_t id) const;  // "" when out of range

  // sha256 (hex) of the model file's bytes.
  const std::string& sha256() const { return sha256_; }
  // The file it was loaded from or written to ("" when in memory only).
  const std::string& path() const { return path_; }
  // The model file's bytes (to copy it, e.g. into a prepared data folder).
  const std::string& serialized() const { return bytes_; }
  // Writes the model file atomically.
  Status Save(const std::string& path) const;

 private:
  Tokenizer();

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string bytes_;
  std::string sha256_;
  std::string path_;
  // Whether a long text may be split after '\n' and its chunks encoded
  // separately (true when "\n" encodes alone and there is no dummy prefix).
  bool newline_splittable_ = false;
};

}  // namespace fedps
