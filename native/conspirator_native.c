/*
 * conspirator._native: the hot pieces of the data path in C.
 *
 *   Ring(buffer, base, capacity)   single-producer single-consumer ring of 32-byte entries
 *                                  living in a shared buffer (an mmap of a memfd), with
 *                                  acquire/release ordering on its two 64-bit indices
 *   copy(dst, dst_off, src, src_off, n)   the copy engine: bounds-checked memcpy with the
 *                                  GIL released (large copies: `rep movsb` where the CPU
 *                                  has ERMS, see large_copy below)
 *   Ring.submit(dst, dst_off, src, src_off, n, tag, slot)   the agent's submission in one
 *                                  call: the copy engine, then push (tag, slot, n); returns
 *                                  the copy's nanoseconds, -1 (nothing copied) when full
 *   doorbell_ring(fd) / doorbell_wait(fd, timeout_ms)   eventfd doorbells, GIL released
 *   parse_staged(data)             whole, well-formed STAGED frames -> [(request_id, aux,
 *                                  slot, length)], None for anything else (the agent's
 *                                  one-sided fast path; the frame decoder handles the rest)
 *
 * conspirator/wire/_native_py.py is the pure-Python fallback with the same behaviour
 * (same layout, same errors); tests run both.
 *
 * Ring layout at `base` (8-byte aligned):
 *   +0    u64 head   written by the producer only (count of entries ever pushed)
 *   +64   u64 tail   written by the consumer only (count of entries ever popped)
 *   +128  capacity entries of 32 bytes: u64 tag, u32 slot, u32 length, u32 status,
 *         u32 aux, u64 reserved
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RING_HEAD 0
#define RING_TAIL 64
#define RING_ENTRIES 128
#define ENTRY_SIZE 32

static PyObject *RingCorrupted;

#define LARGE_COPY_MIN (512 * 1024)
static void large_copy(char *d, const char *s, size_t n);
static int copy_checked(PyObject *dst_obj, Py_ssize_t dst_off, PyObject *src_obj,
                        Py_ssize_t src_off, Py_ssize_t n);

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    Py_ssize_t base;
    uint64_t capacity;
    unsigned char *mem;
} RingObject;

static int ring_check_open(RingObject *self) {
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "ring is closed");
        return -1;
    }
    return 0;
}

static int Ring_init(RingObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buffer", "base", "capacity", NULL};
    PyObject *buf;
    Py_ssize_t base;
    unsigned long long capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnK", kwlist, &buf, &base, &capacity))
        return -1;
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    self->has_view = 1;
    if (capacity == 0 || (capacity & (capacity - 1)) != 0 || capacity > (1u << 20)) {
        PyErr_SetString(PyExc_ValueError, "capacity must be a power of two up to 2**20");
        return -1;
    }
    if (base < 0 || (base % 8) != 0 ||
        (unsigned long long)base + RING_ENTRIES + capacity * ENTRY_SIZE >
            (unsigned long long)self->view.len) {
        PyErr_SetString(PyExc_ValueError, "ring does not fit in the buffer (or base unaligned)");
        return -1;
    }
    if (((uintptr_t)self->view.buf % 8) != 0) {
        PyErr_SetString(PyExc_ValueError, "buffer is not 8-byte aligned");
        return -1;
    }
    self->base = base;
    self->capacity = capacity;
    self->mem = (unsigned char *)self->view.buf + base;
    return 0;
}

static void Ring_dealloc(RingObject *self) {
    if (self->has_view) PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline uint64_t *idx(RingObject *self, int off) {
    return (uint64_t *)(self->mem + off);
}

static int ring_sane(RingObject *self, uint64_t head, uint64_t tail) {
    if (head - tail > self->capacity) {
        PyErr_Format(RingCorrupted, "ring indices corrupted (head %llu, tail %llu, capacity %llu)",
                     (unsigned long long)head, (unsigned long long)tail,
                     (unsigned long long)self->capacity);
        return -1;
    }
    return 0;
}

static int as_u64(PyObject *o, unsigned long long max, unsigned long long *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (v > max) {
        PyErr_SetString(PyExc_OverflowError, "ring entry field out of range");
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *Ring_push(RingObject *self, PyObject *args) {
    PyObject *o_tag, *o_slot, *o_len, *o_status = NULL, *o_aux = NULL;
    unsigned long long tag, slot, length, status = 0, aux = 0;
    if (!PyArg_ParseTuple(args, "OOO|OO", &o_tag, &o_slot, &o_len, &o_status, &o_aux)) return NULL;
    if (as_u64(o_tag, 0xFFFFFFFFFFFFFFFFULL, &tag) < 0 || as_u64(o_slot, 0xFFFFFFFFULL, &slot) < 0 ||
        as_u64(o_len, 0xFFFFFFFFULL, &length) < 0 ||
        (o_status && as_u64(o_status, 0xFFFFFFFFULL, &status) < 0) ||
        (o_aux && as_u64(o_aux, 0xFFFFFFFFULL, &aux) < 0))
        return NULL;
    if (ring_check_open(self) < 0) return NULL;
    uint64_t head = __atomic_load_n(idx(self, RING_HEAD), __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(idx(self, RING_TAIL), __ATOMIC_ACQUIRE);
    if (ring_sane(self, head, tail) < 0) return NULL;
    if (head - tail == self->capacity) Py_RETURN_FALSE;
    unsigned char *e = self->mem + RING_ENTRIES + (head & (self->capacity - 1)) * ENTRY_SIZE;
    uint64_t t = tag;
    uint32_t f[4] = {(uint32_t)slot, (uint32_t)length, (uint32_t)status, (uint32_t)aux};
    uint64_t zero = 0;
    memcpy(e, &t, 8);
    memcpy(e + 8, f, 16);
    memcpy(e + 24, &zero, 8);
    __atomic_store_n(idx(self, RING_HEAD), head + 1, __ATOMIC_RELEASE);
    Py_RETURN_TRUE;
}

static uint64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* The agent's submission: copy, then publish (tag, slot, n, 0, 0).  The ring is checked
 * for room first, so a full ring copies nothing. */
