// The corpus builder: readers for the package formats, the source table, and the
// download / unpack / convert / select / write pipeline. See tools/corpus.h.
#include "tools/corpus.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "common/base64.h"
#include "common/env.h"
#include "common/sha256.h"
#include "tools/inflate.h"

extern char** environ;

namespace fedps::tools {
namespace {

namespace fs = std::filesystem;

// Little- and big-endian 32-bit integers of the package formats.
uint32_t Le32(const unsigned char* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }
uint32_t Be32(const unsigned char* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += len;
  }
  return true;
}

namespace {

std::string TrimCopy(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::vector<std::string_view> SplitLines(std::string_view s) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start <= s.size()) {
    size_t nl = s.find('\n', start);
    if (nl == std::string_view::npos) {
      if (start < s.size()) lines.push_back(s.substr(start));
      break;
    }
    lines.push_back(s.substr(start, nl - start));
    start = nl + 1;
  }
  return lines;
}

// Collapses runs of spaces/tabs into one space, trims lines, keeps at most one blank line.
std::string TidyText(std::string_view s) {
  std::string out;
  int pending_newlines = 0;
  bool pending_space = false;
  for (char c : s) {
    if (c == '\n') {
      ++pending_newlines;
      pending_space = false;
    } else if (c == ' ' || c == '\t' || c == '\r') {
      pending_space = true;
    } else {
      if (!out.empty()) {
        if (pending_newlines > 0) {
          out.append(pending_newlines > 1 ? "\n\n" : "\n");
        } else if (pending_space) {
          out.push_back(' ');
        }
      }
      pending_newlines = 0;
      pending_space = false;
      out.push_back(c);
    }
  }
  return out;
}

// The value of attribute `name` in a tag's text; "" when absent.
std::string Attribute(std::string_view tag, std::string_view name) {
  std::string key = std::string(name) + "=\"";
  size_t at = 0;
  while ((at = tag.find(key, at)) != std::string_view::npos) {
    if (at > 0 && tag[at - 1] != ' ') {
      ++at;
      continue;
    }
    size_t start = at + key.size(), end = tag.find('"', start);
    if (end == std::string_view::npos) return "";
    return std::string(tag.substr(start, end - start));
  }
  return "";
}

}  // namespace

