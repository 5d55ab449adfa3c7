// `fedps-ctl corpus build`: the default multi-domain text corpus, built from Debian
// packages at set-up time (no model hub, no dataset download).
//
// Design. A *source* is one Debian package plus a converter that turns the package's
// files into documents; sources are grouped into *domains* (code, tech-docs,
// literature, reference, german, spanish). For each selected source the builder
//   1. asks apt for the candidate version (`apt-cache show`, local, no network) and
//      fetches the .deb into the cache with `apt-get download` unless a .deb with the
//      same sha256 is already there;
//   2. unpacks it with `dpkg -x` into CACHE/extract/<pkg>_<version>/ (written under a
//      temporary name and renamed, so a cut-off run leaves no half-unpacked tree);
//   3. lists the source's *units* (one file, one book, one group of dictionary
//      entries) in a fixed order and converts them lazily with readers of our own
//      (SWORD zText modules, dictd, WordNet, the Jargon File, R serialized character
//      vectors; gzip, dictzip and zlib data through zlib: tools/inflate.h) or `groff`
//      for man pages (rendered pages
//      are cached under CACHE/render/);
//   4. picks documents until the source's share of the per-domain byte cap is used,
//      in an order given by sha256(source, unit name), so a capped corpus samples the
//      whole package instead of its alphabetically first files; the picked documents
//      are written in their original order as DIR/<domain>/<source>.jsonl (one JSON
//      object per line, the document in "text", its origin in "name"), with the
//      package's copyright file beside it as DIR/<domain>/COPYRIGHT-<package>.
// The whole output is first written to DIR.partial and swapped into place at the end,
// with DIR/corpus.json (per source: package, version, licence, files, documents, bytes,
// sha256 of the .jsonl; per domain: totals and the held-out mark). Output depends only
// on the package versions and the options: no timestamps, fixed orders.
//
// Every external program is started with an argv vector (posix_spawn, no shell);
// package names are checked against Debian's package-name syntax.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fedps::tools {

// ---- readers (pure functions; exposed for tests) --------------------------------------

bool IsValidUtf8(std::string_view s);

// One OSIS-marked-up SWORD entry to plain text: notes dropped, tags removed, entities
// decoded, whitespace collapsed.
std::string OsisToText(std::string_view osis);

struct TextDocument {
  std::string name;
  std::string text;
};

// A SWORD zText module (the folder holding ot.bzs/.bzv/.bzz and nt.*): one document per
// compressed block, which for BlockType=BOOK modules is one book. Chapters become
// "Chapter N" lines, verses numbered lines.
StatusOr<std::vector<TextDocument>> ReadSwordZText(const std::string& module_dir);

// dictd's .index (headword TAB base64 offset TAB base64 length) cut into the entries of the
// uncompressed .dict, in file order, each once; "00-database-*" entries are left out.
StatusOr<std::vector<std::string>> SplitDictdEntries(std::string_view dict, std::string_view index);
// Removes dictd cross-reference braces; with `drop_source_lines`, lines that are only a
// bracketed source tag ("[1913 Webster]", "[PJC]") too.
std::string CleanDictEntry(std::string_view entry, bool drop_source_lines);

// The Jargon File's plain-text edition split into chapters and glossary entries; the
// word lists of its tables of contents are dropped.
std::vector<std::string> SplitJargonEntries(std::string_view text);

// A WordNet data.{noun,verb,adj,adv} file: one line per synset,
// "word, other word (noun): gloss". The licence header is skipped.
StatusOr<std::vector<std::string>> ParseWordNetData(std::string_view data, std::string_view pos_name);

// An R lazy-load database (.rdb): each zlib-compressed serialized object that is a
// character vector, its elements joined with '\n'. Other objects are skipped.
StatusOr<std::vector<std::string>> ReadRCharacterVectors(std::string_view rdb);

// Consecutive entries joined by blank lines into documents of about `target_bytes`
// each, named "<prefix>-0001", ...
std::vector<TextDocument> GroupEntries(const std::string& prefix, const std::vector<std::string>& entries,
                                       size_t target_bytes);

// ---- sources and the build -----------------------------------------------------------

enum class SourceKind {
  kFiles,     // text files below a folder (optionally .gz)
  kManPages,  // man pages rendered with groff
  kSword,     // SWORD zText Bible modules
  kDictd,     // dictd .index + .dict.dz
  kJargon,    // the Jargon File's jargon.txt.gz
  kWordNet,   // WordNet data.* files
  kRData,     // R package data (.rdb) holding character vectors
};

struct CorpusSource {
  std::string id;       // also the package name
  std::string domain;
  SourceKind kind;
  std::string root;     // folder inside the package (kFiles, kManPages, kSword, kDictd ...)
  std::string suffix;   // file-name ending for kFiles
  std::vector<std::string> exclude;  // path fragments to skip (kFiles)
  std::string licence;  // summary, used when the copyright file has no License: field
  bool in_default = true;
};

// All known sources, in build order.
const std::vector<CorpusSource>& CorpusSources();

struct CorpusBuildOptions {
  std::string out_dir;
  std::string cache_dir = "cache/corpus";
  std::vector<std::string> sources;  // ids; empty: the default set
  int64_t max_bytes_per_domain = 4'000'000;  // 0: no cap
  std::string held_out_domain = "spanish";
  bool force = false;  // replace a non-empty --out that is not a corpus
  // Progress lines ("corpus: ..."); default: stderr.
  std::function<void(const std::string&)> progress;
};

struct SourceReport {
  std::string id, domain, package, version, licence, file, sha256;
  int64_t files = 0, documents = 0, bytes = 0, skipped = 0;
  bool downloaded = false;  // false: the .deb came from the cache
};

struct CorpusReport {
  std::vector<SourceReport> sources;       // built
  std::vector<std::string> unavailable;    // "id: reason"
  std::string held_out_domain;
};

// Checks Debian's package-name syntax: [a-z0-9][a-z0-9+.-]+.
bool IsValidPackageName(std::string_view name);
// The first "License:" value of a (DEP-5) copyright file; "" when there is none.
std::string LicenceFromCopyright(std::string_view copyright);
// Whether `name`'s documents are taken first: the order of sha256(source "\n" name).
std::vector<size_t> SelectionOrder(const std::string& source_id, const std::vector<std::string>& names);

StatusOr<CorpusReport> BuildCorpus(const CorpusBuildOptions& options);

}  // namespace fedps::tools
