// parnasc's native multicore executor: phases of ONNX Runtime sessions over pinned lanes.
//
// One process, one thread per lane: lane 0 is the calling thread (pinned to its CPU for the
// duration of a run when the plan has several lanes), lanes 1.. are std::threads pinned to
// their CPUs.  Each lane runs its segments (ORT sessions, usually of one intra-op thread) phase
// by phase; a lane starts a segment of phase k once every segment of phase k-1 has finished
// (counters per phase, compared against the run number, so nothing is reset between runs).
// Waits spin for a bounded time (pause instructions) and then sleep on a futex, so an idle
// runtime uses no CPU; a notifier calls FUTEX_WAKE only when someone sleeps.
//
// Tensors are shared in place: the caller's input buffer and output buffer are wrapped as
// OrtValues (no copies), intermediate tensors live in buffers allocated once per input shape
// (pn_prepare) and are passed to ORT as pre-allocated outputs, then read by the next phase's
// sessions where they lie.
//
// ONNX Runtime is reached through its C API only: the library is dlopen'ed by path (the one the
// Python wheel ships) and OrtGetApiBase()->GetApi(ORT_API_VERSION) gives the function table.
// Built by parnasc/deploy/native.py (g++ -std=c++20 -O2 -shared); the headers are fetched at
// set-up into a cache outside the repository and never committed.
//
// Every entry point returns 0 on success or -1 with a one-line message in err (never throws
// across the C boundary).  A handle is used by one caller at a time (the Python wrapper holds a
// lock); pn_close joins every thread it started.

#include <onnxruntime_c_api.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <linux/futex.h>
#include <map>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <sched.h>
#include <string>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax() { asm volatile("yield" ::: "memory"); }
#else
static inline void cpu_relax() {}
#endif

namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

void set_err(char* err, int len, const std::string& msg) {
  if (err && len > 0) std::snprintf(err, static_cast<size_t>(len), "%s", msg.c_str());
}

// ----------------------------------------------------------------------------------------------
// ORT library, loaded once per process and never unloaded (ORT does not support unloading).
// ----------------------------------------------------------------------------------------------

std::mutex g_lib_mutex;
const OrtApi* g_api = nullptr;
std::string g_lib_path;

const OrtApi* load_api(const char* path, std::string& why) {
  std::lock_guard<std::mutex> lock(g_lib_mutex);
  if (g_api) {
    if (g_lib_path != path) {
      why = "ONNX Runtime already loaded from " + g_lib_path;
      return nullptr;
    }
    return g_api;
  }
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* e = dlerror();
    why = std::string("cannot load ") + path + ": " + (e ? e : "unknown error");
    return nullptr;
  }
  using GetApiBase = const OrtApiBase* (*)();
  auto base_fn = reinterpret_cast<GetApiBase>(dlsym(lib, "OrtGetApiBase"));
  if (!base_fn) {
    why = std::string(path) + " has no OrtGetApiBase";
    return nullptr;
  }
  const OrtApi* api = base_fn()->GetApi(ORT_API_VERSION);
  if (!api) {
    why = std::string("ONNX Runtime ") + base_fn()->GetVersionString() +
          " does not offer C API version " + std::to_string(ORT_API_VERSION);
    return nullptr;
  }
  g_api = api;
  g_lib_path = path;
  return api;
}

// An OrtStatus as a message (and released); empty for success.
std::string status_msg(const OrtApi* api, OrtStatus* st) {
  if (!st) return "";
  std::string m = api->GetErrorMessage(st);
  api->ReleaseStatus(st);
  for (char& c : m)
    if (c == '\n' || c == '\r') c = ' ';
  return m.empty() ? "ONNX Runtime error" : m;
}

// ----------------------------------------------------------------------------------------------
// futex waits
// ----------------------------------------------------------------------------------------------

long futex(std::atomic<uint32_t>* addr, int op, uint32_t val, const timespec* ts) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), op, val, ts, nullptr, 0);
}

