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
static struct nvmlEventSet_st Hset[MAXSET];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t evcond = PTHREAD_COND_INITIALIZER;

#define LOCKED(expr) do { pthread_mutex_lock(&mu); nvmlReturn_t r_ = (expr); pthread_mutex_unlock(&mu); return r_; } while (0)

/* A call that changes the driver's state: it takes FAKENVML_OP_DELAY_MS (as MIG changes take
 * real time on a GPU, which lets a test kill a process mid-apply), and the state file of
 * FAKENVML_STATE is rewritten after it (persist.c), refused calls too (they count). */
static void op_delay(void) {
    if (!S.opDelayMs) return;
    struct timespec d = {S.opDelayMs / 1000, (long)(S.opDelayMs % 1000) * 1000000L};
    while (nanosleep(&d, &d) != 0 && errno == EINTR) {}
}

#define MUTATING(expr) do { op_delay(); pthread_mutex_lock(&mu); nvmlReturn_t r_ = (expr); \
    if (persist_save() != 0 && r_ == NVML_SUCCESS) r_ = NVML_ERROR_UNKNOWN; \
    pthread_mutex_unlock(&mu); return r_; } while (0)

/* ---- device file ------------------------------------------------------------------ */

static unsigned num(const jv *o, const char *k, unsigned dflt) {
    const jv *v = json_get(o, k);
    return v && (v->t == J_NUM || v->t == J_BOOL) ? (unsigned)v->num : dflt;
}

static int load_model(model_t *m, const char *key, const jv *o) {
    const jv *name = json_get(o, "name"), *profs = json_get(o, "profiles");
    snprintf(m->key, sizeof m->key, "%s", key);
    snprintf(m->name, sizeof m->name, "%s", name && name->t == J_STR ? name->str : key);
    m->memoryMiB = num(o, "memoryMiB", 0);
    m->memSlices = num(o, "memorySlices", 0);
    m->computeSlices = num(o, "computeSlices", 0);
    m->nprof = 0;
    if (!profs) return 0;
    if (profs->t != J_ARR || profs->n > MAXPROF) return -1;
    for (int i = 0; i < profs->n; i++) {
        const jv *p = profs->kids[i], *pn = json_get(p, "name"), *pl = json_get(p, "placements");
        giprof_t *g = &m->prof[m->nprof++];
        if (!pn || pn->t != J_STR || !pl || pl->t != J_ARR || pl->n > MAXPLACE) return -1;
        snprintf(g->name, sizeof g->name, "%s", pn->str);
        g->profile = num(p, "profile", 999);
        g->id = num(p, "id", 999);
        g->slices = num(p, "slices", 0);
        g->memSlices = num(p, "memorySlices", 0);
        g->instances = num(p, "instances", 0);
        g->sms = num(p, "sms", 0);
        g->copyEngines = num(p, "copyEngines", 1);
        g->decoders = num(p, "decoders", 0);
        g->encoders = num(p, "encoders", 0);
        g->jpegs = num(p, "jpegs", 0);
        g->ofas = num(p, "ofas", 0);
        g->memoryMiB = num(p, "memoryMiB", 0);
        g->media = strstr(g->name, "+me") != NULL;
        g->nplace = (unsigned)pl->n;
        for (int j = 0; j < pl->n; j++) g->place[j] = (unsigned)pl->kids[j]->num;
        if (g->profile >= NVML_GPU_INSTANCE_PROFILE_COUNT || g->slices == 0 || g->memSlices == 0) return -1;
    }
    return 0;
}

static void gpu_uuid(char *out, size_t n, unsigned index, const char *model) {
    unsigned h = 2166136261u;
    for (const char *c = model; *c; c++) h = (h ^ (unsigned char)*c) * 16777619u;
    snprintf(out, n, "GPU-%08x-fa6e-4e11-8000-%012x", h, 0xF00D0000u + index);
}

