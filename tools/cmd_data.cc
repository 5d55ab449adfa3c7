// fedps-ctl data commands: `tokenizer train`, `prepare` and `partition`.
//
// Each command is a thin layer over model/tokenizer.h and model/token_data.h:
// it binds its options to a struct captured by the run function, calls the
// library and prints a short summary table to stdout (progress and errors go to
// stderr). The formats are described in docs/data.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/env.h"
#include "common/status.h"
#include "model/token_data.h"
#include "model/tokenizer.h"
#include "tools/commands.h"

namespace fedps::tools {
namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string Num(int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return v < 0 ? "-" + s : s;
}

std::string Mb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", static_cast<double>(bytes) / 1e6);
  return buf;
}

// Prints rows as a table: the first column left-aligned, the others right-aligned.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  if (rows.empty()) return;
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (size_t c = 0; c < r.size() && c < width.size(); ++c) width[c] = std::max(width[c], r[c].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t c = 0; c < r.size() && c < width.size(); ++c) {
      std::string pad(width[c] - r[c].size(), ' ');
      line += c == 0 ? r[c] + pad : "  " + pad + r[c];
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::printf("%s\n", line.c_str());
  }
}

void PrintManifestSummary(const Manifest& m) {
  std::vector<std::vector<std::string>> rows = {
      {"domain", "train docs", "train tokens", "train MB", "val docs", "val tokens", "val MB"}};
  for (const DomainInfo& d : m.domains) {
    rows.push_back({d.name, Num(d.train.documents), Num(d.train.tokens), Mb(d.train.bytes), Num(d.val.documents),
                    Num(d.val.tokens), Mb(d.val.bytes)});
  }
  if (m.domains.size() > 1) {
    rows.push_back({"total", Num(m.Documents(Split::kTrain)), Num(m.Tokens(Split::kTrain)), Mb(m.Bytes(Split::kTrain)),
                    Num(m.Documents(Split::kValidation)), Num(m.Tokens(Split::kValidation)),
                    Mb(m.Bytes(Split::kValidation))});
  }
  PrintTable(rows);
}

void PrintTokenizer(const Tokenizer& t, const std::string& where, double seconds) {
  std::printf("tokenizer %s: vocab %s, sha256 %s (trained in %.1f s)\n", where.c_str(), Num(t.vocab_size()).c_str(),
              t.sha256().c_str(), seconds);
}

// ---- tokenizer train --------------------------------------------------------------------

struct TokenizerTrainArgs {
  TokenizerTrainOptions options;
};

Status RunTokenizerTrain(const TokenizerTrainArgs& args) {
  auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> t, Tokenizer::Train(args.options));
  PrintTokenizer(*t, args.options.output_path, Seconds(start));
  return Status::Ok();
}

// ---- prepare ------------------------------------------------------------------------------

struct PrepareArgs {
  PrepareOptions options;
  std::string tokenizer;
  int64_t vocab_size = 0;
  int64_t max_bytes = TokenizerOptions().max_training_bytes;
  uint64_t seed = 1234;
};

Status RunPrepare(const PrepareArgs& args) {
  if (args.tokenizer.empty() == (args.vocab_size == 0)) {
    return InvalidArgument("give either --tokenizer FILE or --vocab-size N (to train one on the inputs)");
  }
  auto start = std::chrono::steady_clock::now();
  std::unique_ptr<Tokenizer> tokenizer;
  if (!args.tokenizer.empty()) {
    ASSIGN_OR_RETURN(tokenizer, Tokenizer::Load(args.tokenizer));
  } else {
    TokenizerTrainOptions t;
    t.inputs = args.options.inputs;
    t.vocab_size = args.vocab_size;
    t.max_training_bytes = args.max_bytes;
    t.seed = args.seed;
    ASSIGN_OR_RETURN(tokenizer, Tokenizer::Train(t));
    PrintTokenizer(*tokenizer, "(copied into " + args.options.out_dir + ")", Seconds(start));
  }
  ASSIGN_OR_RETURN(Manifest m, PrepareDataset(args.options, *tokenizer));
  std::printf("prepared %s in %.1f s: %s tokens, tokenizer %s, %s\n", m.dir.c_str(), Seconds(start),
              Num(m.Tokens(Split::kTrain) + m.Tokens(Split::kValidation)).c_str(), m.tokenizer.sha256.substr(0, 12).c_str(),
              std::string(TokenDtypeName(m.dtype)).c_str());
  PrintManifestSummary(m);
  return Status::Ok();
}

// ---- partition ----------------------------------------------------------------------------

struct PartitionArgs {
  std::string data;
  std::string out;
  int clients = 0;
  std::string by = "domain";
  uint64_t seed = 1234;
  bool force = false;
};

