/*
 * conspirator-pause: the sandbox ("pause") container of the local e2e cluster.
 *
 * It is PID 1 of each pod's sandbox: it holds the pod's namespaces open, reaps the zombies
 * that end up parented to it, and exits cleanly on SIGINT/SIGTERM.  Built with gcc -static so
 * the image needs nothing but this one file.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts("conspirator-pause 1");
        return 0;
    }
    if (getpid() != 1) {
        fputs("conspirator-pause: warning: not PID 1\n", stderr);
    }
    struct sigaction stop = {0}, child = {0};
    stop.sa_handler = on_stop;
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) {
        pause();
    }
}
