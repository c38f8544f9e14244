#include "calc.h"
const int table[64] = {
#define R(x) x, x + 1, x * 2, x * 3, x ^ 5, x % 7, x + 11, x * x,
  R(1) R(2) R(3) R(4) R(5) R(6) R(7) R(8)
};
