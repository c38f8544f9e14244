/* A library whose constructor allocates: with libukasan.so preloaded, the loader runs it
 * before libukasan's own constructor (libraries loaded later are initialized first), as it
 * does for libstdc++'s exception pool. */
#include <stdlib.h>
#include <string.h>

char *ctorlib_buf;
char *ctorlib_other;

__attribute__((constructor)) static void ctorlib_init(void) {
  ctorlib_buf = malloc(64);
  strcpy(ctorlib_buf, "from a library constructor");
  ctorlib_other = malloc(16);
  ctorlib_other = realloc(ctorlib_other, 1 << 16);
  memset(ctorlib_other, 7, 1 << 16);
  free(malloc(1));
}
