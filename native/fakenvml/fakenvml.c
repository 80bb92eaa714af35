/*
 * fakenvml: a fake libnvidia-ml.so.1 for tests.  It implements, against NVIDIA's own nvml.h
 * (nvml/nvml.h, vendored unmodified; see nvml/README.md for its notice), the NVML entry
 * points that Conspirator's NVML backend reaches through the real nvidia-ml-py bindings, on
 * GPUs described by a JSON file (devices.json).  It exports nothing else (exports.map), so a
 * backend call the fake does not know fails with NVML_ERROR_FUNCTION_NOT_FOUND in pynvml.
 *
 * What it proves: which NVML functions are called, with which arguments, struct versions
 * and buffer sizes, and that every NVML error the backend meets is handled.  What it does
 * not: anything about real GPUs (the driver's placement rules beyond NVIDIA's documented
 * tables, timings, resets, IDs the driver picks).  See docs/nvml.md.
 *
 * Files: this one (init, inventory, MIG mode, MIG devices, processes, events, test controls),
 * instances.c (GPU and compute instances), devicefile.c, persist.c (the driver state file),
 * state.h (what they share).
 *
 * The functions prefixed fakenvml_ are NOT NVML: they are test controls (load a device
 * file, allow MIG mode changes, start/stop a process on a device, inject an XID, count
 * mutating calls), called through ctypes.
 *
 * NVIDIA's nvml.h notice asks that its disclaimer be kept in code that uses it: NVIDIA MAKES
 * NO REPRESENTATION ABOUT THE SUITABILITY OF THIS SOURCE CODE FOR ANY PURPOSE.  IT IS
 * PROVIDED "AS IS" WITHOUT EXPRESS OR IMPLIED WARRANTY OF ANY KIND (full text, U.S.
 * Government End Users notice included, in nvml/nvml.h and nvml/README.md).
 */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include "nvml/nvml.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"

#include "state.h"

struct fake_state S;

struct nvmlDevice_st Hgpu[MAXGPU], Hmig[MAXGPU][MAXGI][MAXCI];
struct nvmlGpuInstance_st Hgi[MAXGPU][MAXGI];
struct nvmlComputeInstance_st Hci[MAXGPU][MAXGI][MAXCI];
struct nvmlEventSet_st Hset[MAXSET];
pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t evcond = PTHREAD_COND_INITIALIZER;


/* A call that changes the driver's state: it takes FAKENVML_OP_DELAY_MS (as MIG changes take
 * real time on a GPU, which lets a test kill a process mid-apply), and the state file of
 * FAKENVML_STATE is rewritten after it (persist.c), refused calls too (they count). */
void op_delay(void) {
    if (!S.opDelayMs) return;
    struct timespec d = {S.opDelayMs / 1000, (long)(S.opDelayMs % 1000) * 1000000L};
    while (nanosleep(&d, &d) != 0 && errno == EINTR) {}
}



/* ---- handles ------------------------------------------------------------------------ */

gpu_t *dev_gpu(nvmlDevice_t d) {
    struct nvmlDevice_st *h = d.handle;
    if (h >= &Hgpu[0] && h < &Hgpu[S.ngpu]) return &S.gpu[h - Hgpu];
    return NULL;
}

ci_t *dev_mig(nvmlDevice_t d, unsigned *gpu, unsigned *gi) {
    struct nvmlDevice_st *h = d.handle;
    char *base = (char *)&Hmig[0][0][0];
    if ((char *)h < base || (char *)h >= base + sizeof Hmig || !h->mig || h->gpu >= S.ngpu) return NULL;
    gi_t *g = &S.gpu[h->gpu].gi[h->gi];
    if (!g->used || !g->ci[h->ci].used) return NULL;
    if (gpu) *gpu = h->gpu;
    if (gi) *gi = h->gi;
    return &g->ci[h->ci];
}

gi_t *gi_of(nvmlGpuInstance_t g, unsigned *gpu) {
    struct nvmlGpuInstance_st *h = g.handle;
    char *base = (char *)&Hgi[0][0];
    if ((char *)h < base || (char *)h >= base + sizeof Hgi || h->gpu >= S.ngpu) return NULL;
    gi_t *gi = &S.gpu[h->gpu].gi[h->gi];
    if (!gi->used) return NULL;
    if (gpu) *gpu = h->gpu;
    return gi;
}