Status RunPartition(const PartitionArgs& args) {
  ASSIGN_OR_RETURN(PartitionMode mode, ParsePartitionMode(args.by));
  auto start = std::chrono::steady_clock::now();
  PartitionOptions options;
  options.force = args.force;
  ASSIGN_OR_RETURN(std::vector<Manifest> clients,
                   PartitionDataset(args.data, args.out, args.clients, mode, args.seed, options));
  std::printf("partitioned %s into %zu clients (%s) under %s in %.1f s\n", args.data.c_str(), clients.size(),
              args.by.c_str(), args.out.c_str(), Seconds(start));
  std::vector<std::vector<std::string>> rows = {
      {"client", "domains", "train docs", "train tokens", "train MB", "val docs", "val tokens"}};
  for (const Manifest& m : clients) {
    std::string domains;
    for (const std::string& d : m.DomainNames()) domains += (domains.empty() ? "" : ",") + d;
    rows.push_back({Basename(m.dir), domains, Num(m.Documents(Split::kTrain)), Num(m.Tokens(Split::kTrain)),
                    Mb(m.Bytes(Split::kTrain)), Num(m.Documents(Split::kValidation)), Num(m.Tokens(Split::kValidation))});
  }
  PrintTable(rows);
  return Status::Ok();
}

}  // namespace

void AddDataCommands(CLI::App& root, CommandList& commands) {
  // tokenizer train
  CLI::App* tokenizer = root.add_subcommand("tokenizer", "Tokenizer tools (see `tokenizer train --help`)");
  tokenizer->require_subcommand(1);
  auto tt = std::make_shared<TokenizerTrainArgs>();
  CLI::App* train = tokenizer->add_subcommand(
      "train",
      "Train a lossless byte-fallback BPE tokenizer (SentencePiece) on text: code indentation, blank lines and any "
      "UTF-8 survive a round trip; ids <unk>=0 <s>=1 </s>=2 as in Llama.");
  train->add_option("--input", tt->options.inputs,
                    "[domain=]PATH: a .txt file (one document), a .jsonl file (field \"text\" per line) or a folder "
                    "of them; repeatable. Text is sampled evenly across inputs.")
      ->required();
  train->add_option("--vocab-size", tt->options.vocab_size, "Vocabulary size")->required()->check(CLI::Range(300, 1 << 30));
  train->add_option("--out", tt->options.output_path, "Where to write tokenizer.model")->required();
  tt->options.max_training_bytes = TokenizerOptions().max_training_bytes;
  train->add_option("--max-bytes", tt->options.max_training_bytes, "Most text bytes sampled for training")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--seed", tt->options.seed, "Seed of the line sample")->capture_default_str();
  commands.push_back({train, [tt] { return RunTokenizerTrain(*tt); }});

  // prepare
  auto pa = std::make_shared<PrepareArgs>();
  CLI::App* prepare = root.add_subcommand(
      "prepare",
      "Tokenize text into a prepared data folder: manifest.json, tokenizer.model and per domain "
      "train-NNNNN.bin / val-NNNNN.bin token shards (documents followed by </s>). See docs/data.md.");
  prepare->add_option("--input", pa->options.inputs,
                      "[domain=]PATH: a .txt file (one document), a .jsonl file (field \"text\" per line) or a "
                      "folder of them (recursive); the domain defaults to the file or folder name; repeatable")
      ->required();
  prepare->add_option("--out", pa->options.out_dir, "Output folder (written atomically)")->required();
  CLI::Option* tok = prepare->add_option("--tokenizer", pa->tokenizer, "tokenizer.model to apply");
  CLI::Option* vocab = prepare->add_option("--vocab-size", pa->vocab_size,
                                           "Instead of --tokenizer: train a tokenizer of this size on the inputs")
                           ->check(CLI::Range(300, 1 << 30));
  tok->excludes(vocab);
  prepare->add_option("--max-bytes", pa->max_bytes, "With --vocab-size: most text bytes sampled for training")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  prepare->add_option("--seed", pa->seed, "With --vocab-size: seed of the training sample")->capture_default_str();
  prepare->add_option("--val-fraction", pa->options.val_fraction,
                      "Fraction of each domain's documents held out for validation (at least one when a domain "
                      "has two or more)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.99));
  prepare->add_option("--threads", pa->options.threads, "Tokenizer threads (0: all cores)")->capture_default_str();
  prepare->add_flag("--force", pa->options.force, "Replace a non-empty output folder");
  commands.push_back({prepare, [pa] { return RunPrepare(*pa); }});

  // partition
  auto pt = std::make_shared<PartitionArgs>();
  CLI::App* partition = root.add_subcommand(
      "partition",
      "Split a prepared data folder into K client folders OUT/client-<k>/, each a complete prepared folder "
      "for one client's --data");
  partition->add_option("--data", pt->data, "Prepared data folder to split")->required();
  partition->add_option("--clients", pt->clients, "Number of clients K")
      ->required()
      ->check(CLI::PositiveNumber)
      ->default_str("");
  partition->add_option("--by", pt->by,
                        "domain: client k gets domains k, k+K, ... (non-IID; K <= domains); iid: every domain's "
                        "training documents are shuffled and dealt to all clients. Validation data: the client's "
                        "domains (domain) or all of it (iid).")
      ->required()
      ->check(CLI::IsMember({"domain", "iid"}))
      ->default_str("");
  partition->add_option("--out", pt->out, "Output folder (written atomically)")->required();
  partition->add_option("--seed", pt->seed, "Seed of the IID shuffle")->capture_default_str();
  partition->add_flag("--force", pt->force, "Replace a non-empty output folder");
  commands.push_back({partition, [pt] { return RunPartition(*pt); }});
}

}  // namespace fedps::tools
