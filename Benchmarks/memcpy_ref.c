/* Reference for `memwall bench memory`: a plain one-thread memcpy between a
   buffer on node SRC and one on node DST, timed the way memwall times its
   copies (median of samples, each sample >= 32 MiB of copying).
   usage: memcpy_ref SIZE_BYTES SRC_NODE DST_NODE SECONDS  -> prints GB/s */
#define _GNU_SOURCE
#include <numa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void *place(size_t n, int node) {
    void *p = numa_available() >= 0 ? numa_alloc_onnode(n, node) : NULL;
    if (!p) p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || !p) { perror("allocate"); exit(1); }
    madvise(p, n, MADV_HUGEPAGE);
    memset(p, 0xA5, n);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s SIZE_BYTES SRC_NODE DST_NODE SECONDS\n", argv[0]); return 2; }
    size_t n = strtoull(argv[1], NULL, 10);
    double seconds = atof(argv[4]);
    char *src = place(n, atoi(argv[2])), *dst = place(n, atoi(argv[3]));
    size_t per = n >= (32u << 20) ? 1 : (32u << 20) / n;
    static double rates[1 << 16];
    int k = 0;
    memcpy(dst, src, n);
    double end = now() + seconds;
    do {
        double t0 = now();
        for (size_t i = 0; i < per; i++) { memcpy(dst, src, n); __asm__ volatile("" ::: "memory"); }
        rates[k++] = (double)(n * per) / (now() - t0) / 1e9;
    } while ((now() < end || k < 3) && k < (1 << 16));
    qsort(rates, k, sizeof(double), cmp);
    printf("%.3f\n", rates[k / 2]);
    return 0;
}
