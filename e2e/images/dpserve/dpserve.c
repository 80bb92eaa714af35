/*
 * dpserve: a static data-path worker for the e2e tests (a real container on the real node).
 *
 * It is the worker side of conspirator.runtime in C: it allocates its input buffer and
 * control block exactly as conspirator/wire/shm.py lays them out (sealed memfds, a
 * submission and a completion ring, slot tags, result areas, a doorbell and a completion
 * eventfd), registers them with the node daemon's buffer registry over the socket the
 * device plugin's Allocate gave the container (CONSPIRATOR_REGISTRY_SOCKET; SOCK_SEQPACKET,
 * one REGISTER frame with a JSON BufferSpec, four descriptors by SCM_RIGHTS), and then
 * serves requests with the "touch" model of conspirator.runtime.reference: the answer is
 * the payload length and its first and last 8 bytes (three little-endian u64).
 *
 * Identity comes from the environment the operator sets: CONSPIRATOR_NAMESPACE,
 * CONSPIRATOR_JOB, CONSPIRATOR_POD.  SIGTERM (the kubelet deleting the pod) is a graceful
 * drain as conspirator.runtime does it (docs/datapath.md, "Moves that drop nothing"):
 * state DRAINING in the control block, DRAIN to the registry, serving on until the agent
 * sets the drained flag (nothing in flight) or CONSPIRATOR_DRAIN_TIMEOUT s (25) pass, then
 * exit 0 (closing the socket withdraws the buffer).  SIGINT stops at once; it exits 3 if
 * the registry closes.
 *
 * usage: dpserve [SLOT_BYTES [SLOTS [SERVICE_US]]]   (defaults 65536, 2 and 0)
 *
 * SERVICE_US > 0 makes each request take that long (a model of known speed: one replica
 * serves at most 1e6 / SERVICE_US requests/s, whatever the host), for the autoscaling and
 * profile-refinement tests.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define REGISTER 32
#define REGISTERED 33
#define ERROR 7
#define ACK 36
#define DRAIN 37
#define OFF_DRAINED 56

static volatile sig_atomic_t stop, drain;
static void on_int(int sig) { (void)sig; stop = 1; }
static void on_term(int sig) { (void)sig; drain = 1; }

static uint64_t round_up(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

static int sealed_memfd(const char *name, size_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        perror("memfd");
        exit(2);
    }
    return fd;
}

static void header(unsigned char *h, int type, uint64_t id, uint32_t len) {
    memcpy(h, "CNSP", 4);
    h[4] = 1;
    h[5] = (unsigned char)type;
    h[6] = h[7] = 0;
    memcpy(h + 8, &id, 8);
    memcpy(h + 16, &len, 4);
    memset(h + 20, 0, 4);
}

/* The SPSC ring of conspirator/wire/shm.py: head +0, tail +64, 32-byte entries at +128. */
static int ring_pop(unsigned char *r, uint64_t cap, uint64_t *tag, uint32_t *slot,
                    uint32_t *len) {
    uint64_t *head = (uint64_t *)r, *tail = (uint64_t *)(r + 64);
    uint64_t t = __atomic_load_n(tail, __ATOMIC_RELAXED);
    uint64_t h = __atomic_load_n(head, __ATOMIC_ACQUIRE);
    if (h == t) return 0;
    unsigned char *e = r + 128 + (t & (cap - 1)) * 32;
    memcpy(tag, e, 8);
    memcpy(slot, e + 8, 4);
    memcpy(len, e + 12, 4);
    __atomic_store_n(tail, t + 1, __ATOMIC_RELEASE);
    return 1;
}