static int load_locked(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(S.error, sizeof S.error, "%s: %s", path, strerror(errno)); return -1; }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    if (!text || fread(text, 1, (size_t)len, f) != (size_t)len) { fclose(f); free(text); return -1; }
    fclose(f);
    text[len] = '\0';
    char err[160];
    jv *doc = json_parse(text, err, sizeof err);
    free(text);
    if (!doc) { snprintf(S.error, sizeof S.error, "%s: %s", path, err); return -1; }
    const jv *models = json_get(doc, "models"), *gpus = json_get(doc, "gpus");
    int rc = -1;
    memset(S.gpu, 0, sizeof S.gpu);
    memset(Hset, 0, sizeof Hset);
    S.ngpu = S.nmodel = 0;
    if (!models || models->t != J_OBJ || models->n > MAXMODEL || !gpus || gpus->t != J_ARR || gpus->n > MAXGPU) {
        snprintf(S.error, sizeof S.error, "%s: needs \"models\" (object) and \"gpus\" (array)", path);
        goto out;
    }
    for (int i = 0; i < models->n; i++) {
        if (load_model(&S.models[S.nmodel++], models->keys[i], models->kids[i]) != 0) {
            snprintf(S.error, sizeof S.error, "%s: model %s is malformed", path, models->keys[i]);
            goto out;
        }
    }
    for (int i = 0; i < gpus->n; i++) {
        const jv *g = gpus->kids[i], *mk = json_get(g, "model");
        gpu_t *gp = &S.gpu[S.ngpu];
        for (unsigned k = 0; mk && mk->t == J_STR && k < S.nmodel; k++)
            if (strcmp(S.models[k].key, mk->str) == 0) gp->m = &S.models[k];
        if (!gp->m) { snprintf(S.error, sizeof S.error, "%s: gpus[%d]: unknown model", path, i); goto out; }
        gp->cur = gp->pend = gp->m->nprof ? num(g, "migEnabled", 1) : 0;
        gpu_uuid(gp->uuid, sizeof gp->uuid, S.ngpu, gp->m->key);
        Hgpu[S.ngpu] = (struct nvmlDevice_st){0, S.ngpu, 0, 0};
        S.ngpu++;
    }
    S.allowMigModeSet = (int)num(doc, "allowMigModeSet", 0);
    S.migModeNeedsReset = (int)num(doc, "migModeNeedsReset", 0);
    S.mutations = 0;
    S.loaded = 1;
    rc = 0;
out:
    json_free(doc);
    if (rc != 0) S.loaded = 0, S.ngpu = 0;
    return rc;
}

/* ---- handles ------------------------------------------------------------------------ */

static gpu_t *dev_gpu(nvmlDevice_t d) {
    struct nvmlDevice_st *h = d.handle;
    if (h >= &Hgpu[0] && h < &Hgpu[S.ngpu]) return &S.gpu[h - Hgpu];
    return NULL;
}

static ci_t *dev_mig(nvmlDevice_t d, unsigned *gpu, unsigned *gi) {
    struct nvmlDevice_st *h = d.handle;
    char *base = (char *)&Hmig[0][0][0];
    if ((char *)h < base || (char *)h >= base + sizeof Hmig || !h->mig || h->gpu >= S.ngpu) return NULL;
    gi_t *g = &S.gpu[h->gpu].gi[h->gi];
    if (!g->used || !g->ci[h->ci].used) return NULL;
    if (gpu) *gpu = h->gpu;
    if (gi) *gi = h->gi;
    return &g->ci[h->ci];
}

static gi_t *gi_of(nvmlGpuInstance_t g, unsigned *gpu) {
    struct nvmlGpuInstance_st *h = g.handle;
    char *base = (char *)&Hgi[0][0];
    if ((char *)h < base || (char *)h >= base + sizeof Hgi || h->gpu >= S.ngpu) return NULL;
    gi_t *gi = &S.gpu[h->gpu].gi[h->gi];
    if (!gi->used) return NULL;
    if (gpu) *gpu = h->gpu;
    return gi;
}

static ci_t *ci_of(nvmlComputeInstance_t c, unsigned *gpu, unsigned *gi) {
    struct nvmlComputeInstance_st *h = c.handle;
    char *base = (char *)&Hci[0][0][0];
    if ((char *)h < base || (char *)h >= base + sizeof Hci || h->gpu >= S.ngpu) return NULL;
    gi_t *g = &S.gpu[h->gpu].gi[h->gi];
    if (!g->used || !g->ci[h->ci].used) return NULL;
    *gpu = h->gpu;
    *gi = h->gi;
    return &g->ci[h->ci];
}