// A counter others wait on: waits spin up to spin_ns, then sleep; bump() wakes sleepers only.
struct Signal {
  alignas(64) std::atomic<uint32_t> value{0};
  std::atomic<uint32_t> sleepers{0};

  void bump() {
    value.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) != 0)
      futex(&value, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr);
  }
  void set(uint32_t v) {
    value.store(v, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) != 0)
      futex(&value, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr);
  }
  // Wait until value - target >= 0 (mod 2^32) or *stop; returns the time spent (ns).
  template <typename Stop>
  void wait_reach(uint32_t target, int64_t spin_ns, Stop stop) {
    auto reached = [&] {
      return static_cast<int32_t>(value.load(std::memory_order_acquire) - target) >= 0;
    };
    if (reached()) return;
    if (spin_ns > 0) {
      const int64_t end = now_ns() + spin_ns;
      while (true) {
        for (int k = 0; k < 64; ++k) {
          if (reached()) return;
          cpu_relax();
        }
        if (stop() || now_ns() > end) break;
      }
    }
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    const timespec slice{0, 50'000'000};  // re-check every 50 ms (a wake-up is never lost)
    while (true) {
      const uint32_t v = value.load(std::memory_order_seq_cst);
      if (static_cast<int32_t>(v - target) >= 0 || stop()) break;
      futex(&value, FUTEX_WAIT_PRIVATE, v, &slice);
    }
    sleepers.fetch_sub(1, std::memory_order_seq_cst);
  }
};

// ----------------------------------------------------------------------------------------------
// the executor
// ----------------------------------------------------------------------------------------------

struct Tensor {
  std::string name;
  int producer = -1;  // segment index; -1: the model input (or a parent of views)
  std::vector<int64_t> shape;
  float* data = nullptr;  // owned (intermediates, parents) or the caller's (input / output)
  bool owned = false;     // data was allocated here (views point into their parent)
  size_t bytes = 0;
  OrtValue* value = nullptr;
  // views: a tensor written in place into part of a parent tensor (element offset)
  int parent = -1;
  int64_t offset = 0;
  std::vector<int> views;  // of a parent: its views
  std::vector<int64_t> declared;  // of a parent: its shape
};

struct Segment {
  OrtSession* sess = nullptr;
  int phase = 0, lane = 0, threads = 1;
  std::vector<std::string> in_names, out_names;
  std::vector<const char*> in_c, out_c;
  std::vector<int> in_t, out_t;  // tensor indices
  std::vector<const OrtValue*> in_v;
  std::vector<OrtValue*> out_v;
  int64_t t0 = 0, t1 = 0;  // last run's start / end (ns since the run's start), if timing
};

struct Exec {
  const OrtApi* api = nullptr;
  OrtEnv* env = nullptr;
  OrtMemoryInfo* mem = nullptr;
  int n_lanes = 1;
  std::vector<int> cpus;
  bool pin = true, pin_caller = true;
  int64_t spin_run_ns = 0, spin_idle_ns = 0;
  std::vector<Segment> segs;
  std::vector<Tensor> tensors;
  std::map<std::string, int> tensor_ix;
  int input_t = -1, output_t = -1;
  int n_phases = 0;
  std::vector<int> phase_size;        // segments per phase
  std::vector<bool> phase_multi;      // a segment of the phase has intra-op helper threads
  std::vector<std::vector<int>> work;  // per lane: its segment indices in phase order
  std::unique_ptr<Signal[]> done;     // per phase: segments finished (cumulative)
  Signal start;                        // run number
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  bool finalized = false, prepared = false;
  std::vector<int64_t> in_shape;
  std::mutex err_mutex;
  std::string run_error;
  std::atomic<bool> failed{false};
  bool timing = false;
  int64_t run_t0 = 0;
  std::vector<int64_t> lane_wait_ns;  // last run: time each lane spent waiting on barriers

