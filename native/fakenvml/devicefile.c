/* The fake NVML's device file (devices.json): GPU models, profiles, placements.  NOT NVML:
 * see fakenvml.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "state.h"

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

int load_locked(const char *path) {
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
