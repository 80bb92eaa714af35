/* A minimal JSON reader for the fake NVML's device file.  Not NVML. */
#include "json.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *p;
    char *err;
    int errlen;
    int depth;
} parser;

static void ws(parser *ps) {
    while (isspace((unsigned char)*ps->p)) ps->p++;
}

static jv *fail(parser *ps, const char *what) {
    if (ps->err[0] == '\0') snprintf(ps->err, (size_t)ps->errlen, "%s near '%.20s'", what, ps->p);
    return NULL;
}

static jv *node(jtype t) {
    jv *v = calloc(1, sizeof(jv));
    if (v) v->t = t;
    return v;
}

static char *pstring(parser *ps) {
    /* ps->p at the opening quote */
    const char *s = ++ps->p;
    size_t cap = 16, len = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    while (*s && *s != '"') {
        char c = *s++;
        if (c == '\\') {
            char e = *s++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case '"': case '\\': case '/': c = e; break;
            default: free(out); ps->p = s; return NULL;
            }
        }
        if (len + 2 > cap) {
            cap *= 2;
            char *o = realloc(out, cap);
            if (!o) { free(out); return NULL; }
            out = o;
        }
        out[len++] = c;
    }
    if (*s != '"') { free(out); ps->p = s; return NULL; }
    out[len] = '\0';
    ps->p = s + 1;
    return out;
}

static int add(jv *v, jv *kid, char *key) {
    jv **k = realloc(v->kids, sizeof(jv *) * (size_t)(v->n + 1));
    if (!k) return -1;
    v->kids = k;
    if (v->t == J_OBJ) {
        char **ks = realloc(v->keys, sizeof(char *) * (size_t)(v->n + 1));
        if (!ks) return -1;
        v->keys = ks;
        v->keys[v->n] = key;
    }
    v->kids[v->n++] = kid;
    return 0;
}

static jv *value(parser *ps) {
    ws(ps);
    if (++ps->depth > 32) return fail(ps, "nested too deeply");
    jv *v = NULL;
    char c = *ps->p;
    if (c == '{' || c == '[') {
        int obj = c == '{';
        v = node(obj ? J_OBJ : J_ARR);
        if (!v) return fail(ps, "out of memory");
        ps->p++;
        ws(ps);
        if (*ps->p == (obj ? '}' : ']')) {
            ps->p++;
        } else {
            for (;;) {
                char *key = NULL;
                ws(ps);
                if (obj) {
                    if (*ps->p != '"' || !(key = pstring(ps))) { json_free(v); return fail(ps, "expected a key"); }
                    ws(ps);
                    if (*ps->p != ':') { free(key); json_free(v); return fail(ps, "expected ':'"); }
                    ps->p++;
                }
                jv *kid = value(ps);
                if (!kid || add(v, kid, key) != 0) { free(key); json_free(kid); json_free(v); return fail(ps, "bad value"); }
                ws(ps);
                if (*ps->p == ',') { ps->p++; continue; }
                if (*ps->p == (obj ? '}' : ']')) { ps->p++; break; }
                json_free(v);
                return fail(ps, obj ? "expected ',' or '}'" : "expected ',' or ']'");
            }
        }
    } else if (c == '"') {
        v = node(J_STR);
        if (!v || !(v->str = pstring(ps))) { json_free(v); return fail(ps, "bad string"); }
    } else if (strncmp(ps->p, "true", 4) == 0 || strncmp(ps->p, "false", 5) == 0) {
        v = node(J_BOOL);
        if (!v) return fail(ps, "out of memory");
        v->num = ps->p[0] == 't';
        ps->p += v->num ? 4 : 5;
    } else if (strncmp(ps->p, "null", 4) == 0) {
        v = node(J_NULL);
        ps->p += 4;
    } else if (c == '-' || isdigit((unsigned char)c)) {
        char *end;
        v = node(J_NUM);
        if (!v) return fail(ps, "out of memory");
        v->num = strtod(ps->p, &end);
        ps->p = end;
    } else {
        return fail(ps, "unexpected character");
    }
    ps->depth--;
    return v;
}

jv *json_parse(const char *text, char *err, int errlen) {
    parser ps = {text, err, errlen, 0};
    err[0] = '\0';
    jv *v = value(&ps);
    if (!v) return NULL;
    ws(&ps);
    if (*ps.p) { json_free(v); fail(&ps, "trailing text"); return NULL; }
    return v;
}

void json_free(jv *v) {
    if (!v) return;
    for (int i = 0; i < v->n; i++) {
        json_free(v->kids[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->kids);
    free(v->keys);
    free(v->str);
    free(v);
}

const jv *json_get(const jv *obj, const char *key) {
    if (!obj || obj->t != J_OBJ) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return obj->kids[i];
    return NULL;
}