  ~Exec() {
    stop.store(true);
    start.bump();
    if (done)
      for (int k = 0; k < n_phases; ++k) done[k].bump();
    for (auto& t : threads)
      if (t.joinable()) t.join();
    if (!api) return;
    for (auto& t : tensors) {
      if (t.value) api->ReleaseValue(t.value);
      if (t.owned) std::free(t.data);
    }
    for (auto& s : segs)
      if (s.sess) api->ReleaseSession(s.sess);
    if (mem) api->ReleaseMemoryInfo(mem);
    if (env) api->ReleaseEnv(env);
  }

  int64_t spin_for(int phase) const {
    // A barrier in front of a phase whose helper threads use other lanes' CPUs sleeps at once:
    // spinning there would take a CPU from ORT's helpers.
    return phase < n_phases && phase_multi[phase] ? 0 : spin_run_ns;
  }

  void fail(const std::string& m) {
    std::lock_guard<std::mutex> lock(err_mutex);
    if (run_error.empty()) run_error = m;
    failed.store(true);
  }

  void run_segment(Segment& s) {
    if (timing) s.t0 = now_ns() - run_t0;
    if (!failed.load(std::memory_order_relaxed)) {
      for (size_t i = 0; i < s.in_t.size(); ++i) s.in_v[i] = tensors[s.in_t[i]].value;
      for (size_t i = 0; i < s.out_t.size(); ++i) s.out_v[i] = tensors[s.out_t[i]].value;
      OrtStatus* st = api->Run(s.sess, nullptr, s.in_c.data(), s.in_v.data(), s.in_c.size(),
                               s.out_c.data(), s.out_c.size(), s.out_v.data());
      if (st) fail("segment " + std::to_string(&s - segs.data()) + ": " + status_msg(api, st));
    }
    if (timing) s.t1 = now_ns() - run_t0;
  }

  // Run lane `lane`'s segments of run number `run`.
  void run_lane(int lane, uint32_t run) {
    int64_t waited = 0;
    const std::vector<int>& mine = work[lane];
    for (size_t j = 0; j < mine.size(); ++j) {
      Segment& s = segs[mine[j]];
      if (s.phase > 0) {
        const int64_t w0 = timing ? now_ns() : 0;
        const uint32_t target = run * static_cast<uint32_t>(phase_size[s.phase - 1]);
        done[s.phase - 1].wait_reach(target, spin_for(s.phase - 1),
                                     [this] { return stop.load(std::memory_order_relaxed); });
        if (timing) waited += now_ns() - w0;
      }
      if (!stop.load(std::memory_order_relaxed)) run_segment(s);
      // written before the last bump, so the caller reads it after the run
      if (timing && j + 1 == mine.size()) lane_wait_ns[lane] = waited;
      done[s.phase].bump();
    }
  }

  void worker(int lane) {
    char name[16];
    std::snprintf(name, sizeof name, "parnasc-lane%d", lane);
    pthread_setname_np(pthread_self(), name);
    if (pin) pin_to(cpus[lane]);
    uint32_t seen = 0;
    while (true) {
      start.wait_reach(seen + 1, spin_idle_ns,
                       [this] { return stop.load(std::memory_order_relaxed); });
      if (stop.load()) return;
      seen = start.value.load(std::memory_order_acquire);
      run_lane(lane, seen);
    }
  }

  static bool pin_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
  }
};

std::string check_ort(Exec* ex, OrtStatus* st, const char* what) {
  std::string m = status_msg(ex->api, st);
  return m.empty() ? m : std::string(what) + ": " + m;
}

int tensor_of(Exec* ex, const std::string& name) {
  auto it = ex->tensor_ix.find(name);
  if (it != ex->tensor_ix.end()) return it->second;
  Tensor t;
  t.name = name;
  ex->tensors.push_back(std::move(t));
  ex->tensor_ix[name] = static_cast<int>(ex->tensors.size() - 1);
  return static_cast<int>(ex->tensors.size() - 1);
}

