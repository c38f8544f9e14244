// C++ exceptions through frames patched by the software shadow stack, under load, and
// signal handlers on small alternate stacks: ./stress_eh SECONDS ALLOC_ALTSTACK_BYTES
// - 4 load threads: random malloc/realloc/free of random sizes, contents checked.
// - 3 throw threads: recursions of random depth in which every level allocates (captures
//   patch the frames above) and keeps an RAII guard whose destructor allocates during the
//   unwinding; a Boom thrown at the bottom is caught at a random level. After each catch, now
//   and then, a double free of an object allocated at a known depth (alloc_at_depth): its
//   report's allocation stack must hold exactly depth+1 alloc_at_depth frames (stale entries
//   left by the unwinding would show up there).
// - 2 signal threads allocate in a loop; a signaller sends them SIGUSR1/SIGUSR2. One runs its
//   handler on a sigaltstack of getauxval(AT_MINSIGSTKSZ) bytes (the kernel's frame fills it:
//   the handler only counts), the other on ALLOC_ALTSTACK_BYTES (SIGSTKSZ by default), where
//   the handler allocates and frees (a capture on the alternate stack) and, a few times,
//   double-frees (a report from the alternate stack). Both stacks have a guard page below.
// Prints counts; every report goes to stderr (JSON Lines when asked).
#include <pthread.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

static std::atomic<bool> stop{false};
static std::atomic<long> ops, throws, catches, guards_made, guards_gone, eh_reports, sig_min,
    sig_alloc, sig_skipped, sig_reports;
static std::atomic<unsigned> depths_used;
static thread_local volatile int in_malloc;
static bool with_bugs = true;

static uint64_t rng(uint64_t &s) {
  s ^= s << 13; s ^= s >> 7; s ^= s << 17;
  return s;
}

struct Guard {
  void *p;
  explicit Guard(int level) : p(std::malloc(16 + (level & 31))) { guards_made++; }
  ~Guard() {
    std::free(p);
    void *volatile q = std::malloc(8);  // allocates while the exception unwinds
    std::free(q);
    guards_gone++;
  }
};

struct Boom : std::runtime_error {
  int level;
  explicit Boom(int l) : std::runtime_error("boom"), level(l) {}
};

__attribute__((noinline)) void *alloc_at_depth(int depth, size_t n) {
  if (depth == 0) return std::malloc(n);
  void *p = alloc_at_depth(depth - 1, n);
  __asm__ volatile("" ::: "memory");
  return p;
}

__attribute__((noinline)) void deliberate_double_free(void *p) {
  std::free(p);
  __asm__ volatile("" ::: "memory");
  std::free(p);
}

__attribute__((noinline)) long dive(int level, int depth, int catch_at) {
  Guard g(level);
  std::string s(24 + (level & 63), 'x');  // one more allocation per level
  if (level == depth) throw Boom(level);
  if (level == catch_at) {
    try {
      return dive(level + 1, depth, catch_at) + (long)s.size();
    } catch (const Boom &b) {
      catches++;
      return b.level;
    }
  }
  long r = dive(level + 1, depth, catch_at);
  __asm__ volatile("" ::: "memory");
  return r + 1;
}

static void thrower(int t) {
  uint64_t s = 0x1234567ull * (t + 3);
  while (!stop) {
    int depth = 1 + (int)(rng(s) % 200);
    int catch_at = (int)(rng(s) % depth);
    throws++;
    long r = dive(0, depth, catch_at);
    if (r != depth + catch_at) {
      std::printf("WRONG result %ld for depth %d catch_at %d\n", r, depth, catch_at);
      std::abort();
    }
    if (with_bugs && rng(s) % 64 == 0) {
      int d = (int)(rng(s) % 20);
      deliberate_double_free(alloc_at_depth(d, 48));
      depths_used |= 1u << d;
      eh_reports++;
    }
  }
}

static void load(int t) {
  uint64_t s = 0x9e3779b97f4a7c15ull * (t + 1);
  struct Obj { unsigned char *p = nullptr; size_t n = 0; unsigned char tag = 0; };
  std::vector<Obj> objs(128);
  while (!stop) {
    Obj &o = objs[rng(s) % objs.size()];
    if (o.p) {
      for (size_t i = 0; i < o.n; i++)
        if (o.p[i] != o.tag) { std::printf("CORRUPT\n"); std::abort(); }
    }
    size_t n = rng(s) % 100 == 0 ? rng(s) % 100000 : rng(s) % 400;
    in_malloc = 1;
    if (!o.p) o.p = (unsigned char *)std::malloc(n + 1);
    else if (rng(s) % 2) o.p = (unsigned char *)std::realloc(o.p, n + 1);
    else { std::free(o.p); o.p = nullptr; n = 0; }
    in_malloc = 0;
    o.n = o.p ? n : 0;
    o.tag = (unsigned char)rng(s);
    if (o.p) std::memset(o.p, o.tag, o.n);
    ops++;
  }
  for (Obj &o : objs) std::free(o.p);
}

