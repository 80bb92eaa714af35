/*
 * One core's memcpy bandwidth, the ceiling of the data-path benchmark (dp_bench.py).
 *
 *   memcpy_bw SIZE SETS SECONDS  ->  {"size":..,"hot_gbps":..,"set_gbps":..}
 *
 * hot: the same source and destination every time (both stay in cache when they fit);
 * set: SETS sources and SETS destinations in rotation, like the agent's copy engine moving
 * requests from staging slots into a replica's input slots.
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

static double run(char **src, char **dst, int sets, size_t n, double seconds) {
    size_t done = 0;
    double t0 = now(), t;
    do {
        for (int k = 0; k < 16; k++, done++)
            memcpy(dst[done % sets], src[(done * 3) % sets], n);
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
    double hot = run(src, dst, 1, n, seconds);
    double set = run(src, dst, sets, n, seconds);
    printf("{\"size\": %zu, \"sets\": %d, \"hot_gbps\": %.3f, \"set_gbps\": %.3f}\n", n, sets,
           hot, set);
    return 0;
}
