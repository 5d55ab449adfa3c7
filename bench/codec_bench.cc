// codec_bench: encode and decode throughput and compression ratio of the codecs.
//
// Input: Gaussian noise (pseudo-gradient-like), --n values (default 64M), sigma 1e-3.
// For each codec and each thread count (1 and --threads, default the codec's automatic
// choice), it times Encode (fresh frames each repetition, as a client does), Encode with
// error feedback (a residual of the same length), and DecodeAll into a preallocated
// slice; each figure is the median of --reps repetitions after one warm-up.
// Throughputs are GB/s of fp32 input (4 bytes per value, 1 GB = 1e9 bytes), so they
// compare directly with the memcpy line (the same bytes copied). The "/cpu" columns
// divide by the process's CPU seconds instead of wall seconds: GB/s per busy core, which
// stays meaningful on a shared, loaded machine where wall-clock figures do not.
// ratio = fp32 bytes / encoded bytes (frame headers included).
//
//   codec_bench [--n 67108864] [--reps 5] [--threads 0] [--levels 1] [--hash-log 6]
//               [--codecs fp32,bf16,int8,topk] [--chunk 1048576] [--json FILE]
#include <time.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "compression/codec.h"

namespace fedps {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct Timing {
  double wall = 0;  // median wall seconds
  double cpu = 0;   // median CPU seconds of the whole process (all threads)
};

// Runs fn once to warm up, then `reps` times; returns the medians.
template <typename Fn>
Timing TimeMedian(int reps, Fn&& fn) {
  fn();
  std::vector<double> wall, cpu;
  for (int r = 0; r < reps; ++r) {
    const double c0 = ProcessCpuSeconds();
    const auto t0 = Clock::now();
    fn();
    wall.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    cpu.push_back(ProcessCpuSeconds() - c0);
  }
  return {Median(wall), Median(cpu)};
}

std::vector<float> GaussianNoise(size_t n, float sigma) {
  std::vector<float> v(n);
  const unsigned parts = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (unsigned p = 0; p < parts; ++p) {
    threads.emplace_back([&, p] {
      std::mt19937_64 rng(1000 + p);
      std::normal_distribution<float> d(0.0f, sigma);
      for (size_t i = n * p / parts; i < n * (p + 1) / parts; ++i) v[i] = d(rng);
    });
  }
  for (std::thread& t : threads) t.join();
  return v;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int Run(int argc, char** argv) {
  CLI::App app{"fedps codec benchmark"};
  int64_t n = int64_t{1} << 26;
  int reps = 5;
  int threads = 0;
  int64_t chunk = int64_t{1} << 20;
  std::string levels_flag = "1";
  int hash_log = CodecOptions{}.zstd_hash_log;
  std::string codecs_flag = "fp32,bf16,int8,topk";
  std::string json_path;
  app.add_option("--n", n, "values in the slice")->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "timed repetitions (median)")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "threads of the parallel line (0 = codec's automatic)");
  app.add_option("--chunk", chunk, "values per frame");
  app.add_option("--levels", levels_flag, "zstd levels, comma-separated");
  app.add_option("--codecs", codecs_flag, "codecs, comma-separated");
  app.add_option("--hash-log", hash_log, "zstd hash log (0 = the level's default)");
  app.add_option("--json", json_path, "write results as JSON here");
  CLI11_PARSE(app, argc, argv);

  const std::vector<float> values = GaussianNoise(static_cast<size_t>(n), 1e-3f);
  const double bytes = 4.0 * static_cast<double>(n);
  std::vector<float> out(values.size());

  nlohmann::json results = nlohmann::json::array();
  std::vector<std::string> table;
  char line[256];

  // Reference: memcpy of the same bytes (destination already touched).
  std::memcpy(out.data(), values.data(), static_cast<size_t>(bytes));
  const Timing mc =
      TimeMedian(reps, [&] { std::memcpy(out.data(), values.data(), static_cast<size_t>(bytes)); });
  const double memcpy_gbps = bytes / mc.wall / 1e9;
  const double memcpy_cpu_gbps = bytes / mc.cpu / 1e9;
  std::snprintf(line, sizeof(line), "%-6s %5s %7s %7.2f %7s %7.2f %8.2f %8.2f %7s", "memcpy", "-",
                "1", memcpy_gbps, "-", memcpy_gbps, memcpy_cpu_gbps, memcpy_cpu_gbps, "1.000");
  table.push_back(line);
  results.push_back({{"codec", "memcpy"},
                     {"threads", 1},
                     {"gbps", memcpy_gbps},
                     {"gbps_per_cpu", memcpy_cpu_gbps}});