static PyObject *Ring_submit(RingObject *self, PyObject *args) {
    PyObject *dst_obj, *src_obj, *o_tag, *o_slot;
    Py_ssize_t dst_off, src_off, n;
    unsigned long long tag, slot;
    if (!PyArg_ParseTuple(args, "OnOnnOO", &dst_obj, &dst_off, &src_obj, &src_off, &n, &o_tag,
                          &o_slot))
        return NULL;
    if (as_u64(o_tag, 0xFFFFFFFFFFFFFFFFULL, &tag) < 0 || as_u64(o_slot, 0xFFFFFFFFULL, &slot) < 0)
        return NULL;
    if (n < 0 || (unsigned long long)n > 0xFFFFFFFFULL) {
        PyErr_SetString(PyExc_ValueError, "copy out of bounds");
        return NULL;
    }
    if (ring_check_open(self) < 0) return NULL;
    uint64_t head = __atomic_load_n(idx(self, RING_HEAD), __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(idx(self, RING_TAIL), __ATOMIC_ACQUIRE);
    if (ring_sane(self, head, tail) < 0) return NULL;
    if (head - tail == self->capacity) return PyLong_FromLong(-1);
    uint64_t t0 = mono_ns();
    if (n && copy_checked(dst_obj, dst_off, src_obj, src_off, n) < 0) return NULL;
    uint64_t took = mono_ns() - t0;
    if (ring_check_open(self) < 0) return NULL; /* closed while the GIL was released */
    unsigned char *e = self->mem + RING_ENTRIES + (head & (self->capacity - 1)) * ENTRY_SIZE;
    uint32_t f[4] = {(uint32_t)slot, (uint32_t)n, 0, 0};
    uint64_t zero = 0;
    memcpy(e, &tag, 8);
    memcpy(e + 8, f, 16);
    memcpy(e + 24, &zero, 8);
    __atomic_store_n(idx(self, RING_HEAD), head + 1, __ATOMIC_RELEASE);
    return PyLong_FromUnsignedLongLong(took);
}

static PyObject *entry_tuple(const unsigned char *e) {
    uint64_t tag;
    uint32_t f[4];
    memcpy(&tag, e, 8);
    memcpy(f, e + 8, 16);
    return Py_BuildValue("(KIIII)", (unsigned long long)tag, f[0], f[1], f[2], f[3]);
}

static PyObject *Ring_pop(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    if (ring_check_open(self) < 0) return NULL;
    uint64_t tail = __atomic_load_n(idx(self, RING_TAIL), __ATOMIC_RELAXED);
    uint64_t head = __atomic_load_n(idx(self, RING_HEAD), __ATOMIC_ACQUIRE);
    if (ring_sane(self, head, tail) < 0) return NULL;
    if (head == tail) Py_RETURN_NONE;
    unsigned char e[ENTRY_SIZE];
    memcpy(e, self->mem + RING_ENTRIES + (tail & (self->capacity - 1)) * ENTRY_SIZE, ENTRY_SIZE);
    __atomic_store_n(idx(self, RING_TAIL), tail + 1, __ATOMIC_RELEASE);
    return entry_tuple(e);
}

static PyObject *Ring_pop_many(RingObject *self, PyObject *args) {
    Py_ssize_t max = 64;
    if (!PyArg_ParseTuple(args, "|n", &max)) return NULL;
    if (ring_check_open(self) < 0) return NULL;
    uint64_t tail = __atomic_load_n(idx(self, RING_TAIL), __ATOMIC_RELAXED);
    uint64_t head = __atomic_load_n(idx(self, RING_HEAD), __ATOMIC_ACQUIRE);
    if (ring_sane(self, head, tail) < 0) return NULL;
    uint64_t n = head - tail;
    if (max < 0) max = 0;
    if (n > (uint64_t)max) n = (uint64_t)max;
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) return NULL;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char e[ENTRY_SIZE];
        memcpy(e, self->mem + RING_ENTRIES + ((tail + i) & (self->capacity - 1)) * ENTRY_SIZE,
               ENTRY_SIZE);
        PyObject *t = entry_tuple(e);
        if (!t) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    __atomic_store_n(idx(self, RING_TAIL), tail + n, __ATOMIC_RELEASE);
    return list;
}