ci_t *ci_of(nvmlComputeInstance_t c, unsigned *gpu, unsigned *gi) {
    struct nvmlComputeInstance_st *h = c.handle;
    char *base = (char *)&Hci[0][0][0];
    if ((char *)h < base || (char *)h >= base + sizeof Hci || h->gpu >= S.ngpu) return NULL;
    gi_t *g = &S.gpu[h->gpu].gi[h->gi];
    if (!g->used || !g->ci[h->ci].used) return NULL;
    *gpu = h->gpu;
    *gi = h->gi;
    return &g->ci[h->ci];
}

const giprof_t *prof_by_id(const gpu_t *g, unsigned id) {
    for (unsigned i = 0; i < g->m->nprof; i++)
        if (g->m->prof[i].id == id) return &g->m->prof[i];
    return NULL;
}

nvmlReturn_t copy_str(char *dst, unsigned len, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}


/* ---- init, errors ------------------------------------------------------------------- */

static nvmlReturn_t init_locked(void) {
    if (!S.loaded) {
        const char *path = getenv("FAKENVML_CONFIG");
        if (!path || load_locked(path) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
        if (persist_restore() != 0) { S.loaded = 0; return NVML_ERROR_DRIVER_NOT_LOADED; }
        const char *delay = getenv("FAKENVML_OP_DELAY_MS");
        S.opDelayMs = delay ? (unsigned)strtoul(delay, NULL, 10) : 0;
    }
    S.initRef++;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    LOCKED(init_locked());
}

static nvmlReturn_t shutdown_locked(void) {
    if (S.initRef <= 0) return NVML_ERROR_UNINITIALIZED;
    S.initRef--;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlShutdown(void) { LOCKED(shutdown_locked()); }

API const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Insufficient resources";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires reset";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

/* ---- inventory ------------------------------------------------------------------------ */

static nvmlReturn_t count_locked(unsigned *n) {
    READY();
    if (!n) return NVML_ERROR_INVALID_ARGUMENT;
    *n = S.ngpu;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) { LOCKED(count_locked(deviceCount)); }

static nvmlReturn_t handle_locked(unsigned index, nvmlDevice_t *d) {
    READY();
    if (!d || index >= S.ngpu) return NVML_ERROR_INVALID_ARGUMENT;
    d->handle = &Hgpu[index];
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    LOCKED(handle_locked(index, device));
}

static nvmlReturn_t name_locked(nvmlDevice_t d, char *name, unsigned len) {
    READY();
    gpu_t *g = dev_gpu(d);
    unsigned gpu, gi;
    if (!g && dev_mig(d, &gpu, &gi)) {
        char mig[160];
        snprintf(mig, sizeof mig, "%s MIG %s", S.gpu[gpu].m->name,
                 S.gpu[gpu].m->prof[S.gpu[gpu].gi[gi].prof].name);
        return copy_str(name, len, mig);
    }
    return g ? copy_str(name, len, g->m->name) : NVML_ERROR_INVALID_ARGUMENT;
}

API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    LOCKED(name_locked(device, name, length));
}

static nvmlReturn_t uuid_locked(nvmlDevice_t d, char *uuid, unsigned len) {
    READY();
    gpu_t *g = dev_gpu(d);
    ci_t *c = g ? NULL : dev_mig(d, NULL, NULL);
    if (!g && !c) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_str(uuid, len, g ? g->uuid : c->uuid);
}

API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    LOCKED(uuid_locked(device, uuid, length));
}

static nvmlReturn_t memory_locked(nvmlDevice_t d, nvmlMemory_t *mem) {
    READY();
    gpu_t *g = dev_gpu(d);
    unsigned gpu, gi;
    unsigned long long mib;
    if (!mem) return NVML_ERROR_INVALID_ARGUMENT;
    if (g) mib = g->m->memoryMiB;
    else if (dev_mig(d, &gpu, &gi)) mib = S.gpu[gpu].m->prof[S.gpu[gpu].gi[gi].prof].memoryMiB;
    else return NVML_ERROR_INVALID_ARGUMENT;
    mem->total = mib << 20;
    mem->used = 0;
    mem->free = mem->total;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    LOCKED(memory_locked(device, memory));
}

