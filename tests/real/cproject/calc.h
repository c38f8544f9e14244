long fib(int n);
long sum_squares(const int *v, int n);
int list_demo(int n);
char *reverse(const char *s);
extern const int table[64];
