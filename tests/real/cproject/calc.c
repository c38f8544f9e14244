#include "calc.h"
#include <stdlib.h>
#include <string.h>

/* A little of everything the optimizer works on: loops, recursion, structs, strings. */
long fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

long sum_squares(const int *v, int n) {
  long s = 0;
  for (int i = 0; i < n; i++) s += (long)v[i] * v[i];
  return s;
}

struct node { struct node *next; int value; };

int list_demo(int n) {
  struct node *head = NULL;
  for (int i = 0; i < n; i++) {
    struct node *x = malloc(sizeof *x);
    x->value = i * 3 % 7;
    x->next = head;
    head = x;
  }
  int total = 0;
  while (head) {
    struct node *x = head;
    total += x->value;
    head = x->next;
    free(x);
  }
  return total;
}

char *reverse(const char *s) {
  size_t n = strlen(s);
  char *r = malloc(n + 1);
  for (size_t i = 0; i < n; i++) r[i] = s[n - 1 - i];
  r[n] = 0;
  return r;
}