static nvmlReturn_t index_locked(nvmlDevice_t d, unsigned *out, int minor) {
    READY();
    gpu_t *g = dev_gpu(d);
    (void)minor;  /* the fake's minor numbers are the indexes */
    if (!g || !out) return NVML_ERROR_INVALID_ARGUMENT;
    *out = (unsigned)(g - S.gpu);
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    LOCKED(index_locked(device, index, 0));
}

API nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber) {
    LOCKED(index_locked(device, minorNumber, 1));
}

/* ---- MIG mode --------------------------------------------------------------------------- */

static nvmlReturn_t get_mig_locked(nvmlDevice_t d, unsigned *cur, unsigned *pend) {
    READY();
    gpu_t *g = dev_gpu(d);
    if (!g || !cur || !pend) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->m->nprof) return NVML_ERROR_NOT_SUPPORTED;
    *cur = g->cur;
    *pend = g->pend;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode) {
    LOCKED(get_mig_locked(device, currentMode, pendingMode));
}

static int gpu_busy(const gpu_t *g) {
    if (g->npid) return 1;
    for (int i = 0; i < MAXGI; i++)
        if (g->gi[i].used) return 1;
    return 0;
}

static nvmlReturn_t set_mig_locked(nvmlDevice_t d, unsigned mode, nvmlReturn_t *status) {
    READY();
    S.mutations++;
    gpu_t *g = dev_gpu(d);
    if (!g || !status || mode > NVML_DEVICE_MIG_ENABLE) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->m->nprof) return NVML_ERROR_NOT_SUPPORTED;
    if (!S.allowMigModeSet) return NVML_ERROR_NO_PERMISSION;
    if (mode != g->cur && gpu_busy(g)) return NVML_ERROR_IN_USE;
    g->pend = mode;
    if (S.migModeNeedsReset && mode != g->cur) {
        *status = NVML_ERROR_RESET_REQUIRED;
    } else {
        g->cur = mode;
        *status = NVML_SUCCESS;
    }
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceSetMigMode(nvmlDevice_t device, unsigned int mode, nvmlReturn_t *activationStatus) {
    MUTATING(set_mig_locked(device, mode, activationStatus));
}

/* ---- MIG devices ---------------------------------------------------------------------------- */

static nvmlReturn_t max_mig_locked(nvmlDevice_t d, unsigned *count) {
    READY();
    gpu_t *g = dev_gpu(d);
    if (!g || !count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = g->m->nprof ? g->m->computeSlices : 0;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    LOCKED(max_mig_locked(device, count));
}

static nvmlReturn_t mig_by_index_locked(nvmlDevice_t d, unsigned index, nvmlDevice_t *out) {
    READY();
    gpu_t *g = dev_gpu(d);
    if (!g || !out) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->m->nprof || !g->cur) return NVML_ERROR_NOT_SUPPORTED;
    unsigned k = 0, gpu = (unsigned)(g - S.gpu);
    for (unsigned i = 0; i < MAXGI; i++)
        for (unsigned j = 0; g->gi[i].used && j < MAXCI; j++)
            if (g->gi[i].ci[j].used && k++ == index) {
                out->handle = &Hmig[gpu][i][j];
                return NVML_SUCCESS;
            }
    return NVML_ERROR_NOT_FOUND;
}

API nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index, nvmlDevice_t *migDevice) {
    LOCKED(mig_by_index_locked(device, index, migDevice));
}

static nvmlReturn_t mig_id_locked(nvmlDevice_t d, unsigned *id, int ci) {
    READY();
    unsigned gpu, gi;
    ci_t *c = dev_mig(d, &gpu, &gi);
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (!c) return dev_gpu(d) ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT;
    *id = ci ? c->id : S.gpu[gpu].gi[gi].id;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) { LOCKED(mig_id_locked(device, id, 0)); }

API nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    LOCKED(mig_id_locked(device, id, 1));
}

/* ---- running processes ------------------------------------------------------------------------- */

static void put_procs(const ci_t *c, unsigned gi, nvmlProcessInfo_t *out, unsigned *n, unsigned cap) {
    for (unsigned i = 0; i < c->npid; i++, (*n)++)
        if (out && *n < cap) out[*n] = (nvmlProcessInfo_t){c->pids[i], 0, gi, c->id};
}

