/*
 * conspirator-hello: the test workload image of the local e2e cluster.
 *
 *   hello [--sleep SECONDS] [--exit CODE] [WORDS...]
 *
 * Prints one line "conspirator-hello: WORDS (pod=$POD_NAME host=HOSTNAME)" to stdout, optionally
 * sleeps, and exits with CODE (default 0).  Static, so the image is this one file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long sleep_s = 0;
    int code = 0;
    char words[4096] = "";
    size_t used = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--sleep") == 0 && i + 1 < argc) {
            sleep_s = strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--exit") == 0 && i + 1 < argc) {
            code = (int)strtol(argv[++i], NULL, 10);
        } else {
            int n = snprintf(words + used, sizeof(words) - used, "%s%s", used ? " " : "", argv[i]);
            if (n < 0 || (size_t)n >= sizeof(words) - used) {
                break;
            }
            used += (size_t)n;
        }
    }
    char host[256] = "?";
    gethostname(host, sizeof(host) - 1);
    const char *pod = getenv("POD_NAME");
    printf("conspirator-hello: %s (pod=%s host=%s)\n", used ? words : "hello", pod ? pod : "-", host);
    fflush(stdout);
    if (sleep_s > 0) {
        struct timespec ts = {.tv_sec = sleep_s, .tv_nsec = 0};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
    return code;
}