std::string OsisToText(std::string_view osis) {
  std::string out;
  size_t i = 0;
  while (i < osis.size()) {
    char c = osis[i];
    if (c == '<') {
      size_t end = osis.find('>', i);
      if (end == std::string_view::npos) break;
      std::string_view tag = osis.substr(i + 1, end - i - 1);
      bool closing = !tag.empty() && tag[0] == '/';
      std::string_view name = closing ? tag.substr(1) : tag;
      name = name.substr(0, name.find_first_of(" /"));
      bool self_closing = !tag.empty() && tag.back() == '/';
      if (name == "note" && !closing && !self_closing) {
        size_t close = osis.find("</note>", end);
        i = close == std::string_view::npos ? osis.size() : close + 7;
        continue;
      }
      if (name == "title" || name == "lb" || name == "l" || name == "p") out.push_back('\n');
      i = end + 1;
      continue;
    }
    if (c == '&') {
      static const std::pair<std::string_view, char> kEntities[] = {
          {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
      bool matched = false;
      for (const auto& [entity, ch] : kEntities) {
        if (osis.substr(i, entity.size()) == entity) {
          out.push_back(ch);
          i += entity.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
    }
    out.push_back(c);
    ++i;
  }
  return TidyText(out);
}

StatusOr<std::vector<TextDocument>> ReadSwordZText(const std::string& module_dir) {
  Env* env = Env::Default();
  std::vector<TextDocument> docs;
  for (const char* testament : {"ot", "nt"}) {
    std::string base = JoinPath(module_dir, testament);
    if (!env->Exists(base + ".bzs")) continue;
    ASSIGN_OR_RETURN(std::string bzs, env->ReadFile(base + ".bzs"));
    ASSIGN_OR_RETURN(std::string bzv, env->ReadFile(base + ".bzv"));
    ASSIGN_OR_RETURN(std::string bzz, env->ReadFile(base + ".bzz"));
    if (bzs.size() % 12 != 0 || bzv.size() % 10 != 0) return DataLoss(base + ": index sizes are not zText's");
    std::vector<std::string> blocks;
    for (size_t k = 0; k < bzs.size(); k += 12) {
      auto p = reinterpret_cast<const unsigned char*>(bzs.data() + k);
      uint32_t offset = Le32(p), size = Le32(p + 4), usize = Le32(p + 8);
      if (static_cast<uint64_t>(offset) + size > bzz.size()) return DataLoss(base + ".bzs: block past the end");
      auto block = ZlibInflate(std::string_view(bzz).substr(offset, size));
      if (!block.ok()) return block.status().WithContext(base + ".bzz block " + std::to_string(k / 12));
      if (block->size() != usize) return DataLoss(base + ".bzz: block size mismatch");
      blocks.push_back(std::move(*block));
    }
    // Entries come in versification order; each block collects the entries stored in it
    // (a block is a book; a few modules interleave books, e.g. Greek Esther's additions).
    struct Book {
      std::string text, name;
      int verse = 0;
      bool in_chapter = false;
    };
    std::map<uint32_t, Book> books;
    Book* current = nullptr;
    for (size_t k = 0; k < bzv.size(); k += 10) {
      auto p = reinterpret_cast<const unsigned char*>(bzv.data() + k);
      uint32_t block = Le32(p), offset = Le32(p + 4), size = p[8] | (p[9] << 8);
      if (size == 0) {
        if (current) ++current->verse;  // an empty verse slot keeps the numbering
        continue;
      }
      if (block >= blocks.size() || static_cast<uint64_t>(offset) + size > blocks[block].size()) {
        return DataLoss(base + ".bzv: entry " + std::to_string(k / 10) + " points outside its block");
      }
      Book& book = books[block];
      current = &book;
      std::string_view raw = std::string_view(blocks[block]).substr(offset, size);
      size_t chapter_at = raw.find("<chapter ");
      if (chapter_at != std::string_view::npos && raw.find("sID=", chapter_at) != std::string_view::npos) {
        std::string_view tag = raw.substr(chapter_at, raw.find('>', chapter_at) - chapter_at);
        std::string osis_id = Attribute(tag, "osisID");
        if (book.name.empty() && !osis_id.empty()) book.name = osis_id.substr(0, osis_id.find('.'));
        std::string n = Attribute(tag, "n");
        std::string rest = OsisToText(raw);
        while (!book.text.empty() && book.text.back() == '\n') book.text.pop_back();
        if (!book.text.empty()) book.text += "\n\n";
        book.text += "Chapter " + (n.empty() ? osis_id : n) + "\n" + (rest.empty() ? "" : rest + "\n");
        book.verse = 0;
        book.in_chapter = true;
        continue;
      }
      ++book.verse;
      std::string t = OsisToText(raw);
      if (t.empty()) continue;
      if (book.in_chapter) {
        book.text += std::to_string(book.verse) + " " + t + "\n";
      } else {
        book.text += t + "\n\n";
      }
    }
    for (const auto& [block, book] : books) {
      std::string t = TrimCopy(book.text);
      if (t.empty()) continue;
      char num[32];
      std::snprintf(num, sizeof num, "%02u", block);
      docs.push_back({std::string(testament) + "-" + num + (book.name.empty() ? "" : "-" + book.name), t + "\n"});
    }
  }
  if (docs.empty()) return NotFound(module_dir + ": no zText books (ot.bzs / nt.bzs)");
  return docs;
}

namespace {

// dictd writes offsets and lengths as base-64 numerals (most significant digit first, in
// Base64's alphabet): left-padded with 'A' (digit 0) to whole 4-character groups they are
// Base64 text of the number's big-endian bytes.
StatusOr<uint64_t> DecodeDictdNumber(std::string_view b64) {
  auto bad = [&] { return DataLoss("bad dictd number '" + std::string(b64) + "'"); };
  if (b64.empty() || b64.size() > 10 || b64.find('=') != std::string_view::npos) return bad();  // 10 digits: 60 bits
  std::string padded((4 - b64.size() % 4) % 4, 'A');
  padded += b64;
  auto bytes = Base64Decode(padded);
  if (!bytes.ok()) return bad();
  uint64_t v = 0;
  for (unsigned char c : *bytes) v = (v << 8) | c;
  return v;
}

}  // namespace

StatusOr<std::vector<std::string>> SplitDictdEntries(std::string_view dict, std::string_view index) {
  std::map<uint64_t, uint64_t> spans;  // offset -> length, file order, each once
  size_t line_no = 0;
  for (std::string_view line : SplitLines(index)) {
    ++line_no;
    if (line.empty()) continue;
    size_t t1 = line.find('\t'), t2 = t1 == std::string_view::npos ? t1 : line.find('\t', t1 + 1);
    if (t2 == std::string_view::npos) return DataLoss("dictd index line " + std::to_string(line_no) + " has no offset");
    std::string_view head = line.substr(0, t1);
    size_t t3 = line.find('\t', t2 + 1);
    ASSIGN_OR_RETURN(uint64_t offset, DecodeDictdNumber(line.substr(t1 + 1, t2 - t1 - 1)));
    ASSIGN_OR_RETURN(uint64_t length,
                     DecodeDictdNumber(line.substr(t2 + 1, t3 == std::string_view::npos ? t3 : t3 - t2 - 1)));
    if (offset + length > dict.size()) {
      return DataLoss("dictd index line " + std::to_string(line_no) + " points past the end of the dictionary");
    }
    if (head.substr(0, 11) == "00-database" || head.substr(0, 10) == "00database") continue;
    spans.emplace(offset, length);
  }
  std::vector<std::string> entries;
  entries.reserve(spans.size());
  for (const auto& [offset, length] : spans) entries.emplace_back(dict.substr(offset, length));
  return entries;
}

std::string CleanDictEntry(std::string_view entry, bool drop_source_lines) {
  std::string out;
  for (std::string_view line : SplitLines(entry)) {
    std::string trimmed = TrimCopy(line);
    if (drop_source_lines && trimmed.size() >= 2 && trimmed.size() <= 48 && trimmed.front() == '[' &&
        trimmed.back() == ']' && trimmed.find(']') == trimmed.size() - 1) {
      continue;
    }
    std::string kept;
    for (char c : line) {
      if (c != '{' && c != '}') kept.push_back(c);
    }
    while (!kept.empty() && (kept.back() == ' ' || kept.back() == '\t' || kept.back() == '\r')) kept.pop_back();
    out += kept;
    out.push_back('\n');
  }
  // Trim blank lines at both ends; keep indentation of the first real line.
  size_t b = 0;
  while (b < out.size() && out[b] == '\n') ++b;
  size_t e = out.size();
  while (e > b && out[e - 1] == '\n') --e;
  return out.substr(b, e - b);
}

std::vector<std::string> SplitJargonEntries(std::string_view text) {
  // Paragraphs (separated by blank lines); runs of three or more one-line short paragraphs
  // are the File's word lists (tables of contents per letter) and are dropped.
  std::vector<std::string> paragraphs;
  std::string cur;
  for (std::string_view line : SplitLines(text)) {
    if (TrimCopy(line).empty()) {
      if (!cur.empty()) paragraphs.push_back(std::move(cur));
      cur.clear();
    } else {
      if (!cur.empty()) cur.push_back('\n');
      cur.append(line);
    }
  }
  if (!cur.empty()) paragraphs.push_back(std::move(cur));
  // A word-list item: one short line, not an entry head (":word:"), not a numbered
  // sense ("1. ..."), not a sentence.
  auto is_short = [](const std::string& p) {
    std::string t = TrimCopy(p);
    return p.find('\n') == std::string::npos && !t.empty() && t.size() <= 40 && t[0] != ':' &&
           !std::isdigit(static_cast<unsigned char>(t[0])) && t.back() != '.' && t.back() != ':';
  };
  std::vector<bool> drop(paragraphs.size(), false);
  for (size_t i = 0; i < paragraphs.size();) {
    size_t j = i;
    while (j < paragraphs.size() && is_short(paragraphs[j])) ++j;
    if (j - i >= 3) std::fill(drop.begin() + static_cast<long>(i), drop.begin() + static_cast<long>(j), true);
    i = j == i ? i + 1 : j;
  }
  // Sections start at an unindented heading or an entry line ("   :word: n.").
  std::vector<std::string> entries;
  std::string section;
  for (size_t i = 0; i < paragraphs.size(); ++i) {
    if (drop[i]) continue;
    const std::string& p = paragraphs[i];
    std::string t = TrimCopy(p);
    bool heading = !p.empty() && p[0] != ' ' && p[0] != '\t';
    bool entry = t.size() > 2 && t[0] == ':' && t.find(':', 1) != std::string::npos;
    if ((heading || entry) && !TrimCopy(section).empty()) {
      entries.push_back(TrimCopy(section));
      section.clear();
    }
    if (!section.empty()) section += "\n\n";
    section += p;
  }
  if (!TrimCopy(section).empty()) entries.push_back(TrimCopy(section));
  return entries;
}

StatusOr<std::vector<std::string>> ParseWordNetData(std::string_view data, std::string_view pos_name) {
  std::vector<std::string> out;
  size_t line_no = 0;
  for (std::string_view line : SplitLines(data)) {
    ++line_no;
    if (line.empty() || line[0] == ' ') continue;  // licence header lines start with two spaces
    size_t bar = line.find(" | ");
    std::string gloss = bar == std::string_view::npos ? "" : TrimCopy(line.substr(bar + 3));
    std::string_view fields = line.substr(0, bar);
    std::vector<std::string_view> tok;
    size_t s = 0;
    while (s < fields.size()) {
      size_t e = fields.find(' ', s);
      if (e == std::string_view::npos) e = fields.size();
      if (e > s) tok.push_back(fields.substr(s, e - s));
      s = e + 1;
    }
    if (tok.size() < 4) return DataLoss("WordNet data line " + std::to_string(line_no) + " is too short");
    unsigned long words = std::strtoul(std::string(tok[3]).c_str(), nullptr, 16);
    if (words == 0 || tok.size() < 4 + 2 * words) {
      return DataLoss("WordNet data line " + std::to_string(line_no) + " has a bad word count");
    }
    std::string line_out;
    for (unsigned long w = 0; w < words; ++w) {
      std::string word(tok[4 + 2 * w]);
      size_t paren = word.find('(');  // adjective markers: (a) (p) (ip)
      if (paren != std::string::npos && paren > 0 && word.back() == ')') word.resize(paren);
      std::replace(word.begin(), word.end(), '_', ' ');
      if (!line_out.empty()) line_out += ", ";
      line_out += word;
    }
    line_out += " (" + std::string(pos_name) + ")";
    if (!gloss.empty()) line_out += ": " + gloss;
    out.push_back(std::move(line_out));
  }
  return out;
}

StatusOr<std::vector<std::string>> ReadRCharacterVectors(std::string_view rdb) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos + 4 < rdb.size()) {
    auto p = reinterpret_cast<const unsigned char*>(rdb.data() + pos);
    uint32_t expected = Be32(p);
    size_t used = 0;
    auto object = ZlibInflate(rdb.substr(pos + 4), &used);
    if (!object.ok()) {
      return object.status().WithContext("R object at byte " + std::to_string(pos) +
                                         " (only zlib-compressed lazy-load data is supported)");
    }
    if (object->size() != expected) return DataLoss("R object at byte " + std::to_string(pos) + ": size mismatch");
    pos += 4 + used;
    const std::string& s = *object;
    size_t at = 0;
    auto read_int = [&](int32_t* v) {
      if (at + 4 > s.size()) return false;
      *v = static_cast<int32_t>(Be32(reinterpret_cast<const unsigned char*>(s.data() + at)));
      at += 4;
      return true;
    };
    if (s.size() < 2 || s[0] != 'X' || s[1] != '\n') continue;  // not XDR serialization
    at = 2;
    int32_t version, writer, min_reader, flags, length;
    if (!read_int(&version) || !read_int(&writer) || !read_int(&min_reader)) continue;
    if (version == 3) {
      int32_t nelen;
      if (!read_int(&nelen) || nelen < 0) continue;
      at += static_cast<size_t>(nelen);
    }
    if (!read_int(&flags) || (flags & 0xff) != 16 /* STRSXP */ || !read_int(&length) || length < 0) continue;
    std::string text;
    bool ok = true;
    for (int32_t k = 0; k < length; ++k) {
      int32_t cflags, clen;
      if (!read_int(&cflags) || (cflags & 0xff) != 9 /* CHARSXP */ || !read_int(&clen)) {
        ok = false;
        break;
      }
      if (k > 0) text.push_back('\n');
      if (clen < 0) continue;  // NA
      if (at + static_cast<size_t>(clen) > s.size()) {
        ok = false;
        break;
      }
      std::string_view bytes = std::string_view(s).substr(at, static_cast<size_t>(clen));
      at += static_cast<size_t>(clen);
      if (cflags & (1 << 14)) {  // LATIN1 mark: re-encode as UTF-8
        for (unsigned char c : bytes) {
          if (c < 0x80) {
            text.push_back(static_cast<char>(c));
          } else {
            text.push_back(static_cast<char>(0xc0 | (c >> 6)));
            text.push_back(static_cast<char>(0x80 | (c & 0x3f)));
          }
        }
      } else {
        text.append(bytes);
      }
    }
    if (ok) out.push_back(std::move(text));
  }
  return out;
}

std::vector<TextDocument> GroupEntries(const std::string& prefix, const std::vector<std::string>& entries,
                                       size_t target_bytes) {
  std::vector<TextDocument> docs;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    char num[32];
    std::snprintf(num, sizeof num, "%04zu", docs.size() + 1);
    docs.push_back({prefix + "-" + num, cur + "\n"});
    cur.clear();
  };
  for (const std::string& e : entries) {
    if (TrimCopy(e).empty()) continue;
    if (!cur.empty()) cur += "\n\n";
    cur += e;
    if (cur.size() >= target_bytes) flush();
  }
  flush();
  return docs;
}

// ---- sources ---------------------------------------------------------------------------------

const std::vector<CorpusSource>& CorpusSources() {
  static const std::vector<CorpusSource> kSources = {
      {"libpython3.11-stdlib", "code", SourceKind::kFiles, "usr/lib/python3.11", ".py", {}, "PSF-2.0", true},
      {"golang-1.19-src", "code", SourceKind::kFiles, "usr/share/go-1.19/src", ".go", {"/testdata/"},
       "BSD-3-Clause (Go)", true},
      {"python3.11-doc", "tech-docs", SourceKind::kFiles, "usr/share/doc/python3.11/html/_sources", ".rst.txt", {},
       "PSF-2.0", true},
      {"linux-doc-6.1", "tech-docs", SourceKind::kFiles, "usr/share/doc/linux-doc-6.1/Documentation", ".rst.gz", {},
       "GPL-2", true},
      {"sword-text-web", "literature", SourceKind::kSword, "usr/share/sword", "", {}, "public-domain", true},
      {"sword-text-kjv", "literature", SourceKind::kSword, "usr/share/sword", "", {}, "public-domain", true},
      {"r-cran-janeaustenr", "literature", SourceKind::kRData,
       "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb", "", {}, "MIT (texts public domain)", true},
      {"dict-gcide", "reference", SourceKind::kDictd, "usr/share/dictd", "gcide", {}, "GPL-2+", true},
      {"wordnet-base", "reference", SourceKind::kWordNet, "usr/share/wordnet", "", {}, "WordNet-3.0", true},
      {"jargon-text", "reference", SourceKind::kJargon, "usr/share/doc/jargon-text/jargon.txt.gz", "", {},
       "public-domain", true},
      {"dict-foldoc", "reference", SourceKind::kDictd, "usr/share/dictd", "foldoc", {}, "GFDL-1.1+", true},
      {"manpages-de", "german", SourceKind::kManPages, "usr/share/man/de", "", {}, "GPL-3+", true},
      {"manpages-es", "spanish", SourceKind::kManPages, "usr/share/man/es", "", {}, "GPL-3+", true},
      {"sword-text-sparv", "spanish", SourceKind::kSword, "usr/share/sword", "", {}, "public-domain", true},
      {"manpages-fr", "french", SourceKind::kManPages, "usr/share/man/fr", "", {}, "GPL-3+", false},
  };
  return kSources;
}

bool IsValidPackageName(std::string_view name) {
  if (name.size() < 2 || name.size() > 100) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(name[0])) return false;
  for (char c : name) {
    if (!alnum(c) && c != '+' && c != '-' && c != '.') return false;
  }
  return true;
}