static nvmlReturn_t procs_locked(nvmlDevice_t d, unsigned *count, nvmlProcessInfo_t *out, int graphics) {
    READY();
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned n = 0, cap = out ? *count : 0, gpu, gi;
    gpu_t *g = dev_gpu(d);
    ci_t *c = g ? NULL : dev_mig(d, &gpu, &gi);
    if (!g && !c) return NVML_ERROR_INVALID_ARGUMENT;
    if (graphics) {
        /* Nothing draws on the fake's GPUs. */
    } else if (c) {
        put_procs(c, S.gpu[gpu].gi[gi].id, out, &n, cap);
    } else {
        for (unsigned i = 0; i < g->npid; i++, n++)
            if (out && n < cap) out[n] = (nvmlProcessInfo_t){g->pids[i], 0, NO_ID, NO_ID};
        for (unsigned i = 0; i < MAXGI; i++)
            for (unsigned j = 0; g->gi[i].used && j < MAXCI; j++)
                if (g->gi[i].ci[j].used) put_procs(&g->gi[i].ci[j], g->gi[i].id, out, &n, cap);
    }
    nvmlReturn_t r = n > cap ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    *count = n;
    return r;
}

API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                         nvmlProcessInfo_t *infos) {
    LOCKED(procs_locked(device, infoCount, infos, 0));
}

API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                          nvmlProcessInfo_t *infos) {
    LOCKED(procs_locked(device, infoCount, infos, 1));
}

/* ---- events -------------------------------------------------------------------------------------- */

static struct nvmlEventSet_st *set_of(nvmlEventSet_t s) {
    struct nvmlEventSet_st *h = s.handle;
    return h >= &Hset[0] && h < &Hset[MAXSET] && h->used ? h : NULL;
}

static nvmlReturn_t set_create_locked(nvmlEventSet_t *out) {
    READY();
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < MAXSET; i++)
        if (!Hset[i].used) {
            memset(&Hset[i], 0, sizeof Hset[i]);
            Hset[i].used = 1;
            out->handle = &Hset[i];
            return NVML_SUCCESS;
        }
    return NVML_ERROR_INSUFFICIENT_RESOURCES;
}

API nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) { LOCKED(set_create_locked(set)); }

static nvmlReturn_t register_locked(nvmlDevice_t d, unsigned long long types, nvmlEventSet_t s) {
    READY();
    gpu_t *g = dev_gpu(d);
    struct nvmlEventSet_st *set = set_of(s);
    if (!g || !set) return NVML_ERROR_INVALID_ARGUMENT;
    if (types & ~(unsigned long long)nvmlEventTypeXidCriticalError) return NVML_ERROR_NOT_SUPPORTED;
    set->mask[g - S.gpu] |= types;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set) {
    LOCKED(register_locked(device, eventTypes, set));
}

