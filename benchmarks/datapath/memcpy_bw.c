/*
 * One core's memcpy bandwidth, the ceiling of the data-path benchmark (dp_bench.py).
 *
 *   memcpy_bw SIZE SETS SECONDS  ->  {"size":..,"hot_gbps":..,"set_gbps":..}
 *
 * hot: the same source and destination every time (both stay in cache when they fit);
 * set: SETS sources and SETS destinations in rotation, like the agent's copy engine moving
 * requests from staging slots into a replica's input slots;
 * movsb_hot: `rep movsb` (x86-64 only), the same buffers as hot.  The agent's copy engine
 * uses it from 512 KiB where the CPU has ERMS; glibc's memcpy does not at these sizes on
 * AMD, and it is faster there, so the benchmark reports it as the stricter ceiling.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void copy_movsb(char *d, const char *s, size_t n) {
#if defined(__x86_64__)
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
#else
    memcpy(d, s, n);
#endif
}

static double run(char **src, char **dst, int sets, size_t n, double seconds, int movsb) {
    size_t done = 0;
    double t0 = now(), t;
    do {
        for (int k = 0; k < 16; k++, done++) {
            if (movsb)
                copy_movsb(dst[done % sets], src[(done * 3) % sets], n);
            else
                memcpy(dst[done % sets], src[(done * 3) % sets], n);
        }
        __asm__ volatile("" ::: "memory");
        t = now();
    } while (t - t0 < seconds);
    return (double)n * done / (t - t0) / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: memcpy_bw SIZE SETS SECONDS\n");
        return 2;
    }
    size_t n = strtoull(argv[1], NULL, 10);
    int sets = atoi(argv[2]);
    double seconds = atof(argv[3]);
    char **src = calloc(sets, sizeof *src), **dst = calloc(sets, sizeof *dst);
    for (int i = 0; i < sets; i++) {
        src[i] = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
        dst[i] = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
        memset(src[i], i + 1, n);
        memset(dst[i], 0, n);
    }
    double hot = run(src, dst, 1, n, seconds, 0);
    double set = run(src, dst, sets, n, seconds, 0);
    double movsb = run(src, dst, 1, n, seconds, 1);
    printf("{\"size\": %zu, \"sets\": %d, \"hot_gbps\": %.3f, \"set_gbps\": %.3f, "
           "\"movsb_hot_gbps\": %.3f}\n", n, sets, hot, set, movsb);
    return 0;
}
