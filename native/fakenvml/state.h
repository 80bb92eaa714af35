/* The fake's state, shared by fakenvml.c (the NVML entry points) and persist.c (the state
 * file that outlives a process).  NOT NVML: see fakenvml.c. */
#ifndef FAKENVML_STATE_H
#define FAKENVML_STATE_H

#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include "nvml/nvml.h"

#define API __attribute__((visibility("default")))
#define MAXGPU 16
#define MAXMODEL 16
#define MAXPROF 24
#define MAXPLACE 8
#define MAXGI 8
#define MAXCI 8
#define MAXPROC 16
#define MAXSET 8
#define MAXEV 64
#define NO_ID 0xFFFFFFFFu

typedef struct {
    unsigned profile;       /* NVML_GPU_INSTANCE_PROFILE_* (the enum index) */
    unsigned id;            /* the id NVML reports in the info: what the other calls take */
    char name[64];          /* "1g.10gb"; reported as "MIG 1g.10gb" */
    unsigned slices, memSlices, instances, sms, copyEngines, decoders, encoders, jpegs, ofas;
    unsigned long long memoryMiB;
    unsigned nplace, place[MAXPLACE];
    int media;              /* a +me profile: one set of media engines per GPU */
} giprof_t;

typedef struct {
    char key[32], name[96];
    unsigned long long memoryMiB;
    unsigned memSlices, computeSlices, nprof;
    giprof_t prof[MAXPROF];
} model_t;

typedef struct {
    int used;
    unsigned id, profile, slices;
    char uuid[96];
    unsigned npid, pids[MAXPROC];
} ci_t;

typedef struct {
    int used;
    unsigned id, start;
    int prof;               /* index into the model's prof[] */
    ci_t ci[MAXCI];
} gi_t;

typedef struct {
    const model_t *m;
    unsigned cur, pend;
    char uuid[96];
    unsigned npid, pids[MAXPROC];
    gi_t gi[MAXGI];
} gpu_t;

typedef struct { unsigned gpu; unsigned long long xid; unsigned gi, ci; } event_t;

/* Handles are pointers into these tables: stable, and checkable by range. */
struct nvmlDevice_st { int mig; unsigned gpu, gi, ci; };
struct nvmlGpuInstance_st { unsigned gpu, gi; };
struct nvmlComputeInstance_st { unsigned gpu, gi, ci; };
struct nvmlEventSet_st {
    int used;
    unsigned long long mask[MAXGPU];
    unsigned head, n;
    event_t ev[MAXEV];
};

struct fake_state {
    int loaded, initRef, allowMigModeSet, migModeNeedsReset;
    unsigned ngpu, nmodel;
    unsigned long long mutations, serial;
    model_t models[MAXMODEL];
    gpu_t gpu[MAXGPU];
    char error[256];
    unsigned opDelayMs;     /* FAKENVML_OP_DELAY_MS: each mutating call takes this long */
};

extern struct fake_state S;
extern struct nvmlDevice_st Hgpu[MAXGPU], Hmig[MAXGPU][MAXGI][MAXCI];
extern struct nvmlGpuInstance_st Hgi[MAXGPU][MAXGI];
extern struct nvmlComputeInstance_st Hci[MAXGPU][MAXGI][MAXCI];
extern struct nvmlEventSet_st Hset[MAXSET];

/* fakenvml.c: the lock every entry point takes, and the helpers the other files share. */
#include <pthread.h>
extern pthread_mutex_t mu;
void op_delay(void);
gpu_t *dev_gpu(nvmlDevice_t d);
ci_t *dev_mig(nvmlDevice_t d, unsigned *gpu, unsigned *gi);
gi_t *gi_of(nvmlGpuInstance_t g, unsigned *gpu);
ci_t *ci_of(nvmlComputeInstance_t c, unsigned *gpu, unsigned *gi);
const giprof_t *prof_by_id(const gpu_t *g, unsigned id);
nvmlReturn_t copy_str(char *dst, unsigned len, const char *src);
/* devicefile.c: reset every GPU to the state a device file describes.  0 or -1. */
int load_locked(const char *path);

#define LOCKED(expr) do { pthread_mutex_lock(&mu); nvmlReturn_t r_ = (expr); pthread_mutex_unlock(&mu); return r_; } while (0)
#define MUTATING(expr) do { op_delay(); pthread_mutex_lock(&mu); nvmlReturn_t r_ = (expr); \
    if (persist_save() != 0 && r_ == NVML_SUCCESS) r_ = NVML_ERROR_UNKNOWN; \
    pthread_mutex_unlock(&mu); return r_; } while (0)
#define READY() do { if (!S.loaded || S.initRef <= 0) return NVML_ERROR_UNINITIALIZED; } while (0)

/* persist.c: the driver's state (MIG mode, instances) in the file FAKENVML_STATE names, so
 * that it outlives the process, as a real GPU's does.  0 or -1 (S.error says why). */
int persist_restore(void);
int persist_save(void);



#endif
