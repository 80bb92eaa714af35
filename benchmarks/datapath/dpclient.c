/*
 * The benchmark's client loop in C (loaded by dp_bench.py with ctypes), so that the client
 * -- which stands for the remote machine and its NIC -- costs the cores it shares as little
 * as possible.  Python does the handshake; these loops then drive an authenticated
 * connection (or, for the direct architecture, a worker's rings) and time every request.
 *
 * Frames are the project's wire protocol (conspirator/wire/frames.py): a 24-byte
 * little-endian header "CNSP", version 1, type, flags 0, request id, length, aux.
 * Rings are conspirator/wire/shm.py's: head at +0, tail at +64, 32-byte entries at +128.
 *
 * Every function keeps `depth` requests outstanding until `n` requests were sent or
 * `seconds` passed, records each request's latency (send to answer, ns) in lat[], and
 * returns the number answered, or -1 on an I/O or protocol error (errors[0] counts
 * ERROR answers).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define T_REQUEST 5
#define T_RESPONSE 6
#define T_ERROR 7
#define T_STAGED 11
#define MAXD 64

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void header(unsigned char *h, int type, uint64_t id, uint32_t len, uint32_t aux) {
    memcpy(h, "CNSP", 4);
    h[4] = 1;
    h[5] = (unsigned char)type;
    h[6] = h[7] = 0;
    memcpy(h + 8, &id, 8); /* little-endian host */
    memcpy(h + 16, &len, 4);
    memcpy(h + 20, &aux, 4);
}

