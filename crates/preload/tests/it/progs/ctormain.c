/* Uses and frees what ctorlib's constructor allocated. */
#include <stdio.h>
#include <stdlib.h>

extern char *ctorlib_buf;
extern char *ctorlib_other;

int main(void) {
  printf("buf=%s\n", ctorlib_buf);
  for (int i = 0; i < (1 << 16); i++)
    if (ctorlib_other[i] != 7) return 4;
  ctorlib_buf = realloc(ctorlib_buf, 4096);
  free(ctorlib_buf);
  free(ctorlib_other);
  printf("end\n");
  return 0;
}
