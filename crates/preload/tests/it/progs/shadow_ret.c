/* Return values through patched frames: ./shadow_ret. Each `ret_*` function (double,
 * long double, __int128, struct {double, double}, __m128, and __m256/__m512 where the CPU
 * has them) computes its value, then calls `churn`, whose allocations at a depth below the
 * policy's unpatched top patch the ret_* frame (and its callers); the value then returns
 * through the trampoline in rax/rdx, xmm0/xmm1, ymm0/zmm0 or x87 st0. In the `stale`
 * variant `churn` longjmps back into the ret_* function first, so its return takes the
 * trampoline's slow path (stale entries above). Compares every bit with the expected value;
 * prints `patched=`, `wide=` (wide kinds checked) and `ok`. */
#define _GNU_SOURCE
#include <alloca.h>
#include <dlfcn.h>
#include <immintrin.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct dd {
  double a, b;
};

static void *volatile sink; /* keeps malloc/free pairs from being optimized out */
static volatile int seed = 3;
static int patched, failures;
static jmp_buf jb;

static int in_preload(void *a) {
  Dl_info i;
  return dladdr(a, &i) && i.dli_fname && strstr(i.dli_fname, "libukasan");
}

/* Deep enough that the ret_* frames lie below the policy's largest unpatched top (16). */
#define CHURN 24

/* Recurses `n` levels and allocates at every level; with `jump`, longjmps from the bottom. */
__attribute__((noinline)) int churn(int n, int jump) {
  volatile char *pad = alloca(16);
  pad[0] = 1;
  sink = malloc(24 + n);
  free(sink);
  if (n == 0) {
    if (jump) longjmp(jb, 1);
    return 0;
  }
  return churn(n - 1, jump) + pad[0];
}

#define SLOT ((void **)__builtin_frame_address(0) + 1)

/* In the calling ret_* function: churn below it; with `stale`, the bottom longjmps back
 * here, leaving the churn frames' entries above this frame's. */
#define CHURN_HERE(stale)                          \
  do {                                             \
    if (stale) {                                   \
      if (setjmp(jb) == 0) churn(CHURN, 1);        \
    } else {                                       \
      churn(CHURN, 0);                             \
    }                                              \
    patched += in_preload(*SLOT);                  \
  } while (0)

__attribute__((noinline)) double ret_double(int stale) {
  volatile char *pad = alloca(16);
  pad[0] = 0;
  double v = 1.0 / seed + pad[0];
  CHURN_HERE(stale);
  return v;
}

__attribute__((noinline)) long double ret_long_double(int stale) {
  volatile char *pad = alloca(16);
  pad[0] = 0;
  long double v = 1.0L / seed + pad[0];
  CHURN_HERE(stale);
  return v;
}

__attribute__((noinline)) __int128 ret_int128(int stale) {
  volatile char *pad = alloca(16);
  pad[0] = 0;
  __int128 v = ((__int128)0x0123456789abcdefLL << 64 | 0xfedcba9876543210ULL) * seed + pad[0];
  CHURN_HERE(stale);
  return v;
}

__attribute__((noinline)) struct dd ret_dd(int stale) {
  volatile char *pad = alloca(16);
  pad[0] = 0;
  struct dd v = {1.0 / seed + pad[0], -2.0 / seed};
  CHURN_HERE(stale);
  return v;
}

__attribute__((noinline)) __m128 ret_m128(int stale) {
  volatile char *pad = alloca(16);
  pad[0] = 0;
  __m128 v = _mm_set_ps(1.0f / seed, 2.0f / seed, 3.0f / seed, 4.0f / seed + pad[0]);
  CHURN_HERE(stale);
  return v;
}

/* Nested: a patched frame returning the value of another patched frame. */
__attribute__((noinline)) long double nested_long_double(int stale) {
  volatile char *pad = alloca(16);
  pad[0] = 0;
  long double v = ret_long_double(stale) + pad[0];
  CHURN_HERE(stale);
  return v;
}

static void same(const char *what, const void *got, const void *want, size_t n) {
  if (memcmp(got, want, n) != 0) {
    printf("FAIL %s\n", what);
    failures++;
  }
}

/* Wide vectors in ymm0/zmm0 (the trampoline's fast path never touches them; its slow path
 * runs only legacy SSE code, which keeps their upper halves), where the CPU has them. The
 * value is made after the churn and these functions keep a frame record without alloca:
 * a wide value live across a call, or an alloca under these targets, makes GCC realign the
 * frame, and a realigned frame (CFA not at fp + 16) is rightly never patched. The
 * callers are compiled for the same target: otherwise the ABI returns them in memory. */
static float wide_src[16];
static volatile int zero;

#define WIDE(T, NAME, TARGET, LOAD, ADD, SET1)                                  \
  __attribute__((noinline, target(TARGET), optimize("no-omit-frame-pointer")))  \
  T ret_##NAME(int stale) {                                                     \
    CHURN_HERE(stale);                                                          \
    return ADD(LOAD(wide_src), SET1((float)zero));                              \
  }                                                                             \
  __attribute__((noinline, target(TARGET))) void check_##NAME(int stale) {      \
    T got = ret_##NAME(stale);                                                  \
    same(#T, &got, wide_src, sizeof got);                                       \
  }

WIDE(__m256, m256, "avx", _mm256_loadu_ps, _mm256_add_ps, _mm256_set1_ps)
WIDE(__m512, m512, "avx512f", _mm512_loadu_ps, _mm512_add_ps, _mm512_set1_ps)

int main(void) {
  const double d = 1.0 / seed;
  const long double ld = 1.0L / seed;
  const __int128 i = ((__int128)0x0123456789abcdefLL << 64 | 0xfedcba9876543210ULL) * seed;
  const struct dd s = {1.0 / seed, -2.0 / seed};
  const __m128 m = _mm_set_ps(1.0f / seed, 2.0f / seed, 3.0f / seed, 4.0f / seed);
  for (int k = 0; k < 16; k++) wide_src[k] = (k + 1) * 1.0f / seed;
  for (int round = 0; round < 6; round++) {
    int stale = round & 1;
    double gd = ret_double(stale);
    same("double", &gd, &d, sizeof d);
    long double gld = ret_long_double(stale);
    same("long double", &gld, &ld, 10);
    __int128 gi = ret_int128(stale);
    same("__int128", &gi, &i, sizeof i);
    struct dd gs = ret_dd(stale);
    same("struct {double, double}", &gs, &s, sizeof s);
    __m128 gm = ret_m128(stale);
    same("__m128", &gm, &m, sizeof m);
    long double gn = nested_long_double(stale);
    same("nested long double", &gn, &ld, 10);
    if (__builtin_cpu_supports("avx")) check_m256(stale);
    if (__builtin_cpu_supports("avx512f")) check_m512(stale);
  }
  int wide = !!__builtin_cpu_supports("avx") + !!__builtin_cpu_supports("avx512f");
  printf("patched=%d\nwide=%d\n%s\n", patched, wide, failures ? "failed" : "ok");
  return failures ? 4 : 0;
}
