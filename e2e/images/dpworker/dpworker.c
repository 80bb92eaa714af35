/*
 * dpworker: a tiny static worker for the node-daemon e2e tests.
 *
 * It prints what the device plugin's Allocate gave its container (the environment and the
 * mounted buffer-registry socket), then registers an input buffer with the node's buffer
 * registry the way conspirator.runtime does (conspirator.wire.registration): a unix
 * SOCK_SEQPACKET socket, one REGISTER frame (24-byte header + JSON BufferSpec), four
 * descriptors passed with SCM_RIGHTS (control memfd, doorbell eventfd, completion eventfd,
 * data memfd; both memfds sealed against shrinking and growing).  It writes a line into
 * the data memfd first, so that whoever receives the descriptors can read it.  Then it
 * keeps the registration (and the process) alive until SIGTERM.
 *
 * usage: dpworker CONTROL_BYTES DATA_BYTES SLOT_BYTES RESULT_BYTES
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define REGISTER 32
#define REGISTERED 33
#define ERROR 7

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static void put_env(const char *name) {
    const char *v = getenv(name);
    printf("env %s=%s\n", name, v ? v : "");
}

static int sealed_memfd(const char *name, size_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        perror("memfd");
        exit(3);
    }
    return fd;
}

static void put_le(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s CONTROL_BYTES DATA_BYTES SLOT_BYTES RESULT_BYTES\n", argv[0]);
        return 2;
    }
    size_t ctl_bytes = strtoul(argv[1], NULL, 10), data_bytes = strtoul(argv[2], NULL, 10);
    unsigned long slot_bytes = strtoul(argv[3], NULL, 10), result_bytes = strtoul(argv[4], NULL, 10);
    signal(SIGTERM, on_term);
    setvbuf(stdout, NULL, _IOLBF, 0);

    put_env("NVIDIA_VISIBLE_DEVICES");
    put_env("CONSPIRATOR_DEVICES");
    put_env("CONSPIRATOR_RESOURCE");
    put_env("CONSPIRATOR_MIG_PROFILE");
    put_env("CONSPIRATOR_GPU_UUIDS");
    put_env("CONSPIRATOR_REGISTRY_SOCKET");
    const char *path = getenv("CONSPIRATOR_REGISTRY_SOCKET");
    const char *job = getenv("CONSPIRATOR_JOB"), *ns = getenv("CONSPIRATOR_NAMESPACE");
    char host[256] = "worker";
    gethostname(host, sizeof host - 1);
    if (!path || !job || !ns) {
        printf("missing CONSPIRATOR_REGISTRY_SOCKET, CONSPIRATOR_JOB or CONSPIRATOR_NAMESPACE\n");
        return 4;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        printf("socket %s: %s\n", path, strerror(errno));
        return 5;
    }
    printf("socket %s is a socket: %s\n", path, S_ISSOCK(st.st_mode) ? "yes" : "no");

    int ctl = sealed_memfd("conspirator-ctl", ctl_bytes);
    int data = sealed_memfd("conspirator-data", data_bytes);
    int bell = eventfd(0, EFD_CLOEXEC), done = eventfd(0, EFD_CLOEXEC);
    char *mem = mmap(NULL, data_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, data, 0);
    if (bell < 0 || done < 0 || mem == MAP_FAILED) {
        perror("eventfd/mmap");
        return 3;
    }
    snprintf(mem, data_bytes, "hello from %s", host);

    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
        printf("connect %s: %s\n", path, strerror(errno));
        return 6;
    }

    unsigned char pkt[24 + 1024];
    char *body = (char *)pkt + 24;
    int n = snprintf(body, 1024,
                     "{\"job\":\"%s/%s\",\"replica\":\"%s\",\"slots\":1,\"slot_bytes\":%lu,"
                     "\"result_bytes\":%lu,\"target\":\"memfd\",\"shape\":[%lu],"
                     "\"dtype\":\"uint8\",\"weight\":1.0,\"pid\":%d}",
                     ns, job, host, slot_bytes, result_bytes, slot_bytes, (int)getpid());
    memcpy(pkt, "CNSP", 4);
    pkt[4] = 1;         /* version */
    pkt[5] = REGISTER;  /* type */
    put_le(pkt + 6, 0, 2);   /* flags */
    put_le(pkt + 8, 1, 8);   /* request id */
    put_le(pkt + 16, (uint64_t)n, 4);
    put_le(pkt + 20, 0, 4);  /* aux */

    int fds[4] = {ctl, bell, done, data};
    char cbuf[CMSG_SPACE(sizeof fds)];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {.iov_base = pkt, .iov_len = 24 + (size_t)n};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                         .msg_controllen = sizeof cbuf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    if (sendmsg(s, &msg, 0) < 0) {
        printf("sendmsg: %s\n", strerror(errno));
        return 7;
    }

    unsigned char reply[24 + 65536 + 1];
    ssize_t got = recv(s, reply, sizeof reply - 1, 0);
    if (got < 24 || memcmp(reply, "CNSP", 4) != 0) {
        printf("bad reply (%zd bytes)\n", got);
        return 8;
    }
    reply[got] = 0;
    if (reply[5] == REGISTERED)
        printf("registered %s\n", (char *)reply + 24);
    else
        printf("refused type=%d %s\n", reply[5], (char *)reply + 24);
    printf("serving\n");
    while (!stop) pause();
    printf("stopping\n");
    return 0;
}