static int write_all(int fd, struct iovec *iov, int cnt) {
    while (cnt > 0) {
        ssize_t w = writev(fd, iov, cnt);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        while (cnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r == 0) return -1;
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

/* Over a connection: staged == 0 sends the payload in REQUEST frames; staged == 1 copies
 * it into the staging region (slot = request % slots) and sends a STAGED frame. */
long run_stream(int fd, int staged, const unsigned char *payload, uint32_t size,
                unsigned char *staging, uint64_t slot_bytes, int slots, int depth, long n,
                double seconds, uint64_t *lat, long *errors) {
    uint64_t start[MAXD * 4 + 1];
    unsigned char hdr[24], rh[24], body[65536];
    uint64_t t_end = now_ns() + (uint64_t)(seconds * 1e9);
    long sent = 0, done = 0;
    if (depth > MAXD) depth = MAXD;
    if (staged && depth > slots) depth = slots;
    errors[0] = 0;
    while (done < sent || (sent < n && now_ns() < t_end)) {
        while (sent - done < depth && sent < n && now_ns() < t_end) {
            uint64_t id = (uint64_t)sent + 1;
            start[id % (MAXD * 4 + 1)] = now_ns();
            if (staged) {
                int slot = (int)(sent % slots);
                memcpy(staging + (uint64_t)slot * slot_bytes, payload, size);
                unsigned char frame[32];
                header(frame, T_STAGED, id, 8, 0);
                uint32_t s32 = (uint32_t)slot;
                memcpy(frame + 24, &s32, 4);
                memcpy(frame + 28, &size, 4);
                struct iovec v[1] = {{frame, 32}};
                if (write_all(fd, v, 1) < 0) return -1;
            } else {
                header(hdr, T_REQUEST, id, size, 0);
                struct iovec v[2] = {{hdr, 24}, {(void *)payload, size}};
                if (write_all(fd, v, size ? 2 : 1) < 0) return -1;
            }
            sent++;
        }
        /* The deadline can pass between the loop's test and the sends' test: then nothing
         * is outstanding and there is no answer to wait for. */
        if (done == sent) break;
        if (read_all(fd, rh, 24) < 0) return -1;
        uint64_t id;
        uint32_t len;
        memcpy(&id, rh + 8, 8);
        memcpy(&len, rh + 16, 4);
        if (memcmp(rh, "CNSP", 4) != 0 || len > sizeof body) return -1;
        if (len && read_all(fd, body, len) < 0) return -1;
        if (rh[5] == T_ERROR) {
            if (id == 0) return -1;
            errors[0]++;
        } else if (rh[5] != T_RESPONSE) {
            return -1;
        }
        lat[done] = now_ns() - start[id % (MAXD * 4 + 1)];
        done++;
    }
    return done;
}

/* Architecture (2): write into the worker's slot, push (tag, slot, size) on its
 * submission ring, ring its doorbell; wait on its completion eventfd. */
static int push(unsigned char *ring, uint64_t cap, uint64_t tag, uint32_t slot, uint32_t len) {
    uint64_t *head = (uint64_t *)ring, *tail = (uint64_t *)(ring + 64);
    uint64_t h = __atomic_load_n(head, __ATOMIC_RELAXED);
    uint64_t t = __atomic_load_n(tail, __ATOMIC_ACQUIRE);
    if (h - t >= cap) return 0;
    unsigned char *e = ring + 128 + (h & (cap - 1)) * 32;
    uint32_t f[4] = {slot, len, 0, 0};
    uint64_t zero = 0;
    memcpy(e, &tag, 8);
    memcpy(e + 8, f, 16);
    memcpy(e + 24, &zero, 8);
    __atomic_store_n(head, h + 1, __ATOMIC_RELEASE);
    return 1;
}

static int pop(unsigned char *ring, uint64_t cap, uint64_t *tag, uint32_t *slot) {
    uint64_t *head = (uint64_t *)ring, *tail = (uint64_t *)(ring + 64);
    uint64_t t = __atomic_load_n(tail, __ATOMIC_RELAXED);
    uint64_t h = __atomic_load_n(head, __ATOMIC_ACQUIRE);
    if (h == t) return 0;
    unsigned char *e = ring + 128 + (t & (cap - 1)) * 32;
    memcpy(tag, e, 8);
    memcpy(slot, e + 8, 4);
    __atomic_store_n(tail, t + 1, __ATOMIC_RELEASE);
    return 1;
}

long run_direct(unsigned char *ctl, uint64_t sq_off, uint64_t cq_off, uint64_t cap,
                unsigned char *data, uint64_t slot_stride, int slots, int bell, int done_fd,
                const unsigned char *payload, uint32_t size, int depth, long n, double seconds,
                uint64_t *lat, long *errors) {
    uint64_t start[MAXD];
    uint64_t *tags = (uint64_t *)(ctl + 128);
    int free_slots[MAXD], nfree = 0;
    uint64_t t_end = now_ns() + (uint64_t)(seconds * 1e9);
    long sent = 0, done = 0;
    uint64_t one = 1, cnt;
    if (slots > MAXD) slots = MAXD;
    if (depth > slots) depth = slots;
    for (int i = slots - 1; i >= 0; i--) free_slots[nfree++] = i;
    errors[0] = 0;
    while (done < sent || (sent < n && now_ns() < t_end)) {
        while (sent - done < depth && sent < n && now_ns() < t_end && nfree) {
            int slot = free_slots[--nfree];
            uint64_t tag = (uint64_t)sent + 1;
            start[slot] = now_ns();
            memcpy(data + (uint64_t)slot * slot_stride, payload, size);
            tags[slot] = tag;
            if (!push(ctl + sq_off, cap, tag, (uint32_t)slot, size)) return -1;
            if (write(bell, &one, 8) < 0 && errno != EAGAIN) return -1;
            sent++;
        }
        if (done == sent) break; /* the deadline passed between the two tests */
        uint64_t tag;
        uint32_t slot;
        while (!pop(ctl + cq_off, cap, &tag, &slot)) {
            struct pollfd p = {done_fd, POLLIN, 0};
            if (poll(&p, 1, 1000) < 0 && errno != EINTR) return -1;
            if (read(done_fd, &cnt, 8) < 0 && errno != EAGAIN) return -1;
        }
        if (slot >= (uint32_t)slots || tags[slot] != tag) return -1;
        tags[slot] = 0;
        lat[done++] = now_ns() - start[slot];
        free_slots[nfree++] = (int)slot;
    }
    return done;
}
