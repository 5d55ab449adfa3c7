// Export to a Hugging Face folder that transformers loads with
// LlamaForCausalLM.from_pretrained(dir) and AutoTokenizer.from_pretrained(dir).
//
// Files: config.json (LlamaConfig: sizes, rms_norm_eps, rope_theta both as transformers 5's
// rope_parameters and the older top-level key, tie_word_embeddings, dtype float32, bos/eos
// ids), generation_config.json, model.safetensors (fp32, HF parameter names = our layout
// names; metadata format "pt" plus the fedps config and layout hash for provenance), and,
// when a SentencePiece tokenizer.model is given: the model itself, tokenizer.json and
// tokenizer_config.json.
//
// Why tokenizer.json: transformers 5 turns a bare tokenizer.model into a fast tokenizer only
// with protobuf installed (not a transformers dependency), and its LlamaTokenizer class
// replaces the normaliser with a Metaspace pre-tokenizer that drops SentencePiece's dummy
// prefix before leading spaces. So we convert the SentencePiece model here (a minimal
// protobuf read of its pieces and specs; the format is fixed) into a tokenizers BPE
// (vocab + merges as transformers derives them, byte fallback) with a Prepend/Replace
// normaliser that reproduces SentencePiece exactly for identity-normalised models (fedps's
// tokenizer), and declare it as PreTrainedTokenizerFast so it loads as written. NFKC and
// remove_extra_whitespaces models are approximated (NFKC normaliser, whitespace collapsing).
// Only BPE SentencePiece models are supported. Neither <s> nor </s> is added to encoded
// text (add_bos_token false, no post-processor), as fedps trains and generates, so
// tokenizer(text) with transformers' defaults gives fedps's ids, and generate() (greedy by
// default) or pipeline("text-generation", ...)(prompt, do_sample=False) the ids of
// `fedps-ctl generate`. Decoding differs only for byte tokens that are not valid UTF-8
// (tokenizers' ByteFallback gives U+FFFD per byte; SentencePiece keeps the valid ones).
//
// The export is written into a temporary sibling folder and renamed into place, so a crash
// never leaves a half export; an existing non-empty folder is replaced only when
// overwrite=true.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "model/decoder.h"

namespace fedps {

Status ExportHuggingFace(Model& model, const std::string& tokenizer_model_path /* may be "" */,
                         const std::string& out_dir, bool overwrite);

// The tokenizer part of the export, from the bytes of a SentencePiece model file.
struct HfTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  int64_t vocab_size = 0;
  int64_t unk_id = -1, bos_id = -1, eos_id = -1, pad_id = -1;  // -1: none
};
StatusOr<HfTokenizerFiles> ConvertSentencePieceForHf(const std::string& model_bytes, int64_t max_length);

// config.json's text for `config` with the given special ids.
std::string HfConfigJson(const ModelConfig& config, int64_t bos_id, int64_t eos_id);

}  // namespace fedps
