/* The fake NVML's GPU instances and compute instances: profiles, placements, create,
 * destroy, list, info, against NVIDIA's nvml.h.  NOT a GPU: see fakenvml.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "state.h"

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