// Names of a session's inputs (is_input) or outputs.
std::string io_names(Exec* ex, OrtSession* sess, bool is_input, std::vector<std::string>& out) {
  const OrtApi* api = ex->api;
  OrtAllocator* alloc = nullptr;
  std::string m = check_ort(ex, api->GetAllocatorWithDefaultOptions(&alloc), "allocator");
  if (!m.empty()) return m;
  size_t n = 0;
  m = check_ort(ex, is_input ? api->SessionGetInputCount(sess, &n)
                             : api->SessionGetOutputCount(sess, &n), "io count");
  if (!m.empty()) return m;
  for (size_t i = 0; i < n; ++i) {
    char* s = nullptr;
    m = check_ort(ex, is_input ? api->SessionGetInputName(sess, i, alloc, &s)
                               : api->SessionGetOutputName(sess, i, alloc, &s), "io name");
    if (!m.empty()) return m;
    out.emplace_back(s);
    status_msg(api, api->AllocatorFree(alloc, s));
  }
  return "";
}

// Wrap `data` (float32, shape) as an OrtValue, replacing *slot.
std::string wrap(Exec* ex, float* data, const std::vector<int64_t>& shape, OrtValue** slot) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  if (*slot) ex->api->ReleaseValue(*slot);
  *slot = nullptr;
  return check_ort(ex,
                   ex->api->CreateTensorWithDataAsOrtValue(
                       ex->mem, data, n * sizeof(float), shape.data(), shape.size(),
                       ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, slot),
                   "wrap tensor");
}

}  // namespace

extern "C" {

// A new executor of n_lanes lanes on cpus[lane]; pin: 0 nothing pinned, 1 the lanes 1.. pinned,
// 2 also the calling thread (lane 0) during each run; spin_run_us / spin_idle_us: how long a wait spins inside a run / between runs before
// it sleeps.  Returns a handle or NULL with err set.
void* pn_open(const char* ort_lib, int n_lanes, const int* cpus, int pin, int spin_run_us,
              int spin_idle_us, char* err, int errlen) {
  std::string why;
  const OrtApi* api = load_api(ort_lib, why);
  if (!api) {
    set_err(err, errlen, why);
    return nullptr;
  }
  if (n_lanes < 1) {
    set_err(err, errlen, "n_lanes must be >= 1");
    return nullptr;
  }
  auto ex = std::make_unique<Exec>();
  ex->api = api;
  ex->n_lanes = n_lanes;
  ex->cpus.assign(cpus, cpus + n_lanes);
  ex->pin = pin != 0;
  ex->pin_caller = pin == 2;
  ex->spin_run_ns = static_cast<int64_t>(spin_run_us) * 1000;
  ex->spin_idle_ns = static_cast<int64_t>(spin_idle_us) * 1000;
  ex->work.resize(static_cast<size_t>(n_lanes));
  ex->lane_wait_ns.assign(static_cast<size_t>(n_lanes), 0);
  std::string m = check_ort(ex.get(), api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "parnasc", &ex->env),
                            "CreateEnv");
  if (m.empty())
    m = check_ort(ex.get(), api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &ex->mem),
                  "CreateCpuMemoryInfo");
  if (!m.empty()) {
    set_err(err, errlen, m);
    return nullptr;
  }
  return ex.release();
}

