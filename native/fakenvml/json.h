/* A minimal JSON reader for the fake NVML's device file (objects, arrays, strings without
 * \u escapes, numbers, true/false/null).  Not NVML. */
#ifndef FAKENVML_JSON_H
#define FAKENVML_JSON_H

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jv {
    jtype t;
    double num;          /* J_NUM, J_BOOL (0/1) */
    char *str;           /* J_STR */
    int n;               /* J_ARR, J_OBJ: number of children */
    struct jv **kids;    /* J_ARR, J_OBJ */
    char **keys;         /* J_OBJ */
} jv;

/* Parses text; returns NULL and writes a message into err on a syntax error. */
jv *json_parse(const char *text, char *err, int errlen);
void json_free(jv *v);
/* Member of an object, or NULL. */
const jv *json_get(const jv *obj, const char *key);

#endif
