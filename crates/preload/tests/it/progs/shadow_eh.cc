// C++ exceptions through frames that the software shadow stack patched inside operator new
// and malloc: ./shadow_eh. Every level of `recurse` allocates (a capture patches the frames
// above it), keeps an RAII guard, and records its return-address slot. Rounds throw from the
// bottom and catch at different levels, rethrow (`throw;` and std::rethrow_exception), throw
// std::bad_alloc out of operator new itself, and run fresh recursions in between (stale
// entries left by the unwinding).
// The guards' destructors allocate during the unwinding. The rounds run on three threads at
// once. Prints the guard count and how many slots held the trampoline at the deepest point.
//
// `recurse` uses alloca, which makes it keep a frame record even with -fomit-frame-pointer:
// its frames are patchable in both builds; the other functions are not in the omit build.
#include <alloca.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// Keeps malloc/free pairs from being optimized out (per thread: the threads race otherwise).
static thread_local void *volatile sink;

static thread_local long constructed, destroyed;
static thread_local int patched_max;
static thread_local void **slots[512];

struct Guard {
  int level;
  explicit Guard(int l) : level(l) { ++constructed; }
  ~Guard() {
    ++destroyed;
    // Allocates while the exception unwinds: a capture from a landing pad, with entries of
    // the frames already unwound still in the array (and patching frames above).
    sink = std::malloc(8 + (level & 15));
    std::free(sink);
  }
};

struct Boom : std::runtime_error {
  int depth;
  explicit Boom(int d) : std::runtime_error("boom"), depth(d) {}
};

static bool in_preload(void *a) {
  Dl_info i;
  return dladdr(a, &i) && i.dli_fname && std::strstr(i.dli_fname, "libukasan");
}

static void count_patched(int depth) {
  int n = 0;
  for (int i = 0; i <= depth; i++)
    if (slots[i] && in_preload(*slots[i])) n++;
  if (n > patched_max) patched_max = n;
}

enum Mode { THROW, RETHROW, BAD_ALLOC, RETURN };

__attribute__((noinline)) void thrower(int depth) {
  std::vector<int> v(16, depth);  // one more allocation in the leaf
  if (v[3] == depth) throw Boom(depth);
}

__attribute__((noinline)) void huge_new() {
  volatile size_t huge = (size_t)1 << 60;
  char *x = new char[huge];
  std::printf("no bad_alloc %p\n", (void *)x);
  std::_Exit(5);
}

__attribute__((noinline)) long recurse(int level, int depth, int catch_at, Mode mode) {
  volatile char *pad = (volatile char *)alloca(16 + (level & 7));
  pad[0] = (char)(level & 0x7f);
  slots[level] = (void **)__builtin_frame_address(0) + 1;
  Guard g(level);
  std::unique_ptr<std::string> s(new std::string(40 + level, (char)('a' + level % 26)));
  sink = std::malloc(24 + level);
  std::free(sink);
  long r;
  if (level == depth) {
    count_patched(depth);
    if (mode == THROW || mode == RETHROW) thrower(level);
    if (mode == BAD_ALLOC) huge_new();
    return (long)s->size();
  }
  if (level == catch_at) {
    try {
      r = recurse(level + 1, depth, catch_at, mode);
    } catch (Boom &b) {
      if (mode == RETHROW && (level & 1)) throw;
      if (mode == RETHROW) std::rethrow_exception(std::current_exception());
      r = 1000000L * b.depth + level;
    } catch (std::bad_alloc &) {
      r = -level;
    }
  } else {
    r = recurse(level + 1, depth, catch_at, mode);
  }
  return r + pad[0] - (level & 0x7f);
}

static std::atomic<int> failures;

static void check(const char *what, long got, long want) {
  if (got != want) {
    std::printf("FAIL %s: got %ld want %ld\n", what, got, want);
    failures++;
  }
}

// Every round on the calling thread; returns the number of guards destroyed.
static long rounds() {
  long expect_guards = 0;
  const int depths[] = {12, 40, 100, 300};
  for (int depth : depths) {
    // A plain recursion that returns: patches, then returns through the trampoline.
    check("return", recurse(0, depth, -1, RETURN), 40 + depth);
    expect_guards += depth + 1;
    int catch_levels[] = {0, 1, depth / 3, depth / 2, depth - 1};
    for (int c : catch_levels) {
      check("catch", recurse(0, depth, c, THROW), 1000000L * depth + c);
      expect_guards += depth + 1;
      check("bad_alloc", recurse(0, depth, c, BAD_ALLOC), -c);
      expect_guards += depth + 1;
      // Stale entries of the unwound frames are dropped by the next returns.
      check("after", recurse(0, depth / 2, -1, RETURN), 40 + depth / 2);
      expect_guards += depth / 2 + 1;
    }
    for (int c : catch_levels) {
      try {
        recurse(0, depth, c, RETHROW);
        check("rethrow reached", 1, 0);
      } catch (Boom &b) {
        check("rethrow", b.depth, depth);
      }
      expect_guards += depth + 1;
    }
  }
  check("guards constructed", constructed, expect_guards);
  check("guards destroyed", destroyed, constructed);
  return destroyed;
}

int main() {
  std::set_terminate([] {
    std::printf("terminate called\n");
    std::fflush(stdout);
    _exit(3);
  });
  // The same rounds on two more threads at once.
  long other[2] = {0, 0};
  int other_patched[2] = {0, 0};
  std::thread t0([&] {
    other[0] = rounds();
    other_patched[0] = patched_max;
  });
  std::thread t1([&] {
    other[1] = rounds();
    other_patched[1] = patched_max;
  });
  long guards = rounds();
  t0.join();
  t1.join();
  check("guards on threads", other[0] + other[1], 2 * guards);
  std::printf("guards=%ld\n", guards);
  std::printf("patched=%d\n", patched_max);
  std::printf("patched_threads=%d\n", std::min(other_patched[0], other_patched[1]));
  std::printf(failures ? "failed\n" : "ok\n");
  return failures ? 4 : 0;
}