// Add a segment: the model at `path` (or, if path is NULL, the serialized model data/size),
// run on `lane` in `phase` with `threads` intra-op threads and n_cfg session config entries;
// optimize: ORT's graph optimizations on (1) or off (0, for segments cut from ORT's own
// optimized graph).
int pn_add_segment(void* h, int phase, int lane, const char* path, const void* data, size_t size,
                   int threads, int optimize, int n_cfg, const char* const* keys,
                   const char* const* vals, char* err, int errlen) {
  auto* ex = static_cast<Exec*>(h);
  const OrtApi* api = ex->api;
  if (ex->finalized) return set_err(err, errlen, "executor already started"), -1;
  if (lane < 0 || lane >= ex->n_lanes)
    return set_err(err, errlen, "lane " + std::to_string(lane) + " out of range"), -1;
  if (phase < 0 || phase < (ex->segs.empty() ? 0 : ex->segs.back().phase))
    return set_err(err, errlen, "segments must be added in phase order"), -1;
  OrtSessionOptions* so = nullptr;
  std::string m = check_ort(ex, api->CreateSessionOptions(&so), "CreateSessionOptions");
  if (m.empty()) m = check_ort(ex, api->SetIntraOpNumThreads(so, threads), "intra threads");
  if (m.empty()) m = check_ort(ex, api->SetInterOpNumThreads(so, 1), "inter threads");
  if (m.empty()) m = check_ort(ex, api->SetSessionExecutionMode(so, ORT_SEQUENTIAL), "mode");
  if (m.empty())
    m = check_ort(ex,
                  api->SetSessionGraphOptimizationLevel(so, optimize ? ORT_ENABLE_ALL : ORT_DISABLE_ALL),
                  "optimization");
  if (m.empty()) m = check_ort(ex, api->SetSessionLogSeverityLevel(so, 3), "log level");
  for (int i = 0; m.empty() && i < n_cfg; ++i)
    m = check_ort(ex, api->AddSessionConfigEntry(so, keys[i], vals[i]), "config entry");
  Segment s;
  s.phase = phase;
  s.lane = lane;
  s.threads = threads;
  if (m.empty()) {
    OrtStatus* st = path ? api->CreateSession(ex->env, path, so, &s.sess)
                         : api->CreateSessionFromArray(ex->env, data, size, so, &s.sess);
    m = status_msg(api, st);
  }
  if (so) api->ReleaseSessionOptions(so);
  if (m.empty()) m = io_names(ex, s.sess, true, s.in_names);
  if (m.empty()) m = io_names(ex, s.sess, false, s.out_names);
  if (!m.empty()) {
    if (s.sess) api->ReleaseSession(s.sess);
    return set_err(err, errlen, m), -1;
  }
  ex->segs.push_back(std::move(s));
  return 0;
}

// Declare tensor `view` as written in place into tensor `parent` (of shape parent_shape, which
// no segment produces itself) from element `offset` on: segments that read `parent` run after
// every view of it has been written.
int pn_add_view(void* h, const char* view, const char* parent, int64_t offset, int ndim,
                const int64_t* parent_shape, char* err, int errlen) {
  auto* ex = static_cast<Exec*>(h);
  if (ex->finalized) return set_err(err, errlen, "executor already started"), -1;
  const int p = tensor_of(ex, parent);
  const int v = tensor_of(ex, view);
  if (p == v || ex->tensors[v].parent >= 0 || !ex->tensors[v].views.empty() ||
      ex->tensors[p].parent >= 0)
    return set_err(err, errlen, std::string("bad view '") + view + "' of '" + parent + "'"), -1;
  ex->tensors[v].parent = p;
  ex->tensors[v].offset = offset;
  ex->tensors[p].views.push_back(v);
  ex->tensors[p].declared.assign(parent_shape, parent_shape + ndim);
  return 0;
}

