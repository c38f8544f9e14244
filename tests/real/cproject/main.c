#include "calc.h"
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 10;
  char *r = reverse("ukasan real programs");
  printf("fib(%d)=%ld squares=%ld list=%d rev=%s\n", n, fib(n), sum_squares(table, 64),
         list_demo(n * 100), r);
  free(r);
  return 0;
}