static PyObject *Ring_len(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    if (ring_check_open(self) < 0) return NULL;
    uint64_t head = __atomic_load_n(idx(self, RING_HEAD), __ATOMIC_ACQUIRE);
    uint64_t tail = __atomic_load_n(idx(self, RING_TAIL), __ATOMIC_ACQUIRE);
    if (ring_sane(self, head, tail) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(head - tail);
}

static PyObject *Ring_close(RingObject *self, PyObject *Py_UNUSED(ignored)) {
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
        self->mem = NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Ring_get_capacity(RingObject *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->capacity);
}

static PyMethodDef Ring_methods[] = {
    {"push", (PyCFunction)Ring_push, METH_VARARGS,
     "push(tag, slot, length, status=0, aux=0) -> bool: False when full"},
    {"submit", (PyCFunction)Ring_submit, METH_VARARGS,
     "submit(dst, dst_off, src, src_off, n, tag, slot) -> copy nanoseconds, -1 when full: "
     "copy n bytes, then push (tag, slot, n)"},
    {"pop", (PyCFunction)Ring_pop, METH_NOARGS,
     "pop() -> (tag, slot, length, status, aux) or None when empty"},
    {"pop_many", (PyCFunction)Ring_pop_many, METH_VARARGS,
     "pop_many(max=64) -> list of entries, oldest first"},
    {"pending", (PyCFunction)Ring_len, METH_NOARGS, "entries pushed and not yet popped"},
    {"close", (PyCFunction)Ring_close, METH_NOARGS, "release the buffer"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Ring_getset[] = {
    {"capacity", (getter)Ring_get_capacity, NULL, "entries the ring holds", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "conspirator._native.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SPSC ring of 32-byte entries in a shared buffer",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
};

/* ------------------------------------------------------------------ copy engine */

/* Large copies (LARGE_COPY_MIN and up) use `rep movsb` on x86-64 CPUs with ERMS (enhanced
 * REP MOVSB, CPUID.7.0:EBX bit 9), as the kernel's own copies do.  glibc's memcpy stops
 * using it at about the L2 size on AMD and runs a vector loop instead; on the development
 * machine (AMD EPYC, Zen 5) that moves a 1 MiB request from staging into a slot at about
 * 51 GB/s where `rep movsb` moves it at 58-62 (benchmarks/datapath records both the
 * ceilings and the agent's copy rate).  CONSPIRATOR_COPY=memmove turns it off; overlapping
 * ranges, small copies and other CPUs use memmove. */
static int use_movsb = 0;

#if defined(__x86_64__)
#include <cpuid.h>
static void detect_large_copy(void) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        use_movsb = (b >> 9) & 1;
    }
    const char *env = getenv("CONSPIRATOR_COPY");
    if (env && strcmp(env, "memmove") == 0) use_movsb = 0;
}

static void large_copy(char *d, const char *s, size_t n) {
    if (use_movsb && (d + n <= s || s + n <= d)) {
        __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    } else {
        memmove(d, s, n);
    }
}
#else
static void detect_large_copy(void) {}
static void large_copy(char *d, const char *s, size_t n) { memmove(d, s, n); }
#endif

/* The copy engine: bounds-checked, the GIL released from 64 KiB.  0, or -1 with an
 * exception set. */
static int copy_checked(PyObject *dst_obj, Py_ssize_t dst_off, PyObject *src_obj,
                        Py_ssize_t src_off, Py_ssize_t n) {
    Py_buffer dst, src;
    if (PyObject_GetBuffer(dst_obj, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (PyObject_GetBuffer(src_obj, &src, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&dst);
        return -1;
    }
    int ret = -1;
    if (n < 0 || dst_off < 0 || src_off < 0 || dst_off > dst.len - n || src_off > src.len - n ||
        n > dst.len || n > src.len) {
        PyErr_SetString(PyExc_ValueError, "copy out of bounds");
        goto done;
    }
    char *d = (char *)dst.buf + dst_off;
    const char *s = (const char *)src.buf + src_off;
    if (n >= LARGE_COPY_MIN) {
        Py_BEGIN_ALLOW_THREADS
        large_copy(d, s, (size_t)n);
        Py_END_ALLOW_THREADS
    } else if (n >= 65536) {
        Py_BEGIN_ALLOW_THREADS
        memmove(d, s, (size_t)n);
        Py_END_ALLOW_THREADS
    } else {
        memmove(d, s, (size_t)n);
    }
    ret = 0;
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return ret;
}

static PyObject *native_copy(PyObject *mod, PyObject *args) {
    PyObject *dst_obj, *src_obj;
    Py_ssize_t dst_off, src_off, n;
    if (!PyArg_ParseTuple(args, "OnOnn", &dst_obj, &dst_off, &src_obj, &src_off, &n)) return NULL;
    if (copy_checked(dst_obj, dst_off, src_obj, src_off, n) < 0) return NULL;
    return PyLong_FromSsize_t(n);
}

/* ------------------------------------------------------------------ STAGED frames */

/* The wire format of conspirator/wire/frames.py: a 24-byte header "CNSP", version, type,
 * u16 flags, u64 request id, u32 length, u32 aux; a STAGED body is u32 slot, u32 length. */
#define FRAME_MIN_VERSION 1
#define FRAME_MAX_VERSION 1
#define T_STAGED 11
#define STAGED_FRAME 32

static PyObject *native_parse_staged(PyObject *mod, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    PyObject *out = NULL;
    if (b.len == 0 || b.len % STAGED_FRAME) goto none;
    const unsigned char *p = b.buf;
    Py_ssize_t count = b.len / STAGED_FRAME;
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *f = p + i * STAGED_FRAME;
        uint16_t flags;
        uint64_t id;
        uint32_t len;
        memcpy(&flags, f + 6, 2);
        memcpy(&id, f + 8, 8);
        memcpy(&len, f + 16, 4);
        if (memcmp(f, "CNSP", 4) != 0 || f[4] < FRAME_MIN_VERSION || f[4] > FRAME_MAX_VERSION ||
            f[5] != T_STAGED || flags != 0 || len != 8 || id == 0)
            goto none;
    }
    out = PyList_New(count);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *f = p + i * STAGED_FRAME;
        uint64_t id;
        uint32_t aux, slot, n;
        memcpy(&id, f + 8, 8);
        memcpy(&aux, f + 20, 4);
        memcpy(&slot, f + 24, 4);
        memcpy(&n, f + 28, 4);
        PyObject *t = Py_BuildValue("(KIII)", (unsigned long long)id, aux, slot, n);
        if (!t) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, t);
    }
    goto done;
none:
    out = Py_None;
    Py_INCREF(out);
done:
    PyBuffer_Release(&b);
    return out;
}

/* ------------------------------------------------------------------ doorbells */

static PyObject *native_doorbell_ring(PyObject *mod, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd)) return NULL;
    uint64_t one = 1;
    ssize_t r;
    do {
        r = write(fd, &one, sizeof one);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno != EAGAIN) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *native_doorbell_wait(PyObject *mod, PyObject *args) {
    int fd, timeout_ms;
    if (!PyArg_ParseTuple(args, "ii", &fd, &timeout_ms)) return NULL;
    struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
    int r;
    Py_BEGIN_ALLOW_THREADS
    do {
        r = poll(&p, 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (r == 0) return PyLong_FromLong(0);
    if (p.revents & (POLLERR | POLLNVAL)) {
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    uint64_t v = 0;
    ssize_t n = read(fd, &v, sizeof v);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLongLong(v);
}

static PyMethodDef module_methods[] = {
    {"copy", native_copy, METH_VARARGS,
     "copy(dst, dst_off, src, src_off, n) -> n: bounds-checked memcpy, GIL released"},
    {"doorbell_ring", native_doorbell_ring, METH_VARARGS, "doorbell_ring(fd): add 1 to an eventfd"},
    {"parse_staged", native_parse_staged, METH_O,
     "parse_staged(data) -> [(request_id, aux, slot, length)] for whole well-formed STAGED "
     "frames, else None"},
    {"doorbell_wait", native_doorbell_wait, METH_VARARGS,
     "doorbell_wait(fd, timeout_ms) -> count (0 on timeout): wait for and drain an eventfd"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "conspirator._native",
    "Hot data-path pieces in C: shared-memory ring, doorbells, copy engine.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&RingType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        Py_DECREF(m);
        return NULL;
    }
    RingCorrupted = PyErr_NewException("conspirator._native.RingCorrupted", PyExc_RuntimeError,
                                       NULL);
    if (!RingCorrupted || PyModule_AddObject(m, "RingCorrupted", RingCorrupted) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(RingCorrupted);
    PyModule_AddIntConstant(m, "ENTRY_SIZE", ENTRY_SIZE);
    PyModule_AddIntConstant(m, "RING_HEADER", RING_ENTRIES);
    PyModule_AddStringConstant(m, "IMPLEMENTATION", "c");
    detect_large_copy();
    PyModule_AddStringConstant(m, "LARGE_COPY", use_movsb ? "rep-movsb" : "memmove");
    return m;
}