// Check the dataflow (every input produced by an earlier phase or the model input, the output
// produced, no tensor produced twice) and start the lane threads.
int pn_start(void* h, const char* input_name, const char* output_name, char* err, int errlen) {
  auto* ex = static_cast<Exec*>(h);
  if (ex->finalized) return set_err(err, errlen, "executor already started"), -1;
  if (ex->segs.empty()) return set_err(err, errlen, "no segments"), -1;
  ex->input_t = tensor_of(ex, input_name);
  ex->n_phases = ex->segs.back().phase + 1;
  ex->phase_size.assign(static_cast<size_t>(ex->n_phases), 0);
  ex->phase_multi.assign(static_cast<size_t>(ex->n_phases), false);
  for (size_t i = 0; i < ex->segs.size(); ++i) {
    Segment& s = ex->segs[i];
    ex->phase_size[s.phase]++;
    if (s.threads > 1) ex->phase_multi[s.phase] = true;
    for (auto& n : s.in_names) {
      int t = tensor_of(ex, n);
      std::vector<int> writers = ex->tensors[t].views;
      if (writers.empty()) writers.push_back(t);
      for (int w : writers) {
        const Tensor& tt = ex->tensors[w];
        if (t != ex->input_t && (tt.producer < 0 || ex->segs[tt.producer].phase >= s.phase))
          return set_err(err, errlen,
                         "a segment needs tensor '" + n + "', which no earlier phase produces"),
                 -1;
      }
      s.in_t.push_back(t);
    }
    for (auto& n : s.out_names) {
      int t = tensor_of(ex, n);
      if (ex->tensors[t].producer >= 0 || t == ex->input_t || !ex->tensors[t].views.empty())
        return set_err(err, errlen, "tensor '" + n + "' is produced twice"), -1;
      ex->tensors[t].producer = static_cast<int>(i);
      s.out_t.push_back(t);
    }
    ex->work[s.lane].push_back(static_cast<int>(i));
  }
  // names are stable now (no more tensors are added): take their C strings
  for (auto& s : ex->segs) {
    for (int t : s.in_t) s.in_c.push_back(ex->tensors[t].name.c_str());
    for (int t : s.out_t) s.out_c.push_back(ex->tensors[t].name.c_str());
    s.in_v.assign(s.in_t.size(), nullptr);
    s.out_v.assign(s.out_t.size(), nullptr);
  }
  auto it = ex->tensor_ix.find(output_name);
  if (it == ex->tensor_ix.end() || ex->tensors[it->second].producer < 0)
    return set_err(err, errlen,
                   std::string("no segment produces the output '") + output_name + "'"),
           -1;
  ex->output_t = it->second;
  for (auto& t : ex->tensors)
    if (t.parent >= 0 && t.producer < 0)
      return set_err(err, errlen, "no segment produces the view '" + t.name + "'"), -1;
  if (ex->tensors[ex->output_t].parent >= 0)
    return set_err(err, errlen, "the output cannot be a view"), -1;
  ex->done = std::make_unique<Signal[]>(static_cast<size_t>(ex->n_phases));
  ex->finalized = true;
  try {
    for (int lane = 1; lane < ex->n_lanes; ++lane)
      if (!ex->work[lane].empty()) ex->threads.emplace_back(&Exec::worker, ex, lane);
  } catch (const std::exception& e) {
    return set_err(err, errlen, std::string("cannot start a lane thread: ") + e.what()), -1;
  }
  return 0;
}