  for (const std::string& codec_name : Split(codecs_flag)) {
    StatusOr<CodecKind> kind = ParseCodecKind(codec_name);
    if (!kind.ok()) {
      std::fprintf(stderr, "%s\n", kind.status().ToString().c_str());
      return 2;
    }
    for (const std::string& level_text : Split(levels_flag)) {
      const int level = std::stoi(level_text);
      std::vector<int> thread_counts = {1};
      CodecOptions probe;
      probe.threads = threads;
      StatusOr<std::unique_ptr<Codec>> auto_codec = Codec::Create(probe);
      if (!auto_codec.ok()) {
        std::fprintf(stderr, "%s\n", auto_codec.status().ToString().c_str());
        return 2;
      }
      if ((*auto_codec)->parallelism() > 1) thread_counts.push_back((*auto_codec)->parallelism());
      for (int t : thread_counts) {
        CodecOptions o;
        o.kind = *kind;
        o.zstd_level = level;
        o.zstd_hash_log = hash_log;
        o.threads = t;
        o.chunk_elements = chunk;
        StatusOr<std::unique_ptr<Codec>> codec = Codec::Create(o);
        if (!codec.ok()) {
          std::fprintf(stderr, "%s\n", codec.status().ToString().c_str());
          return 2;
        }
        std::vector<std::string> frames;
        Status status;
        const Timing enc = TimeMedian(reps, [&] {
          StatusOr<std::vector<std::string>> f = (*codec)->Encode(values);
          if (!f.ok()) status = f.status();
          frames = f.ok() ? std::move(f).value() : std::vector<std::string>{};
        });
        std::vector<float> residual(values.size(), 0.0f);
        const Timing enc_ef = TimeMedian(reps, [&] {
          StatusOr<std::vector<std::string>> f = (*codec)->Encode(values, residual);
          if (!f.ok()) status = f.status();
        });
        const Timing dec = TimeMedian(reps, [&] {
          Status s = (*codec)->DecodeAll(frames, out);
          if (!s.ok()) status = s;
        });
        if (!status.ok()) {
          std::fprintf(stderr, "%s\n", status.ToString().c_str());
          return 1;
        }
        const double ratio = bytes / static_cast<double>(Codec::TotalBytes(frames));
        std::snprintf(line, sizeof(line), "%-6s %5d %7d %7.2f %7.2f %7.2f %8.2f %8.2f %7.3f",
                      codec_name.c_str(), level, t, bytes / enc.wall / 1e9,
                      bytes / enc_ef.wall / 1e9, bytes / dec.wall / 1e9, bytes / enc.cpu / 1e9,
                      bytes / dec.cpu / 1e9, ratio);
        table.push_back(line);
        results.push_back({{"codec", codec_name},
                           {"zstd_level", level},
                           {"zstd_hash_log", hash_log},
                           {"threads", t},
                           {"encode_gbps", bytes / enc.wall / 1e9},
                           {"encode_feedback_gbps", bytes / enc_ef.wall / 1e9},
                           {"decode_gbps", bytes / dec.wall / 1e9},
                           {"encode_gbps_per_cpu", bytes / enc.cpu / 1e9},
                           {"encode_feedback_gbps_per_cpu", bytes / enc_ef.cpu / 1e9},
                           {"decode_gbps_per_cpu", bytes / dec.cpu / 1e9},
                           {"ratio_vs_fp32", ratio},
                           {"frames", frames.size()},
                           {"encoded_bytes", Codec::TotalBytes(frames)}});
        std::fprintf(stderr, "%s\n", line);
      }
    }
  }

  if (!json_path.empty()) {
    nlohmann::json doc = {
        {"bench", "codec_bench"}, {"values", n},
        {"sigma", 1e-3},          {"chunk_elements", chunk},
        {"reps", reps},           {"hardware_concurrency", std::thread::hardware_concurrency()},
        {"results", results}};
    std::ofstream f(json_path);
    f << doc.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  std::printf("\ncodec_bench: %lld values (%.0f MB fp32), Gaussian sigma 1e-3, median of %d\n",
              static_cast<long long>(n), bytes / 1e6, reps);
  std::printf("GB/s of fp32 input (wall; /cpu = per busy core); ratio = fp32 bytes / encoded\n");
  std::printf("%-6s %5s %7s %7s %7s %7s %8s %8s %7s\n", "codec", "level", "threads", "enc",
              "enc+ef", "dec", "enc/cpu", "dec/cpu", "ratio");
  for (const std::string& l : table) std::printf("%s\n", l.c_str());
  return 0;
}

}  // namespace
}  // namespace fedps

int main(int argc, char** argv) { return fedps::Run(argc, argv); }