static nvmlReturn_t wait_locked(nvmlEventSet_t s, nvmlEventData_t *data, unsigned timeoutms) {
    READY();
    struct nvmlEventSet_st *set = set_of(s);
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeoutms / 1000;
    until.tv_nsec += (long)(timeoutms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
    while (set->used && set->n == 0)
        if (pthread_cond_timedwait(&evcond, &mu, &until) == ETIMEDOUT) break;
    if (!set->used) return NVML_ERROR_INVALID_ARGUMENT;
    if (set->n == 0) return NVML_ERROR_TIMEOUT;
    event_t e = set->ev[set->head];
    set->head = (set->head + 1) % MAXEV;
    set->n--;
    data->device.handle = &Hgpu[e.gpu];
    data->eventType = nvmlEventTypeXidCriticalError;
    data->eventData = e.xid;
    data->gpuInstanceId = e.gi;
    data->computeInstanceId = e.ci;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    LOCKED(wait_locked(set, data, timeoutms));
}

static nvmlReturn_t set_free_locked(nvmlEventSet_t s) {
    READY();
    struct nvmlEventSet_st *set = set_of(s);
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    set->used = 0;
    pthread_cond_broadcast(&evcond);
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) { LOCKED(set_free_locked(set)); }

/* ---- test controls: NOT NVML ------------------------------------------------------------------ */

/* Where a device UUID (GPU-... or MIG-...) is: its GPU, and its GI/CI slots or MAXGI. */
static int find_uuid(const char *uuid, unsigned *gpu, unsigned *gi, unsigned *ci) {
    for (unsigned g = 0; g < S.ngpu; g++) {
        if (strcmp(S.gpu[g].uuid, uuid) == 0) { *gpu = g; *gi = *ci = MAXGI; return 0; }
        for (unsigned i = 0; i < MAXGI; i++)
            for (unsigned j = 0; S.gpu[g].gi[i].used && j < MAXCI; j++)
                if (S.gpu[g].gi[i].ci[j].used && strcmp(S.gpu[g].gi[i].ci[j].uuid, uuid) == 0) {
                    *gpu = g; *gi = i; *ci = j;
                    return 0;
                }
    }
    return -1;
}

/* Reset every GPU to the state a device file describes (event sets are dropped). 0 or -1. */
API int fakenvml_load(const char *path) {
    pthread_mutex_lock(&mu);
    int rc = load_locked(path);
    pthread_cond_broadcast(&evcond);
    pthread_mutex_unlock(&mu);
    return rc;
}

/* Why the last fakenvml_load (or the device file of FAKENVML_CONFIG) failed. */
API const char *fakenvml_last_error(void) { return S.error; }

/* Whether nvmlDeviceSetMigMode may succeed (otherwise NVML_ERROR_NO_PERMISSION), and whether
 * a change waits for a GPU reset (activationStatus NVML_ERROR_RESET_REQUIRED). */
API void fakenvml_allow_mig_mode_set(int allow, int needs_reset) {
    pthread_mutex_lock(&mu);
    S.allowMigModeSet = allow;
    S.migModeNeedsReset = needs_reset;
    pthread_mutex_unlock(&mu);
}

/* Process pid starts (running=1) or stops (0) using the GPU or MIG device uuid. 0 or -1. */
API int fakenvml_process(const char *uuid, unsigned pid, int running) {
    pthread_mutex_lock(&mu);
    unsigned g, gi, ci;
    int rc = find_uuid(uuid, &g, &gi, &ci);
    if (rc == 0) {
        unsigned *n = gi == MAXGI ? &S.gpu[g].npid : &S.gpu[g].gi[gi].ci[ci].npid;
        unsigned *pids = gi == MAXGI ? S.gpu[g].pids : S.gpu[g].gi[gi].ci[ci].pids;
        unsigned k = 0;
        while (k < *n && pids[k] != pid) k++;
        if (running && k == *n && *n < MAXPROC) pids[(*n)++] = pid;
        else if (!running && k < *n) pids[k] = pids[--(*n)];
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* An XID error on the GPU or MIG device uuid, delivered to every event set that registered
 * its GPU for nvmlEventTypeXidCriticalError.  Returns the number of sets reached, or -1. */
API int fakenvml_inject_xid(const char *uuid, unsigned long long xid) {
    pthread_mutex_lock(&mu);
    unsigned g, gi, ci;
    int reached = -1;
    if (find_uuid(uuid, &g, &gi, &ci) == 0) {
        event_t e = {g, xid, NO_ID, NO_ID};
        if (gi != MAXGI) e.gi = S.gpu[g].gi[gi].id, e.ci = S.gpu[g].gi[gi].ci[ci].id;
        reached = 0;
        for (int i = 0; i < MAXSET; i++) {
            struct nvmlEventSet_st *s = &Hset[i];
            if (!s->used || !(s->mask[g] & nvmlEventTypeXidCriticalError) || s->n == MAXEV) continue;
            s->ev[(s->head + s->n) % MAXEV] = e;
            s->n++;
            reached++;
        }
        pthread_cond_broadcast(&evcond);
    }
    pthread_mutex_unlock(&mu);
    return reached;
}

/* Calls of mutating NVML functions (MIG mode, GI/CI create/destroy) since the last load,
 * refused ones included: a read-only check must leave it at 0. */
API unsigned long long fakenvml_mutations(void) {
    pthread_mutex_lock(&mu);
    unsigned long long n = S.mutations;
    pthread_mutex_unlock(&mu);
    return n;
}