// Size the intermediate tensors for an input of `shape` (one serial run in the calling thread,
// ORT allocating the outputs; then buffers of our own are bound in place).  Returns the output's
// rank (its dims in out_shape, up to 8) or -1.
int pn_prepare(void* h, const int64_t* shape, int ndim, int64_t* out_shape, char* err,
               int errlen) {
  auto* ex = static_cast<Exec*>(h);
  const OrtApi* api = ex->api;
  if (!ex->finalized) return set_err(err, errlen, "executor not started"), -1;
  ex->prepared = false;
  Tensor& in = ex->tensors[ex->input_t];
  in.shape.assign(shape, shape + ndim);
  size_t n_in = 1;
  for (int64_t d : in.shape) n_in *= static_cast<size_t>(d);
  std::vector<float> probe(n_in, 0.0f);
  std::string m = wrap(ex, probe.data(), in.shape, &in.value);
  if (!m.empty()) return set_err(err, errlen, m), -1;
  // free the previous buffers
  for (auto& t : ex->tensors) {
    if (&t == &in) continue;
    if (t.value) api->ReleaseValue(t.value);
    t.value = nullptr;
    if (t.owned) std::free(t.data);
    t.data = nullptr;
    t.owned = false;
  }
  // parents of views: their declared shape, zeroed
  for (auto& t : ex->tensors) {
    if (t.views.empty() || !m.empty()) continue;
    t.shape = t.declared;
    size_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    t.bytes = n * sizeof(float);
    t.data = static_cast<float*>(std::aligned_alloc(64, (t.bytes + 63) / 64 * 64 + 64));
    if (!t.data) m = "out of memory";
    t.owned = t.data != nullptr;
    if (m.empty()) std::memset(t.data, 0, t.bytes);
    if (m.empty()) m = wrap(ex, t.data, t.shape, &t.value);
  }
  for (size_t i = 0; i < ex->segs.size() && m.empty(); ++i) {
    Segment& s = ex->segs[i];
    for (size_t k = 0; k < s.in_t.size(); ++k) s.in_v[k] = ex->tensors[s.in_t[k]].value;
    std::vector<OrtValue*> outs(s.out_t.size(), nullptr);
    m = check_ort(ex, api->Run(s.sess, nullptr, s.in_c.data(), s.in_v.data(), s.in_c.size(),
                               s.out_c.data(), s.out_c.size(), outs.data()),
                  ("segment " + std::to_string(i)).c_str());
    for (size_t k = 0; k < outs.size(); ++k) {
      Tensor& t = ex->tensors[s.out_t[k]];
      OrtTensorTypeAndShapeInfo* info = nullptr;
      if (m.empty()) m = check_ort(ex, api->GetTensorTypeAndShape(outs[k], &info), "shape");
      size_t nd = 0;
      ONNXTensorElementDataType ty = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
      if (m.empty()) m = check_ort(ex, api->GetDimensionsCount(info, &nd), "rank");
      if (m.empty()) m = check_ort(ex, api->GetTensorElementType(info, &ty), "type");
      if (m.empty() && ty != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        m = "tensor '" + t.name + "' is not float32";
      if (m.empty()) {
        t.shape.assign(nd, 0);
        m = check_ort(ex, api->GetDimensions(info, t.shape.data(), nd), "dims");
      }
      if (info) api->ReleaseTensorTypeAndShapeInfo(info);
      size_t n = 1;
      for (int64_t d : t.shape) n *= static_cast<size_t>(d);
      t.bytes = n * sizeof(float);
      if (m.empty() && t.parent >= 0) {
        Tensor& p = ex->tensors[t.parent];
        if (t.offset < 0 || t.offset * sizeof(float) + t.bytes > p.bytes)
          m = "view '" + t.name + "' does not fit in '" + p.name + "' (input shape?)";
        else
          t.data = p.data + t.offset;
      } else if (m.empty() && s.out_t[k] != ex->output_t) {
        // 64-byte aligned, whole cache lines
        t.data = static_cast<float*>(std::aligned_alloc(64, (t.bytes + 63) / 64 * 64));
        if (!t.data) m = "out of memory";
        t.owned = t.data != nullptr;
      }
      if (m.empty() && s.out_t[k] != ex->output_t) {
        float* src = nullptr;
        if (m.empty()) m = check_ort(ex, api->GetTensorMutableData(outs[k], (void**)&src), "data");
        if (m.empty()) std::memcpy(t.data, src, t.bytes);
        if (m.empty()) m = wrap(ex, t.data, t.shape, &t.value);
      } else if (m.empty()) {
        t.value = outs[k];  // the output: a placeholder until a run binds the caller's buffer
        outs[k] = nullptr;
      }
      if (outs[k]) api->ReleaseValue(outs[k]);
    }
  }
  api->ReleaseValue(in.value);
  in.value = nullptr;
  if (!m.empty()) return set_err(err, errlen, m), -1;
  Tensor& out = ex->tensors[ex->output_t];
  api->ReleaseValue(out.value);
  out.value = nullptr;
  if (out.shape.size() > 8) return set_err(err, errlen, "output rank above 8"), -1;
  for (size_t i = 0; i < out.shape.size(); ++i) out_shape[i] = out.shape[i];
  ex->prepared = true;
  return static_cast<int>(out.shape.size());
}

// One inference: x (the prepared input shape) in place, the output written into y.
int pn_run(void* h, float* x, float* y, char* err, int errlen) {
  auto* ex = static_cast<Exec*>(h);
  if (!ex->prepared) return set_err(err, errlen, "executor not prepared"), -1;
  Tensor& in = ex->tensors[ex->input_t];
  Tensor& out = ex->tensors[ex->output_t];
  std::string m;
  if (in.data != x || !in.value) {
    m = wrap(ex, x, in.shape, &in.value);
    in.data = x;
  }
  if (m.empty() && (out.data != y || !out.value)) {
    m = wrap(ex, y, out.shape, &out.value);
    out.data = y;
  }
  if (!m.empty()) return set_err(err, errlen, m), -1;
  ex->run_error.clear();
  ex->failed.store(false);
  const bool several = !ex->threads.empty();
  cpu_set_t saved;
  // The caller is lane 0.  Pinned for every run with pin_caller; otherwise moved to lane 0's
  // CPU only when it sits on a CPU a worker lane is pinned to (after a sleep the OS may wake it
  // there, and then it shares that CPU with the lane until the load balancer moves it), so the
  // common case costs one sched_getcpu (vDSO) and no system call.
  bool move = several && ex->pin_caller;
  if (several && ex->pin && !move) {
    const int cur = sched_getcpu();
    for (int l = 1; l < ex->n_lanes && !move; ++l)
      move = cur == ex->cpus[l] && cur != ex->cpus[0] && !ex->work[l].empty();
  }
  const bool pinned = move &&
                      pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) == 0 &&
                      Exec::pin_to(ex->cpus[0]);
  if (ex->timing) ex->run_t0 = now_ns();
  const uint32_t run = ex->start.value.load() + 1;
  if (several) ex->start.bump();  // wake the lanes first: their wake-up overlaps lane 0's work
  ex->run_lane(0, run);
  if (!several) ex->start.value.store(run);
  // the last phase done means every phase is done
  ex->done[ex->n_phases - 1].wait_reach(
      run * static_cast<uint32_t>(ex->phase_size[ex->n_phases - 1]), ex->spin_run_ns,
      [] { return false; });
  if (pinned) pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
  // a later call may pass other buffers at the same addresses: keep the wrappers, they only
  // name an address and a shape
  if (ex->failed.load()) return set_err(err, errlen, ex->run_error), -1;
  return 0;
}

// Per-step timings of the next runs on (1) or off (0).
void pn_set_timing(void* h, int on) { static_cast<Exec*>(h)->timing = on != 0; }

// The last timed run: per segment [start, end] (ns from the run's start) into seg (2 per
// segment), per lane the time spent waiting at barriers into lane_wait; returns the segment
// count.
int pn_timings(void* h, int64_t* seg, int64_t* lane_wait) {
  auto* ex = static_cast<Exec*>(h);
  for (size_t i = 0; i < ex->segs.size(); ++i) {
    seg[2 * i] = ex->segs[i].t0;
    seg[2 * i + 1] = ex->segs[i].t1;
  }
  for (int l = 0; l < ex->n_lanes; ++l) lane_wait[l] = ex->lane_wait_ns[l];
  return static_cast<int>(ex->segs.size());
}

// Number of lane threads running (for leak checks).
int pn_threads(void* h) { return static_cast<int>(static_cast<Exec*>(h)->threads.size()); }

// Stop and join the lane threads, release the sessions and buffers.
void pn_close(void* h) { delete static_cast<Exec*>(h); }

// The C API version this library was built against.
int pn_api_version() { return ORT_API_VERSION; }

}  // extern "C"
