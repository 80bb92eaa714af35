/*
 * The fake driver's state in a file, so that it outlives the process that changed it.  NOT
 * NVML.  On a real machine the MIG mode and the GPU and compute instances live in the
 * driver: a node daemon that is killed between two NVML calls finds, when it starts again,
 * whatever those calls left (a GPU instance without its compute instance, say).  With
 * FAKENVML_STATE set, the fake keeps the same promise: nvmlInit restores the file (when it
 * exists) over the device file's GPUs, and every successful mutating call rewrites it
 * atomically (a temporary file renamed over it).  Running processes are not kept: they
 * belong to the processes, which a test controls with fakenvml_process.
 *
 * The file, JSON: {"mutations": N, "serial": N, "gpus": [{"uuid", "model", "cur", "pend",
 * "gi": [{"slot", "id", "start", "prof", "ci": [{"slot", "id", "profile", "slices",
 * "uuid"}]}]}]}.  "mutations" is the count fakenvml_mutations reports, so that a test in
 * another process sees how far an apply has gone.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "state.h"

static unsigned num(const jv *o, const char *k) {
    const jv *v = json_get(o, k);
    return v && v->t == J_NUM ? (unsigned)v->num : 0;
}

static int fail(const char *path, const char *why) {
    snprintf(S.error, sizeof S.error, "%.160s: %.80s", path, why);
    return -1;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *t = realloc(text, cap);
            if (!t) { free(text); fclose(f); return NULL; }
            text = t;
        }
        size_t got = fread(text + len, 1, 4096, f);
        len += got;
        if (got < 4096) break;
    }
    fclose(f);
    text[len] = '\0';
    return text;
}

static int restore_gi(const char *path, unsigned g, const jv *x) {
    gpu_t *gp = &S.gpu[g];
    unsigned slot = num(x, "slot"), prof = num(x, "prof");
    const jv *cis = json_get(x, "ci");
    if (slot >= MAXGI || prof >= gp->m->nprof || !cis || cis->t != J_ARR)
        return fail(path, "a GPU instance is malformed");
    gi_t *gi = &gp->gi[slot];
    memset(gi, 0, sizeof *gi);
    gi->used = 1;
    gi->id = num(x, "id");
    gi->start = num(x, "start");
    gi->prof = (int)prof;
    Hgi[g][slot] = (struct nvmlGpuInstance_st){g, slot};
    for (int k = 0; k < cis->n; k++) {
        const jv *c = cis->kids[k], *uuid = json_get(c, "uuid");
        unsigned cs = num(c, "slot");
        if (cs >= MAXCI || !uuid || uuid->t != J_STR) return fail(path, "a compute instance is malformed");
        ci_t *ci = &gi->ci[cs];
        memset(ci, 0, sizeof *ci);
        ci->used = 1;
        ci->id = num(c, "id");
        ci->profile = num(c, "profile");
        ci->slices = num(c, "slices");
        snprintf(ci->uuid, sizeof ci->uuid, "%s", uuid->str);
        Hci[g][slot][cs] = (struct nvmlComputeInstance_st){g, slot, cs};
        Hmig[g][slot][cs] = (struct nvmlDevice_st){1, g, slot, cs};
    }
    return 0;
}

int persist_restore(void) {
    const char *path = getenv("FAKENVML_STATE");
    if (!path || !*path) return 0;
    char *text = slurp(path);
    if (!text) return errno == ENOENT ? 0 : fail(path, strerror(errno));
    char err[160];
    jv *doc = json_parse(text, err, sizeof err);
    free(text);
    if (!doc) return fail(path, err);
    const jv *gpus = json_get(doc, "gpus");
    int rc = -1;
    if (!gpus || gpus->t != J_ARR || (unsigned)gpus->n != S.ngpu) {
        fail(path, "its GPUs are not the device file's");
        goto out;
    }
    for (unsigned g = 0; g < S.ngpu; g++) {
        const jv *x = gpus->kids[g], *uuid = json_get(x, "uuid"), *gis = json_get(x, "gi");
        if (!uuid || uuid->t != J_STR || strcmp(uuid->str, S.gpu[g].uuid) != 0) {
            fail(path, "its GPUs are not the device file's");
            goto out;
        }
        if (!gis || gis->t != J_ARR) { fail(path, "a GPU has no \"gi\" list"); goto out; }
        S.gpu[g].cur = num(x, "cur");
        S.gpu[g].pend = num(x, "pend");
        memset(S.gpu[g].gi, 0, sizeof S.gpu[g].gi);
        for (int i = 0; i < gis->n; i++)
            if (restore_gi(path, g, gis->kids[i]) != 0) goto out;
    }
    S.mutations = num(doc, "mutations");
    S.serial = num(doc, "serial");
    rc = 0;
out:
    json_free(doc);
    return rc;
}

static void save_gpu(FILE *f, unsigned g) {
    const gpu_t *gp = &S.gpu[g];
    fprintf(f, "%s{\"uuid\": \"%s\", \"model\": \"%s\", \"cur\": %u, \"pend\": %u, \"gi\": [",
            g ? ", " : "", gp->uuid, gp->m->key, gp->cur, gp->pend);
    int first = 1;
    for (unsigned i = 0; i < MAXGI; i++) {
        const gi_t *x = &gp->gi[i];
        if (!x->used) continue;
        fprintf(f, "%s{\"slot\": %u, \"id\": %u, \"start\": %u, \"prof\": %d, \"ci\": [",
                first ? "" : ", ", i, x->id, x->start, x->prof);
        first = 0;
        int cfirst = 1;
        for (unsigned j = 0; j < MAXCI; j++) {
            const ci_t *c = &x->ci[j];
            if (!c->used) continue;
            fprintf(f, "%s{\"slot\": %u, \"id\": %u, \"profile\": %u, \"slices\": %u, \"uuid\": \"%s\"}",
                    cfirst ? "" : ", ", j, c->id, c->profile, c->slices, c->uuid);
            cfirst = 0;
        }
        fputs("]}", f);
    }
    fputs("]}", f);
}

int persist_save(void) {
    const char *path = getenv("FAKENVML_STATE");
    if (!path || !*path) return 0;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return fail(path, "path too long");
    FILE *f = fopen(tmp, "wb");
    if (!f) return fail(tmp, strerror(errno));
    fprintf(f, "{\"mutations\": %llu, \"serial\": %llu, \"gpus\": [", S.mutations, S.serial);
    for (unsigned g = 0; g < S.ngpu; g++) save_gpu(f, g);
    fputs("]}\n", f);
    if (fclose(f) != 0 || rename(tmp, path) != 0) return fail(path, strerror(errno));
    return 0;
}