static const giprof_t *prof_by_id(const gpu_t *g, unsigned id) {
    for (unsigned i = 0; i < g->m->nprof; i++)
        if (g->m->prof[i].id == id) return &g->m->prof[i];
    return NULL;
}

static nvmlReturn_t copy_str(char *dst, unsigned len, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

#define READY() do { if (!S.loaded || S.initRef <= 0) return NVML_ERROR_UNINITIALIZED; } while (0)

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

/* ---- GPU instance profiles and placements -------------------------------------------------- */

static gpu_t *mig_gpu(nvmlDevice_t d, nvmlReturn_t *r) {
    gpu_t *g = dev_gpu(d);
    *r = !g ? NVML_ERROR_INVALID_ARGUMENT : !g->m->nprof || !g->cur ? NVML_ERROR_NOT_SUPPORTED : NVML_SUCCESS;
    return *r == NVML_SUCCESS ? g : NULL;
}

static nvmlReturn_t gi_profile_locked(nvmlDevice_t d, unsigned profile, nvmlGpuInstanceProfileInfo_v2_t *info) {
    READY();
    nvmlReturn_t r;
    if (!info) return NVML_ERROR_INVALID_ARGUMENT;
    gpu_t *g = mig_gpu(d, &r);
    if (!g) return r;
    if (info->version != nvmlGpuInstanceProfileInfo_v2 && info->version != nvmlGpuInstanceProfileInfo_v3)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (profile >= NVML_GPU_INSTANCE_PROFILE_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    const giprof_t *p = NULL;
    for (unsigned i = 0; i < g->m->nprof; i++)
        if (g->m->prof[i].profile == profile) p = &g->m->prof[i];
    if (!p) return NVML_ERROR_NOT_SUPPORTED;
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    snprintf(name, sizeof name, "MIG %s", p->name);
    if (info->version == nvmlGpuInstanceProfileInfo_v3) {
        nvmlGpuInstanceProfileInfo_v3_t *v3 = (nvmlGpuInstanceProfileInfo_v3_t *)(void *)info;
        *v3 = (nvmlGpuInstanceProfileInfo_v3_t){
            .version = nvmlGpuInstanceProfileInfo_v3, .id = p->id, .sliceCount = p->slices,
            .instanceCount = p->instances, .multiprocessorCount = p->sms,
            .copyEngineCount = p->copyEngines, .decoderCount = p->decoders,
            .encoderCount = p->encoders, .jpegCount = p->jpegs, .ofaCount = p->ofas,
            .memorySizeMB = p->memoryMiB, .capabilities = NVML_GPU_INSTANCE_PROFILE_CAPS_P2P};
        memcpy(v3->name, name, sizeof name);
    } else {
        *info = (nvmlGpuInstanceProfileInfo_v2_t){
            .version = nvmlGpuInstanceProfileInfo_v2, .id = p->id, .isP2pSupported = 1,
            .sliceCount = p->slices, .instanceCount = p->instances, .multiprocessorCount = p->sms,
            .copyEngineCount = p->copyEngines, .decoderCount = p->decoders,
            .encoderCount = p->encoders, .jpegCount = p->jpegs, .ofaCount = p->ofas,
            .memorySizeMB = p->memoryMiB};
        memcpy(info->name, name, sizeof name);
    }
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfoV(nvmlDevice_t device, unsigned int profile,
                                                      nvmlGpuInstanceProfileInfo_v2_t *info) {
    LOCKED(gi_profile_locked(device, profile, info));
}

static nvmlReturn_t placements_locked(nvmlDevice_t d, unsigned id, nvmlGpuInstancePlacement_t *out, unsigned *count) {
    READY();
    gpu_t *g = dev_gpu(d);
    if (!g || !count) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->m->nprof) return NVML_ERROR_NOT_SUPPORTED;
    const giprof_t *p = prof_by_id(g, id);
    if (!p) return NVML_ERROR_INVALID_ARGUMENT;
    if (out) {
        /* "If non-NULL must be large enough": the caller's count is not read. */
        for (unsigned i = 0; i < p->nplace; i++) out[i] = (nvmlGpuInstancePlacement_t){p->place[i], p->memSlices};
    }
    *count = p->nplace;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetGpuInstancePossiblePlacements_v2(nvmlDevice_t device, unsigned int profileId,
                                                               nvmlGpuInstancePlacement_t *placements,
                                                               unsigned int *count) {
    LOCKED(placements_locked(device, profileId, placements, count));
}

/* ---- GPU instances ------------------------------------------------------------------------ */

static nvmlReturn_t create_gi_locked(nvmlDevice_t d, unsigned id, const nvmlGpuInstancePlacement_t *pl,
                                     nvmlGpuInstance_t *out) {
    READY();
    S.mutations++;
    nvmlReturn_t r;
    if (!pl || !out) return NVML_ERROR_INVALID_ARGUMENT;
    gpu_t *g = mig_gpu(d, &r);
    if (!g) return r;
    const giprof_t *p = prof_by_id(g, id);
    if (!p || pl->size != p->memSlices) return NVML_ERROR_INVALID_ARGUMENT;
    int valid = 0;
    for (unsigned i = 0; i < p->nplace; i++) valid |= p->place[i] == pl->start;
    if (!valid) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long want = ((1ull << p->memSlices) - 1) << pl->start, used = 0;
    unsigned compute = p->slices, same = 1, media = (unsigned)p->media, free_slot = MAXGI;
    for (unsigned i = 0; i < MAXGI; i++) {
        const gi_t *x = &g->gi[i];
        if (!x->used) { if (free_slot == MAXGI) free_slot = i; continue; }
        const giprof_t *q = &g->m->prof[x->prof];
        used |= ((1ull << q->memSlices) - 1) << x->start;
        compute += q->slices;
        same += q == p;
        media += (unsigned)q->media;
    }
    if ((used & want) || compute > g->m->computeSlices || same > p->instances || media > 1 || free_slot == MAXGI)
        return NVML_ERROR_INSUFFICIENT_RESOURCES;
    /* The lowest free GI id from 1 (the driver picks its own; nobody may rely on them). */
    unsigned gid = 1;
    for (int again = 1; again;) {
        again = 0;
        for (unsigned i = 0; i < MAXGI; i++)
            if (g->gi[i].used && g->gi[i].id == gid) { gid++; again = 1; }
    }
    gi_t *x = &g->gi[free_slot];
    memset(x, 0, sizeof *x);
    x->used = 1;
    x->id = gid;
    x->start = pl->start;
    x->prof = (int)(p - g->m->prof);
    unsigned gpu = (unsigned)(g - S.gpu);
    Hgi[gpu][free_slot] = (struct nvmlGpuInstance_st){gpu, free_slot};
    out->handle = &Hgi[gpu][free_slot];
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceCreateGpuInstanceWithPlacement(nvmlDevice_t device, unsigned int profileId,
                                                          const nvmlGpuInstancePlacement_t *placement,
                                                          nvmlGpuInstance_t *gpuInstance) {
    MUTATING(create_gi_locked(device, profileId, placement, gpuInstance));
}

static int ci_busy(const gi_t *x) {
    for (int i = 0; i < MAXCI; i++)
        if (x->ci[i].used) return 1;
    return 0;
}

static nvmlReturn_t destroy_gi_locked(nvmlGpuInstance_t h) {
    READY();
    S.mutations++;
    unsigned gpu;
    gi_t *x = gi_of(h, &gpu);
    if (!x) return NVML_ERROR_INVALID_ARGUMENT;
    if (!S.gpu[gpu].cur) return NVML_ERROR_NOT_SUPPORTED;
    if (ci_busy(x)) return NVML_ERROR_IN_USE;  /* compute instances (and their processes) live */
    x->used = 0;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlGpuInstanceDestroy(nvmlGpuInstance_t gpuInstance) { MUTATING(destroy_gi_locked(gpuInstance)); }

static nvmlReturn_t list_gi_locked(nvmlDevice_t d, unsigned id, nvmlGpuInstance_t *out, unsigned *count) {
    READY();
    nvmlReturn_t r;
    if (!out || !count) return NVML_ERROR_INVALID_ARGUMENT;
    gpu_t *g = mig_gpu(d, &r);
    if (!g) return r;
    const giprof_t *p = prof_by_id(g, id);
    if (!p) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned n = 0, gpu = (unsigned)(g - S.gpu);
    for (unsigned i = 0; i < MAXGI; i++)
        if (g->gi[i].used && &g->m->prof[g->gi[i].prof] == p) out[n++].handle = &Hgi[gpu][i];
    *count = n;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetGpuInstances(nvmlDevice_t device, unsigned int profileId,
                                           nvmlGpuInstance_t *gpuInstances, unsigned int *count) {
    LOCKED(list_gi_locked(device, profileId, gpuInstances, count));
}

static nvmlReturn_t gi_info_locked(nvmlGpuInstance_t h, nvmlGpuInstanceInfo_t *info) {
    READY();
    unsigned gpu;
    gi_t *x = gi_of(h, &gpu);
    if (!x || !info) return NVML_ERROR_INVALID_ARGUMENT;
    const giprof_t *p = &S.gpu[gpu].m->prof[x->prof];
    info->device.handle = &Hgpu[gpu];
    info->id = x->id;
    info->profileId = p->id;
    info->placement = (nvmlGpuInstancePlacement_t){x->start, p->memSlices};
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlGpuInstanceGetInfo(nvmlGpuInstance_t gpuInstance, nvmlGpuInstanceInfo_t *info) {
    LOCKED(gi_info_locked(gpuInstance, info));
}

/* ---- compute instances ----------------------------------------------------------------------- */

/* Compute instance profiles: NVML_COMPUTE_INSTANCE_PROFILE_{1,2,3,4,7}_SLICE; the fake's ids
 * equal the enum (nvidia-smi mig -lcip lists 0..4 for these). */
static unsigned ci_slices(unsigned profile) {
    static const unsigned s[] = {1, 2, 3, 4, 7};
    return profile < 5 ? s[profile] : 0;
}

static int ci_fits(unsigned profile, unsigned gi_slices) {
    unsigned s = ci_slices(profile);
    return s && s <= gi_slices && (s <= 2 || s == gi_slices || (gi_slices == 7 && s <= 4));
}

static nvmlReturn_t ci_profile_locked(nvmlGpuInstance_t h, unsigned profile, unsigned eng,
                                      nvmlComputeInstanceProfileInfo_v2_t *info) {
    READY();
    unsigned gpu;
    gi_t *x = gi_of(h, &gpu);
    if (!x || !info || profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT ||
        eng >= NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (info->version != nvmlComputeInstanceProfileInfo_v2 && info->version != nvmlComputeInstanceProfileInfo_v3)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const giprof_t *p = &S.gpu[gpu].m->prof[x->prof];
    if (!ci_fits(profile, p->slices)) return NVML_ERROR_NOT_SUPPORTED;
    unsigned s = ci_slices(profile), version = info->version;
    nvmlComputeInstanceProfileInfo_v3_t v = {
        .version = version, .id = profile, .sliceCount = s, .instanceCount = p->slices / s,
        .multiprocessorCount = p->sms / p->slices * s, .sharedCopyEngineCount = p->copyEngines,
        .sharedDecoderCount = p->decoders, .sharedEncoderCount = p->encoders,
        .sharedJpegCount = p->jpegs, .sharedOfaCount = p->ofas};
    if (s == p->slices) snprintf(v.name, sizeof v.name, "MIG %s", p->name);
    else snprintf(v.name, sizeof v.name, "MIG %uc.%s", s, p->name);
    memcpy(info, &v, version == nvmlComputeInstanceProfileInfo_v3 ? sizeof v : sizeof *info);
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlGpuInstanceGetComputeInstanceProfileInfoV(nvmlGpuInstance_t gpuInstance, unsigned int profile,
                                                               unsigned int engProfile,
                                                               nvmlComputeInstanceProfileInfo_v2_t *info) {
    LOCKED(ci_profile_locked(gpuInstance, profile, engProfile, info));
}

static void mig_uuid(char *out, size_t n) {
    unsigned long long s = ++S.serial;
    snprintf(out, n, "MIG-%08llx-fa6e-5e11-9000-%012llx", 0xC0FFEE00ull + s, s * 2654435761ull & 0xFFFFFFFFFFFFull);
}

static nvmlReturn_t create_ci_locked(nvmlGpuInstance_t h, unsigned profile, nvmlComputeInstance_t *out) {
    READY();
    S.mutations++;
    unsigned gpu;
    gi_t *x = gi_of(h, &gpu);
    if (!x || !out) return NVML_ERROR_INVALID_ARGUMENT;
    const giprof_t *p = &S.gpu[gpu].m->prof[x->prof];
    if (profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    if (!ci_fits(profile, p->slices)) return NVML_ERROR_NOT_SUPPORTED;
    unsigned used = ci_slices(profile), slot = MAXCI;
    for (unsigned i = 0; i < MAXCI; i++) {
        if (x->ci[i].used) used += x->ci[i].slices;
        else if (slot == MAXCI) slot = i;
    }
    if (used > p->slices || slot == MAXCI) return NVML_ERROR_INSUFFICIENT_RESOURCES;
    unsigned cid = 0;
    for (int again = 1; again;) {
        again = 0;
        for (unsigned i = 0; i < MAXCI; i++)
            if (x->ci[i].used && x->ci[i].id == cid) { cid++; again = 1; }
    }
    ci_t *c = &x->ci[slot];
    memset(c, 0, sizeof *c);
    c->used = 1;
    c->id = cid;
    c->profile = profile;
    c->slices = ci_slices(profile);
    mig_uuid(c->uuid, sizeof c->uuid);
    unsigned gi = (unsigned)(x - S.gpu[gpu].gi);
    Hci[gpu][gi][slot] = (struct nvmlComputeInstance_st){gpu, gi, slot};
    Hmig[gpu][gi][slot] = (struct nvmlDevice_st){1, gpu, gi, slot};
    out->handle = &Hci[gpu][gi][slot];
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlGpuInstanceCreateComputeInstance(nvmlGpuInstance_t gpuInstance, unsigned int profileId,
                                                      nvmlComputeInstance_t *computeInstance) {
    MUTATING(create_ci_locked(gpuInstance, profileId, computeInstance));
}

static nvmlReturn_t destroy_ci_locked(nvmlComputeInstance_t h) {
    READY();
    S.mutations++;
    unsigned gpu, gi;
    ci_t *c = ci_of(h, &gpu, &gi);
    if (!c) return NVML_ERROR_INVALID_ARGUMENT;
    if (c->npid) return NVML_ERROR_IN_USE;
    c->used = 0;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlComputeInstanceDestroy(nvmlComputeInstance_t computeInstance) {
    MUTATING(destroy_ci_locked(computeInstance));
}

static nvmlReturn_t list_ci_locked(nvmlGpuInstance_t h, unsigned profile, nvmlComputeInstance_t *out, unsigned *count) {
    READY();
    unsigned gpu;
    gi_t *x = gi_of(h, &gpu);
    if (!x || !out || !count || profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned n = 0, gi = (unsigned)(x - S.gpu[gpu].gi);
    for (unsigned i = 0; i < MAXCI; i++)
        if (x->ci[i].used && x->ci[i].profile == profile) out[n++].handle = &Hci[gpu][gi][i];
    *count = n;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlGpuInstanceGetComputeInstances(nvmlGpuInstance_t gpuInstance, unsigned int profileId,
                                                    nvmlComputeInstance_t *computeInstances, unsigned int *count) {
    LOCKED(list_ci_locked(gpuInstance, profileId, computeInstances, count));
}

static nvmlReturn_t ci_info_locked(nvmlComputeInstance_t h, nvmlComputeInstanceInfo_t *info) {
    READY();
    unsigned gpu, gi;
    ci_t *c = ci_of(h, &gpu, &gi);
    if (!c || !info) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned start = 0;
    const gi_t *x = &S.gpu[gpu].gi[gi];
    for (const ci_t *o = x->ci; o < c; o++)
        if (o->used) start += o->slices;
    info->device.handle = &Hgpu[gpu];
    info->gpuInstance.handle = &Hgi[gpu][gi];
    info->id = c->id;
    info->profileId = c->profile;
    info->placement = (nvmlComputeInstancePlacement_t){start, c->slices};
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlComputeInstanceGetInfo_v2(nvmlComputeInstance_t computeInstance, nvmlComputeInstanceInfo_t *info) {
    LOCKED(ci_info_locked(computeInstance, info));
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
