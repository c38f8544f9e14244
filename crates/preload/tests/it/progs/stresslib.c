/* Loaded and unloaded over and over by stress.c: allocates in its constructor, in calls
 * and frees in its destructor. */
#include <stdlib.h>
#include <string.h>

static char *table;

__attribute__((constructor)) static void stresslib_init(void) {
  table = malloc(4096);
  memset(table, 1, 4096);
}

__attribute__((destructor)) static void stresslib_fini(void) { free(table); }

char *stresslib_make(int i) {
  char *p = malloc(16 + i * 8);
  memcpy(p, table, 16);
  return p;
}