static int ring_push(unsigned char *r, uint64_t cap, uint64_t tag, uint32_t slot, uint32_t len,
                     uint32_t status, uint32_t aux) {
    uint64_t *head = (uint64_t *)r, *tail = (uint64_t *)(r + 64);
    uint64_t h = __atomic_load_n(head, __ATOMIC_RELAXED);
    uint64_t t = __atomic_load_n(tail, __ATOMIC_ACQUIRE);
    if (h - t >= cap) return 0;
    unsigned char *e = r + 128 + (h & (cap - 1)) * 32;
    uint32_t f[4] = {slot, len, status, aux};
    uint64_t zero = 0;
    memcpy(e, &tag, 8);
    memcpy(e + 8, f, 16);
    memcpy(e + 24, &zero, 8);
    __atomic_store_n(head, h + 1, __ATOMIC_RELEASE);
    return 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    uint64_t slot_bytes = argc > 1 ? strtoull(argv[1], NULL, 10) : 65536;
    uint32_t slots = argc > 2 ? (uint32_t)atoi(argv[2]) : 2;
    long service_us = argc > 3 ? atol(argv[3]) : 0;
    const uint64_t result_bytes = 64;
    const char *sock_path = getenv("CONSPIRATOR_REGISTRY_SOCKET");
    const char *ns = getenv("CONSPIRATOR_NAMESPACE");
    const char *job = getenv("CONSPIRATOR_JOB");
    const char *pod = getenv("CONSPIRATOR_POD");
    char host[256] = "dpserve";
    gethostname(host, sizeof host - 1);
    if (!sock_path || !ns || !job) {
        fprintf(stderr, "need CONSPIRATOR_REGISTRY_SOCKET, CONSPIRATOR_NAMESPACE, "
                        "CONSPIRATOR_JOB\n");
        return 2;
    }
    if (!pod || !*pod) pod = host;
    signal(SIGTERM, on_term);
    signal(SIGINT, on_int);

    /* Geometry, as conspirator.wire.shm.Geometry computes it. */
    uint64_t cap = 1;
    while (cap < 2 * (uint64_t)slots) cap <<= 1;
    uint64_t ring_bytes = 128 + cap * 32;
    uint64_t sq = round_up(128 + 8 * (uint64_t)slots, 64), cq = sq + ring_bytes;
    uint64_t results = round_up(cq + ring_bytes, PAGE), rstride = round_up(result_bytes, 64);
    uint64_t control = round_up(results + slots * rstride, PAGE);
    uint64_t stride = round_up(slot_bytes, PAGE), data_bytes = slots * stride;

    int ctl_fd = sealed_memfd("conspirator-ctl", control);
    int data_fd = sealed_memfd("conspirator-input", data_bytes);
    int bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int done = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    unsigned char *ctl = mmap(NULL, control, PROT_READ | PROT_WRITE, MAP_SHARED, ctl_fd, 0);
    unsigned char *data = mmap(NULL, data_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, data_fd, 0);
    if (bell < 0 || done < 0 || ctl == MAP_FAILED || data == MAP_FAILED) {
        perror("setup");
        return 2;
    }
    /* header: magic, version, slots, slot_bytes, result_bytes, capacity, state, pid */
    memcpy(ctl, "CNSPCTL1", 8);
    uint32_t u32 = 1;
    memcpy(ctl + 8, &u32, 4);
    memcpy(ctl + 12, &slots, 4);
    memcpy(ctl + 16, &slot_bytes, 8);
    memcpy(ctl + 24, &result_bytes, 8);
    u32 = (uint32_t)cap;
    memcpy(ctl + 32, &u32, 4);
    u32 = 1; /* READY */
    memcpy(ctl + 36, &u32, 4);
    u32 = (uint32_t)getpid();
    memcpy(ctl + 40, &u32, 4);

    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, sock_path, sizeof addr.sun_path - 1);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect to the buffer registry");
        return 2;
    }
    char body[1024];
    int n = snprintf(body, sizeof body,
                     "{\"job\":\"%s/%s\",\"replica\":\"%s\",\"slots\":%u,\"slot_bytes\":%llu,"
                     "\"result_bytes\":%llu,\"target\":\"memfd\",\"shape\":[%llu],"
                     "\"dtype\":\"uint8\",\"weight\":1.0,\"pid\":%d}",
                     ns, job, pod, slots, (unsigned long long)slot_bytes,
                     (unsigned long long)result_bytes, (unsigned long long)slot_bytes,
                     (int)getpid());
    unsigned char frame[24 + sizeof body];
    header(frame, REGISTER, 1, (uint32_t)n);
    memcpy(frame + 24, body, (size_t)n);
    int fds[4] = {ctl_fd, bell, done, data_fd};
    char cbuf[CMSG_SPACE(sizeof fds)];
    struct iovec iov = {frame, 24 + (size_t)n};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                         .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cm), fds, sizeof fds);
    if (sendmsg(s, &msg, 0) < 0) {
        perror("sendmsg");
        return 2;
    }
    unsigned char reply[24 + 4096];
    ssize_t r = recv(s, reply, sizeof reply - 1, 0);
    if (r < 24 || (reply[5] != REGISTERED && reply[5] != ERROR)) {
        fprintf(stderr, "no answer from the registry\n");
        return 2;
    }
    reply[r] = 0;
    if (reply[5] == ERROR) {
        fprintf(stderr, "registration refused: %s\n", (char *)reply + 24);
        return 2;
    }
    printf("registered %s\n", (char *)reply + 24);
    printf("serving %u slots of %llu bytes as %s/%s replica %s\n", slots,
           (unsigned long long)slot_bytes, ns, job, pod);

    const char *bid_at = strstr((char *)reply + 24, "\"buffer_id\"");
    unsigned long buffer_id = bid_at ? strtoul(strchr(bid_at, ':') + 1, NULL, 10) : 0;
    const char *dt = getenv("CONSPIRATOR_DRAIN_TIMEOUT");
    double drain_timeout = dt && *dt ? atof(dt) : 25.0;
    struct timespec drain_end = {0, 0};
    int draining = 0;

    unsigned long served = 0;
    while (!stop) {
        if (drain && !draining) {
            draining = 1;
            clock_gettime(CLOCK_MONOTONIC, &drain_end);
            drain_end.tv_sec += (time_t)drain_timeout;
            u32 = 3; /* DRAINING */
            memcpy(ctl + 36, &u32, 4);
            char dbody[128];
            int dn = snprintf(dbody, sizeof dbody,
                              "{\"buffer_id\":%lu,\"reason\":\"worker stopping\"}", buffer_id);
            unsigned char dframe[24 + sizeof dbody];
            header(dframe, DRAIN, 2, (uint32_t)dn);
            memcpy(dframe + 24, dbody, (size_t)dn);
            struct pollfd ap = {s, POLLIN, 0};
            ssize_t ar = -1;
            if (send(s, dframe, 24 + (size_t)dn, 0) > 0 && poll(&ap, 1, 5000) > 0)
                ar = recv(s, reply, sizeof reply - 1, 0);
            if (ar >= 24) reply[ar] = 0;
            if (ar < 24 || reply[5] != ACK || !strstr((char *)reply + 24, "true")) {
                fprintf(stderr, "drain refused: stopping now\n");
                break;
            }
            printf("draining buffer %lu (up to %g s)\n", buffer_id, drain_timeout);
        }
        if (draining) {
            uint32_t drained;
            memcpy(&drained, ctl + OFF_DRAINED, 4);
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (drained) {
                printf("drained\n");
                break;
            }
            if (now.tv_sec > drain_end.tv_sec ||
                (now.tv_sec == drain_end.tv_sec && now.tv_nsec >= drain_end.tv_nsec)) {
                fprintf(stderr, "drain timed out\n");
                break;
            }
        }
        struct pollfd p[2] = {{bell, POLLIN, 0}, {s, POLLIN, 0}};
        if (poll(p, 2, 500) < 0 && errno != EINTR) break;
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            char b;
            if (recv(s, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
                fprintf(stderr, "the buffer registry closed the session\n");
                return 3;
            }
        }
        uint64_t cnt;
        if (read(bell, &cnt, 8) < 0 && errno != EAGAIN) break;
        uint64_t tag;
        uint32_t slot, len;
        /* A SIGTERM is announced at once, even while requests keep coming. */
        while (!(drain && !draining) && ring_pop(ctl + sq, cap, &tag, &slot, &len)) {
            uint32_t status = 0, out = 24;
            if (service_us > 0) {
                struct timespec ts = {service_us / 1000000, (service_us % 1000000) * 1000};
                while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
            }
            if (slot >= slots || len > slot_bytes) {
                status = 3; /* BAD_INPUT */
                out = 0;
                slot = slot < slots ? slot : 0;
            } else {
                const unsigned char *in = data + (uint64_t)slot * stride;
                uint64_t v[3] = {len, 0, 0};
                memcpy(&v[1], in, len < 8 ? len : 8);
                memcpy(&v[2], in + (len > 8 ? len - 8 : 0), len < 8 ? len : 8);
                memcpy(ctl + results + (uint64_t)slot * rstride, v, sizeof v);
            }
            while (!ring_push(ctl + cq, cap, tag, slot, out, status, 0)) usleep(100);
            uint64_t one = 1;
            if (write(done, &one, 8) < 0 && errno != EAGAIN) break;
            served++;
        }
    }
    printf("stopped after %lu requests\n", served);
    return 0;
}