std::string LicenceFromCopyright(std::string_view copyright) {
  for (std::string_view line : SplitLines(copyright)) {
    if (line.substr(0, 8) != "License:") continue;
    std::string v = TrimCopy(line.substr(8));
    if (!v.empty()) return v;
  }
  return "";
}

std::vector<size_t> SelectionOrder(const std::string& source_id, const std::vector<std::string>& names) {
  std::vector<std::pair<std::string, size_t>> keyed;
  keyed.reserve(names.size());
  for (size_t i = 0; i < names.size(); ++i) keyed.emplace_back(Sha256Hex(source_id + "\n" + names[i]), i);
  std::sort(keyed.begin(), keyed.end());
  std::vector<size_t> order;
  order.reserve(keyed.size());
  for (const auto& k : keyed) order.push_back(k.second);
  return order;
}

// ---- the build ---------------------------------------------------------------------------------

namespace {

// Runs argv (PATH lookup for argv[0]) without a shell: stdin /dev/null, stdout to
// `stdout_path` (or /dev/null), stderr captured (its last 2 KB end up in the error).
Status RunProgram(const std::vector<std::string>& argv, const std::string& cwd, const std::string& stdout_path) {
  int err_pipe[2];
  if (pipe2(err_pipe, O_CLOEXEC) != 0) return Internal(std::string("pipe: ") + std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  std::string out_abs = stdout_path.empty() ? "/dev/null" : fs::absolute(stdout_path).string();
  posix_spawn_file_actions_addopen(&actions, 1, out_abs.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(err_pipe[1]);
  if (rc != 0) {
    close(err_pipe[0]);
    return rc == ENOENT ? NotFound(argv[0] + " is not installed") : Internal(argv[0] + ": " + std::strerror(rc));
  }
  std::string err;
  char buf[4096];
  ssize_t n;
  while ((n = read(err_pipe[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) err.append(buf, static_cast<size_t>(n));
    if (err.size() > 8192) err.erase(0, err.size() - 2048);
  }
  close(err_pipe[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  // The last meaningful stderr line is usually the reason.
  std::string reason;
  for (std::string_view line : SplitLines(err)) {
    std::string t = TrimCopy(line);
    if (!t.empty() && t.rfind("W: ", 0) != 0) reason = t;
  }
  std::string how = WIFEXITED(status) ? "exit code " + std::to_string(WEXITSTATUS(status))
                                      : "signal " + std::to_string(WTERMSIG(status));
  return Unavailable(argv[0] + " failed (" + how + ")" + (reason.empty() ? "" : ": " + reason));
}

bool OnPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  size_t s = 0;
  while (s <= p.size()) {
    size_t e = p.find(':', s);
    if (e == std::string::npos) e = p.size();
    std::string dir = p.substr(s, e - s);
    if (!dir.empty() && access((dir + "/" + program).c_str(), X_OK) == 0) return true;
    s = e + 1;
  }
  return false;
}

std::string Mb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

std::string SafeVersion(const std::string& v) {
  std::string out;
  for (char c : v) out.push_back(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '+' || c == '~' || c == '-' ? c : '_');
  return out;
}

struct PackageInfo {
  std::string package, version, architecture, filename, sha256;
  std::string root;  // unpacked tree
  bool downloaded = false;
};

class Builder {
 public:
  explicit Builder(const CorpusBuildOptions& options) : o_(options), env_(Env::Default()) {}

  void Progress(const std::string& line) {
    if (o_.progress) {
      o_.progress(line);
    } else {
      std::cerr << line << "\n";
    }
  }

  std::string Cache(const std::string& sub) const { return JoinPath(o_.cache_dir, sub); }

  // apt's candidate versions (local metadata, no network), one apt-cache call for all:
  // each call costs about a second.
  Status LookUpCandidates(const std::vector<std::string>& packages) {
    std::vector<std::string> argv = {"apt-cache", "show", "--no-all-versions"};
    for (const std::string& p : packages) {
      if (!IsValidPackageName(p)) return InvalidArgument("'" + p + "' is not a Debian package name");
      if (!candidates_.count(p)) argv.push_back(p);
    }
    if (argv.size() == 3) return Status::Ok();
    std::string out = Cache("tmp/apt-cache-" + std::to_string(getpid()));
    Status st = RunProgram(argv, "", out);
    auto text = env_->ReadFile(out);
    env_->RemoveFile(out).IgnoreError();
    if (!st.ok()) return st;
    if (!text.ok()) return text.status();
    PackageInfo info;
    auto finish = [&] {
      if (!info.package.empty() && !info.version.empty() && !info.filename.empty() &&
          !candidates_.count(info.package)) {
        candidates_[info.package] = info;
      }
      info = PackageInfo();
    };
    for (std::string_view line : SplitLines(*text)) {
      if (line.empty()) {
        finish();
        continue;
      }
      auto field = [&](std::string_view key, std::string* v) {
        if (line.substr(0, key.size()) == key) *v = TrimCopy(line.substr(key.size()));
      };
      field("Package:", &info.package);
      field("Version:", &info.version);
      field("Architecture:", &info.architecture);
      field("Filename:", &info.filename);
      field("SHA256:", &info.sha256);
    }
    finish();
    return Status::Ok();
  }

  StatusOr<PackageInfo> Candidate(const std::string& package) {
    if (!candidates_.count(package)) {
      Status st = LookUpCandidates({package});
      if (!st.ok()) return NotFound("apt-cache cannot tell its version (" + st.message() + ")");
    }
    auto it = candidates_.find(package);
    if (it == candidates_.end()) return NotFound("apt knows no installable version of it (run apt-get update?)");
    return it->second;
  }

  // Downloads (unless cached) and unpacks the package; returns where.
  StatusOr<PackageInfo> Fetch(const std::string& package) {
    auto known = fetched_.find(package);
    if (known != fetched_.end()) return known->second;
    ASSIGN_OR_RETURN(PackageInfo info, Candidate(package));
    std::string debs = Cache("debs");
    RETURN_IF_ERROR(env_->CreateDirs(debs));
    std::string deb = JoinPath(debs, Basename(info.filename));
    bool cached = false;
    if (env_->Exists(deb)) {
      auto sum = Sha256File(deb);
      cached = sum.ok() && (info.sha256.empty() || *sum == info.sha256);
    }
    if (!cached) {
      std::string tmp = Cache("tmp/download-" + std::to_string(getpid()));
      env_->RemoveAll(tmp).IgnoreError();
      RETURN_IF_ERROR(env_->CreateDirs(tmp));
      std::vector<std::string> argv = {"apt-get", "download", "-q"};
      if (geteuid() == 0) argv.insert(argv.end(), {"-o", "APT::Sandbox::User=root"});
      argv.push_back(package + "=" + info.version);
      Status st = RunProgram(argv, tmp, "");
      if (!st.ok()) {
        env_->RemoveAll(tmp).IgnoreError();
        return Unavailable("cannot download it: " + st.message());
      }
      ASSIGN_OR_RETURN(std::vector<std::string> got, env_->ListDir(tmp));
      std::string file;
      for (const std::string& g : got)
        if (g.size() > 4 && g.substr(g.size() - 4) == ".deb") file = g;
      if (file.empty()) return Unavailable("apt-get download left no .deb");
      ASSIGN_OR_RETURN(std::string sum, Sha256File(JoinPath(tmp, file)));
      if (!info.sha256.empty() && sum != info.sha256) return DataLoss("downloaded .deb does not match apt's sha256");
      RETURN_IF_ERROR(env_->Rename(JoinPath(tmp, file), deb));
      env_->RemoveAll(tmp).IgnoreError();
      info.downloaded = true;
    }
    std::string root = Cache("extract/" + package + "_" + SafeVersion(info.version));
    if (!env_->Exists(JoinPath(root, ".fedps-complete"))) {
      std::string tmp = root + ".tmp-" + std::to_string(getpid());
      env_->RemoveAll(tmp).IgnoreError();
      env_->RemoveAll(root).IgnoreError();
      RETURN_IF_ERROR(env_->CreateDirs(tmp));
      Status st = RunProgram({"dpkg", "-x", deb, tmp}, "", "");
      if (!st.ok()) {
        env_->RemoveAll(tmp).IgnoreError();
        return DataLoss("cannot unpack " + deb + ": " + st.message());
      }
      RETURN_IF_ERROR(env_->WriteFileAtomic(JoinPath(tmp, ".fedps-complete"), info.version + "\n"));
      RETURN_IF_ERROR(env_->Rename(tmp, root));
    }
    info.root = root;
    fetched_[package] = info;
    return info;
  }

  // The package's copyright file; follows a doc folder that links to another package's.
  StatusOr<std::string> Copyright(const PackageInfo& info) {
    std::string doc = JoinPath(info.root, "usr/share/doc/" + info.package);
    std::string file = JoinPath(doc, "copyright");
    std::error_code ec;
    if (fs::is_regular_file(fs::symlink_status(file, ec))) return env_->ReadFile(file);
    if (fs::is_symlink(fs::symlink_status(doc, ec))) {
      std::string other = fs::read_symlink(doc, ec).filename().string();
      if (!ec && other != info.package && IsValidPackageName(other)) {
        auto o = Fetch(other);
        if (!o.ok()) return o.status().WithContext("copyright file comes from " + other);
        return Copyright(*o);
      }
    }
    return NotFound("package has no copyright file");
  }

  Status EnsureGroff() {
    if (groff_ok_) return Status::Ok();
    if (!OnPath("groff")) {
      if (geteuid() != 0) return FailedPrecondition("groff is not installed (apt-get install groff-base)");
      Progress("corpus: installing groff-base (to render man pages)");
      RETURN_IF_ERROR(RunProgram({"apt-get", "install", "-y", "-q", "--no-install-recommends", "groff-base"}, "", "")
                          .WithContext("apt-get install groff-base"));
    }
    groff_ok_ = true;
    return Status::Ok();
  }

  struct Unit {
    std::string name;
    std::string file;  // the package file behind it (for the files count)
    std::function<StatusOr<std::string>()> load;  // "" = nothing usable (skipped)
  };

  static std::vector<std::string> ListFiles(const std::string& root, const std::string& suffix,
                                            const std::vector<std::string>& exclude, bool man) {
    std::vector<std::string> files;
    std::error_code ec;
    if (!fs::is_directory(root, ec)) return files;
    for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      if (!it->is_regular_file(ec) || it->is_symlink(ec)) continue;
      std::string rel = fs::relative(it->path(), root, ec).string();
      if (man) {
        if (rel.rfind("man", 0) != 0 || rel.find('/') == std::string::npos) continue;
      } else if (rel.size() < suffix.size() || rel.compare(rel.size() - suffix.size(), suffix.size(), suffix) != 0) {
        continue;
      }
      bool skip = false;
      for (const std::string& x : exclude) skip = skip || ("/" + rel).find(x) != std::string::npos;
      if (!skip) files.push_back(rel);
    }
    std::sort(files.begin(), files.end());
    return files;
  }

  static StatusOr<std::string> ReadMaybeGz(const std::string& path) {
    ASSIGN_OR_RETURN(std::string raw, Env::Default()->ReadFile(path));
    if (path.size() > 3 && (path.substr(path.size() - 3) == ".gz" || path.substr(path.size() - 3) == ".dz")) {
      auto out = Gunzip(raw);
      if (!out.ok()) return out.status().WithContext(path);
      return out;
    }
    return raw;
  }

  StatusOr<std::vector<Unit>> Units(const CorpusSource& src, const PackageInfo& pkg) {
    std::vector<Unit> units;
    std::string root = JoinPath(pkg.root, src.root);
    auto eager = [&units](const std::vector<TextDocument>& docs, const std::string& file) {
      for (const TextDocument& d : docs) {
        auto text = std::make_shared<std::string>(d.text);
        units.push_back({d.name, file, [text]() -> StatusOr<std::string> { return *text; }});
      }
    };
    switch (src.kind) {
      case SourceKind::kFiles: {
        for (const std::string& rel : ListFiles(root, src.suffix, src.exclude, false)) {
          std::string path = JoinPath(root, rel);
          std::string name = rel.size() > 3 && rel.substr(rel.size() - 3) == ".gz" ? rel.substr(0, rel.size() - 3) : rel;
          units.push_back({name, rel, [path]() -> StatusOr<std::string> {
                             ASSIGN_OR_RETURN(std::string text, ReadMaybeGz(path));
                             if (!IsValidUtf8(text) || TrimCopy(text).empty()) return std::string();
                             return text;
                           }});
        }
        break;
      }
      case SourceKind::kManPages: {
        RETURN_IF_ERROR(EnsureGroff());
        // The folder name carries the renderer settings' version: change it with the groff flags.
        std::string render = Cache("render/" + pkg.package + "_" + SafeVersion(pkg.version) + "-r2");
        RETURN_IF_ERROR(env_->CreateDirs(render));
        for (const std::string& rel : ListFiles(root, "", {}, true)) {
          std::string path = JoinPath(root, rel);
          std::string name = rel.size() > 3 && rel.substr(rel.size() - 3) == ".gz" ? rel.substr(0, rel.size() - 3) : rel;
          std::string cached = JoinPath(render, Sha256Hex(rel).substr(0, 32) + ".txt");
          units.push_back({name, rel, [path, cached]() -> StatusOr<std::string> { return RenderManPage(path, cached); }});
        }
        break;
      }
      case SourceKind::kSword: {
        std::string confs = JoinPath(root, "mods.d");
        ASSIGN_OR_RETURN(std::vector<std::string> names, env_->ListDir(confs));
        for (const std::string& conf_name : names) {
          if (conf_name.size() < 6 || conf_name.substr(conf_name.size() - 5) != ".conf") continue;
          ASSIGN_OR_RETURN(std::string conf, env_->ReadFile(JoinPath(confs, conf_name)));
          std::string data_path, driver;
          for (std::string_view line : SplitLines(conf)) {
            if (line.rfind("DataPath=", 0) == 0) data_path = TrimCopy(line.substr(9));
            if (line.rfind("ModDrv=", 0) == 0) driver = TrimCopy(line.substr(7));
          }
          if (driver != "zText" || data_path.empty() || data_path.find("..") != std::string::npos) {
            return Unimplemented(conf_name + ": only zText modules are supported (ModDrv=" + driver + ")");
          }
          if (data_path.rfind("./", 0) == 0) data_path = data_path.substr(2);
          std::string module = conf_name.substr(0, conf_name.size() - 5);
          ASSIGN_OR_RETURN(std::vector<TextDocument> docs, ReadSwordZText(JoinPath(root, data_path)));
          for (TextDocument& d : docs) d.name = module + "/" + d.name;
          eager(docs, data_path);
        }
        break;
      }
      case SourceKind::kDictd: {
        ASSIGN_OR_RETURN(std::string index, env_->ReadFile(JoinPath(root, src.suffix + ".index")));
        ASSIGN_OR_RETURN(std::string dict, ReadMaybeGz(JoinPath(root, src.suffix + ".dict.dz")));
        ASSIGN_OR_RETURN(std::vector<std::string> entries, SplitDictdEntries(dict, index));
        for (std::string& e : entries) e = CleanDictEntry(e, true);
        eager(GroupEntries(src.suffix, entries, 32 * 1024), src.suffix + ".dict.dz");
        break;
      }
      case SourceKind::kJargon: {
        ASSIGN_OR_RETURN(std::string text, ReadMaybeGz(root));
        eager(GroupEntries("jargon", SplitJargonEntries(text), 32 * 1024), Basename(root));
        break;
      }
      case SourceKind::kWordNet: {
        for (const auto& [file, pos] : std::vector<std::pair<std::string, std::string>>{
                 {"data.noun", "noun"}, {"data.verb", "verb"}, {"data.adj", "adjective"}, {"data.adv", "adverb"}}) {
          ASSIGN_OR_RETURN(std::string data, env_->ReadFile(JoinPath(root, file)));
          auto lines = ParseWordNetData(data, pos);
          if (!lines.ok()) return lines.status().WithContext(file);
          eager(GroupEntries(pos, *lines, 32 * 1024), file);
        }
        break;
      }
      case SourceKind::kRData: {
        ASSIGN_OR_RETURN(std::string rdb, env_->ReadFile(root));
        ASSIGN_OR_RETURN(std::vector<std::string> texts, ReadRCharacterVectors(rdb));
        std::vector<TextDocument> docs;
        for (std::string& t : texts) {
          std::string title;
          for (std::string_view line : SplitLines(t)) {
            title = TrimCopy(line);
            if (!title.empty()) break;
          }
          std::string slug;
          for (char c : title) {
            if (std::isalnum(static_cast<unsigned char>(c))) slug.push_back(static_cast<char>(std::tolower(c)));
            else if (!slug.empty() && slug.back() != '-') slug.push_back('-');
          }
          while (!slug.empty() && slug.back() == '-') slug.pop_back();
          if (slug.empty()) slug = "text-" + std::to_string(docs.size() + 1);
          if (!IsValidUtf8(t) || TrimCopy(t).empty()) continue;
          docs.push_back({slug, TrimCopy(t) + "\n"});
        }
        eager(docs, Basename(root));
        break;
      }
    }
    if (units.empty()) return NotFound("no text found under " + src.root);
    return units;
  }

  static StatusOr<std::string> RenderManPage(const std::string& path, const std::string& cached) {
    Env* env = Env::Default();
    if (env->Exists(cached)) return env->ReadFile(cached);
    ASSIGN_OR_RETURN(std::string source, ReadMaybeGz(path));
    std::string t = TrimCopy(source);
    std::string rendered;
    if (!(t.rfind(".so ", 0) == 0 && t.find('\n') == std::string::npos) && IsValidUtf8(source)) {
      std::string in = cached + ".in", out = cached + ".out";
      // Ragged right and no hyphenation: justified text would scatter double spaces.
      RETURN_IF_ERROR(env->WriteFileAtomic(in, ".ad l\n.nh\n" + source));
      Status st = RunProgram({"groff", "-k", "-Kutf8", "-man", "-Tutf8", "-rHY=0", "-P-cbou", in}, "", out);
      env->RemoveFile(in).IgnoreError();
      if (st.ok()) {
        ASSIGN_OR_RETURN(std::string raw, env->ReadFile(out));
        if (IsValidUtf8(raw)) {
          // Trim trailing blanks of each line; at most one blank line in a row.
          std::string tidy;
          int blanks = 0;
          for (std::string_view line : SplitLines(raw)) {
            std::string l(line);
            while (!l.empty() && (l.back() == ' ' || l.back() == '\r')) l.pop_back();
            if (l.empty()) {
              if (++blanks > 1 || tidy.empty()) continue;
            } else {
              blanks = 0;
            }
            tidy += l + "\n";
          }
          rendered = TrimCopy(tidy).empty() ? "" : tidy;
        }
      }
      env->RemoveFile(out).IgnoreError();
    }
    // Cached even when empty, so an unrenderable page is not retried every build.
    RETURN_IF_ERROR(env->WriteFileAtomic(cached, rendered));
    return rendered;
  }

  StatusOr<CorpusReport> Run();

 private:
  // Builds one source into `domain_dir`; budget 0 = no cap.
  StatusOr<SourceReport> BuildSource(const CorpusSource& src, const std::string& domain_dir, int64_t budget);

  const CorpusBuildOptions& o_;
  Env* env_;
  std::map<std::string, PackageInfo> candidates_;
  std::map<std::string, PackageInfo> fetched_;
  bool groff_ok_ = false;
};

StatusOr<SourceReport> Builder::BuildSource(const CorpusSource& src, const std::string& domain_dir, int64_t budget) {
  auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(PackageInfo pkg, Fetch(src.id));
  Progress("corpus: " + src.id + " " + pkg.version + (pkg.downloaded ? " downloaded" : " (cached)"));
  ASSIGN_OR_RETURN(std::string copyright, Copyright(pkg));
  ASSIGN_OR_RETURN(std::vector<Unit> units, Units(src, pkg));
  std::vector<std::string> names;
  for (const Unit& u : units) names.push_back(u.name);
  SourceReport r;
  r.id = src.id;
  r.domain = src.domain;
  r.package = pkg.package;
  r.version = pkg.version;
  r.downloaded = pkg.downloaded;
  r.licence = src.licence;
  std::map<size_t, std::string> picked;  // unit index -> text, in original order
  int misses = 0;
  for (size_t idx : SelectionOrder(src.id, names)) {
    if (budget > 0 && r.bytes >= budget) break;
    auto text = units[idx].load();
    if (!text.ok() || text->empty()) {
      ++r.skipped;
      continue;
    }
    auto size = static_cast<int64_t>(text->size());
    if (budget > 0 && r.bytes + size > budget) {
      if (++misses >= 64) break;  // the rest of the share stays unused
      continue;
    }
    misses = 0;
    r.bytes += size;
    picked.emplace(idx, std::move(*text));
  }
  if (picked.empty()) return NotFound("no usable documents");
  std::string jsonl;
  std::set<std::string> files;
  for (const auto& [idx, text] : picked) {
    nlohmann::json line = {{"name", units[idx].name}, {"text", text}};
    jsonl += line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    jsonl.push_back('\n');
    files.insert(units[idx].file);
  }
  r.documents = static_cast<int64_t>(picked.size());
  r.files = static_cast<int64_t>(files.size());
  r.file = src.domain + "/" + src.id + ".jsonl";
  r.sha256 = Sha256Hex(jsonl);
  RETURN_IF_ERROR(env_->WriteFileAtomic(JoinPath(domain_dir, src.id + ".jsonl"), jsonl));
  RETURN_IF_ERROR(env_->WriteFileAtomic(JoinPath(domain_dir, "COPYRIGHT-" + src.id), copyright));
  std::string field = LicenceFromCopyright(copyright);
  if (!field.empty() && field.size() < 80) r.licence += " (copyright file: " + field + ")";
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  char line[256];
  std::snprintf(line, sizeof line, "corpus: %s -> %s: %s, %lld documents%s (%.1f s)", src.id.c_str(), r.file.c_str(),
                Mb(r.bytes).c_str(), static_cast<long long>(r.documents),
                r.skipped ? (", " + std::to_string(r.skipped) + " unusable units skipped").c_str() : "", secs);
  Progress(line);
  return r;
}

StatusOr<CorpusReport> Builder::Run() {
  if (o_.out_dir.empty()) return InvalidArgument("--out is required");
  std::string out = fs::path(o_.out_dir).lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  // The output must be new, empty, or an earlier corpus (it is replaced whole).
  if (env_->IsDirectory(out)) {
    ASSIGN_OR_RETURN(std::vector<std::string> entries, env_->ListDir(out));
    if (!entries.empty() && !env_->Exists(JoinPath(out, "corpus.json")) && !o_.force) {
      return FailedPrecondition(out + " is not empty and holds no corpus.json (use --force to replace it)");
    }
  } else if (env_->Exists(out)) {
    return FailedPrecondition(out + " exists and is not a folder");
  }
  // Which sources, grouped by domain in table order.
  const auto& all = CorpusSources();
  std::vector<const CorpusSource*> chosen;
  if (o_.sources.empty()) {
    for (const auto& s : all)
      if (s.in_default) chosen.push_back(&s);
  } else {
    std::set<std::string> wanted(o_.sources.begin(), o_.sources.end());
    for (const std::string& w : wanted) {
      bool known = std::any_of(all.begin(), all.end(), [&](const CorpusSource& s) { return s.id == w; });
      if (!known) return InvalidArgument("unknown source '" + w + "' (see `fedps-ctl corpus build --list`)");
    }
    for (const auto& s : all)
      if (wanted.count(s.id)) chosen.push_back(&s);
  }
  std::vector<std::string> domains;
  for (const CorpusSource* s : chosen)
    if (std::find(domains.begin(), domains.end(), s->domain) == domains.end()) domains.push_back(s->domain);

  RETURN_IF_ERROR(env_->CreateDirs(Cache("tmp")));
  {
    std::vector<std::string> packages;
    for (const CorpusSource* s : chosen) packages.push_back(s->id);
    Status st = LookUpCandidates(packages);
    if (!st.ok()) Progress("corpus: apt-cache failed (" + st.message() + "); trying package by package");
  }
  std::string staging = out + ".partial";
  RETURN_IF_ERROR(env_->RemoveAll(staging));
  RETURN_IF_ERROR(env_->CreateDirs(staging));

  CorpusReport report;
  nlohmann::json domains_json = nlohmann::json::array(), sources_json = nlohmann::json::array(),
                 unavailable_json = nlohmann::json::array();
  std::vector<std::string> built_domains;
  for (const std::string& domain : domains) {
    std::vector<const CorpusSource*> in_domain;
    for (const CorpusSource* s : chosen)
      if (s->domain == domain) in_domain.push_back(s);
    std::string dir = JoinPath(staging, domain);
    RETURN_IF_ERROR(env_->CreateDirs(dir));
    int64_t remaining = o_.max_bytes_per_domain;
    int64_t bytes = 0, documents = 0;
    nlohmann::json ids = nlohmann::json::array();
    for (size_t i = 0; i < in_domain.size(); ++i) {
      const CorpusSource& src = *in_domain[i];
      int64_t share = o_.max_bytes_per_domain > 0 ? remaining / static_cast<int64_t>(in_domain.size() - i) : 0;
      if (o_.max_bytes_per_domain > 0 && share <= 0) break;
      auto r = BuildSource(src, dir, share);
      if (!r.ok()) {
        // One line per source that cannot be had; the rest of the corpus goes on.
        Progress("corpus: skipping " + src.id + ": " + r.status().message());
        report.unavailable.push_back(src.id + ": " + r.status().message());
        unavailable_json.push_back({{"id", src.id}, {"domain", domain}, {"reason", r.status().message()}});
        continue;
      }
      remaining -= r->bytes;
      bytes += r->bytes;
      documents += r->documents;
      ids.push_back(src.id);
      sources_json.push_back({{"id", r->id},
                              {"domain", r->domain},
                              {"package", r->package},
                              {"version", r->version},
                              {"licence", r->licence},
                              {"copyright", domain + "/COPYRIGHT-" + r->package},
                              {"file", r->file},
                              {"files", r->files},
                              {"documents", r->documents},
                              {"bytes", r->bytes},
                              {"sha256", r->sha256}});
      report.sources.push_back(*r);
    }
    if (ids.empty()) {
      RETURN_IF_ERROR(env_->RemoveAll(dir));
      continue;
    }
    built_domains.push_back(domain);
    domains_json.push_back({{"name", domain},
                            {"held_out", domain == o_.held_out_domain},
                            {"documents", documents},
                            {"bytes", bytes},
                            {"sources", ids}});
  }
  if (report.sources.empty()) {
    env_->RemoveAll(staging).IgnoreError();
    return Unavailable("no source could be built (" + std::to_string(report.unavailable.size()) +
                       " unavailable; see the lines above)");
  }
  bool held_out_present =
      std::find(built_domains.begin(), built_domains.end(), o_.held_out_domain) != built_domains.end();
  if (!o_.held_out_domain.empty() && !held_out_present) {
    Progress("corpus: held-out domain '" + o_.held_out_domain + "' is not in this corpus; none is held out");
  }
  report.held_out_domain = held_out_present ? o_.held_out_domain : "";
  nlohmann::json training = nlohmann::json::array();
  for (const std::string& d : built_domains)
    if (d != report.held_out_domain) training.push_back(d);
  nlohmann::json corpus = {
      {"format", "fedps-corpus-1"},
      {"held_out_domain", held_out_present ? nlohmann::json(o_.held_out_domain) : nlohmann::json(nullptr)},
      {"training_domains", training},
      {"max_bytes_per_domain", o_.max_bytes_per_domain},
      {"domains", domains_json},
      {"sources", sources_json},
      {"unavailable", unavailable_json},
  };
  RETURN_IF_ERROR(env_->WriteFileAtomic(JoinPath(staging, "corpus.json"), corpus.dump(2) + "\n"));
  // Swap the finished corpus into place.
  std::string old = out + ".old";
  RETURN_IF_ERROR(env_->RemoveAll(old));
  if (env_->Exists(out)) RETURN_IF_ERROR(env_->Rename(out, old));
  RETURN_IF_ERROR(env_->Rename(staging, out));
  RETURN_IF_ERROR(env_->RemoveAll(old));
  return report;
}

}  // namespace

StatusOr<CorpusReport> BuildCorpus(const CorpusBuildOptions& options) {
  Builder builder(options);
  try {
    return builder.Run();
  } catch (const std::exception& e) {
    return Internal(std::string("corpus build: ") + e.what());
  }
}

}  // namespace fedps::tools