__attribute__((noinline)) void handler_double_free() {
  void *volatile p = std::malloc(40);
  std::free(p);
  __asm__ volatile("" ::: "memory");
  std::free(p);
}

static void on_min(int) { sig_min++; }  // the kernel's frame fills AT_MINSIGSTKSZ

static void on_alloc(int) {
  if (in_malloc) { sig_skipped++; return; }
  void *volatile p = std::malloc(64 + (sig_alloc & 127));
  std::free(p);
  long n = sig_alloc++;
  if (with_bugs && n > 0 && n % 20 == 0 && sig_reports < 3) {
    handler_double_free();
    sig_reports++;
  }
}

static void *guarded_stack(size_t bytes) {
  size_t pg = 4096, len = (bytes + pg - 1) / pg * pg + pg;
  char *m = (char *)mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) std::abort();
  mprotect(m, pg, PROT_NONE);
  return m + len - bytes;
}

static void sig_thread(size_t bytes) {
  // The alternate stack ends at the top of the mapping; below it the rest of its first
  // page, then the guard page (a multiple of the page leaves no gap).
  stack_t ss{};
  ss.ss_sp = guarded_stack(bytes);
  ss.ss_size = bytes;
  if (sigaltstack(&ss, nullptr) != 0) { std::perror("sigaltstack"); std::abort(); }
  uint64_t s = bytes;
  std::vector<void *> keep(64);
  while (!stop) {
    void *&k = keep[rng(s) % keep.size()];
    in_malloc = 1;
    std::free(k);
    size_t n = rng(s) % 500;
    k = alloc_at_depth((int)(rng(s) % 8), n);
    in_malloc = 0;
    for (int i = 0; i < 20; i++) std::memset(k, i, n);  // time outside malloc for the signals
    ops++;
  }
  for (void *p : keep) std::free(p);
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);
}

int main(int argc, char **argv) {
  double secs = argc > 1 ? std::atof(argv[1]) : 2;
  size_t alloc_stack = argc > 2 ? std::strtoul(argv[2], nullptr, 0) : 0;
  if (alloc_stack == 0) alloc_stack = SIGSTKSZ;  // glibc >= 2.34: sysconf(_SC_SIGSTKSZ)
  size_t min_stack = getauxval(AT_MINSIGSTKSZ);  // 3376 with AVX-512
  if (min_stack == 0) min_stack = 2048;            // kernels before 5.14 (MINSIGSTKSZ)
  with_bugs = std::getenv("STRESS_NO_BUGS") == nullptr;
  struct sigaction sa {};
  sa.sa_flags = SA_ONSTACK | SA_RESTART;
  sa.sa_handler = on_min;
  sigaction(SIGUSR1, &sa, nullptr);
  sa.sa_handler = on_alloc;
  sigaction(SIGUSR2, &sa, nullptr);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; t++) ts.emplace_back(load, t);
  for (int t = 0; t < 3; t++) ts.emplace_back(thrower, t);
  std::thread smin(sig_thread, min_stack), salloc(sig_thread, alloc_stack);
  auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::duration<double>(secs)) {
    pthread_kill(smin.native_handle(), SIGUSR1);
    pthread_kill(salloc.native_handle(), SIGUSR2);
    std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
  stop = true;
  for (auto &t : ts) t.join();
  smin.join();
  salloc.join();
  std::printf("min_stack=%zu\nalloc_stack=%zu\n", min_stack, alloc_stack);
  std::printf("ops=%ld\nthrows=%ld\ncatches=%ld\n", ops.load(), throws.load(), catches.load());
  std::printf("guards_made=%ld\nguards_gone=%ld\n", guards_made.load(), guards_gone.load());
  std::printf("depths=%d\neh_reports=%ld\n", __builtin_popcount(depths_used.load()),
              eh_reports.load());
  std::printf("sig_min=%ld\nsig_alloc=%ld\nsig_skipped=%ld\nsig_reports=%ld\nend\n",
              sig_min.load(), sig_alloc.load(), sig_skipped.load(), sig_reports.load());
  return 0;
}
