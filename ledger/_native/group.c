/* sovledger native engine: PSP signature checks and batch-signed (group) auxes, byte-identical to
 * ledger/psp_group.py and node/psp_auth.py. The loops run with the GIL released.
 *
 * - group_roots: the RFC 6962 root (leaf BLAKE3(0x00 || record), node BLAKE3(0x01 || l || r)) of every
 *   signing group of G consecutive records;
 * - group_auxes: the aux item (tag 5) of every record of a group-signed batch (docs/formats.md);
 *   record_auxes: the aux item (tag 1) of every record of a batch signed per record;
 * - verify_records / verify_groups: Ed25519 checks of a range of records or groups in one call.
 *   libsodium is not linked here: the caller passes the address of the crypto_sign_open that PyNaCl
 *   already loaded (node/psp_auth.py takes it from PyNaCl's cffi module), so a pool thread verifies
 *   a whole chunk without taking the GIL back between signatures. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define H 32           /* hash size */
#define SIG 64         /* Ed25519 signature */
#define KID 4          /* key id */
#define AUX_HEAD 3     /* tag u8, value length u16 LE */
#define AUX_FIXED 72   /* key id, signature, group count u16, index u16 */
#define TAG_RECORD 1   /* aux tag of a per-record PSP signature */
#define TAG_GROUP 5
#define PATH_MAX_LEN 14 /* audit path of a group of <= 8189 records: at most 13 hashes */
#define GROUP_MAX 8189
#define CONTEXT_MAX 64

void sovledger_b3_3(const uint8_t *a, size_t na, const uint8_t *b, size_t nb, const uint8_t *c, size_t nc,
                    uint8_t out[H]); /* engine.c */

typedef int (*sign_open_fn)(unsigned char *m, unsigned long long *mlen, const unsigned char *sm,
                            unsigned long long smlen, const unsigned char *pk);

static const uint8_t D_LEAF = 0x00, D_NODE = 0x01;

static size_t split(size_t n) { /* largest power of two below n (n >= 2) */
    size_t k = 1;
    while (k << 1 < n) k <<= 1;
    return k;
}

static void leaf_hashes(const uint8_t *records, size_t size, size_t n, uint8_t *out) {
    for (size_t i = 0; i < n; i++) sovledger_b3_3(&D_LEAF, 1, records + i * size, size, NULL, 0, out + i * H);
}

static void node_hash(const uint8_t *l, const uint8_t *r, uint8_t out[H]) {
    sovledger_b3_3(&D_NODE, 1, l, H, r, H, out);
}

static void root_of(const uint8_t *leaves, size_t n, uint8_t out[H]) {
    if (n == 1) { memcpy(out, leaves, H); return; }
    uint8_t l[H], r[H];
    size_t k = split(n);
    root_of(leaves, k, l);
    root_of(leaves + k * H, n - k, r);
    node_hash(l, r, out);
}

static size_t path_len(size_t index, size_t n) {
    size_t d = 0;
    while (n > 1) {
        size_t k = split(n);
        if (index < k) n = k; else { index -= k; n -= k; }
        d++;
    }
    return d;
}

/* Root of leaves[0, n); appends the sibling subtree's root to the path of every leaf below (leaf i's
 * next path hash goes to paths[i] + H * filled[i]): the audit paths of all leaves in one pass. */
static void tree_paths(const uint8_t *leaves, size_t n, uint8_t **paths, uint8_t *filled, uint8_t out[H]) {
    if (n == 1) { memcpy(out, leaves, H); return; }
    uint8_t l[H], r[H];
    size_t k = split(n);
    tree_paths(leaves, k, paths, filled, l);
    tree_paths(leaves + k * H, n - k, paths + k, filled + k, r);
    for (size_t i = 0; i < n; i++) {
        memcpy(paths[i] + H * filled[i], i < k ? r : l, H);
        filled[i]++;
    }
    node_hash(l, r, out);
}

typedef struct {
    Py_buffer rec, sig, kid, ctx;
    size_t size, group, n, groups;
} batch_t;

static void release(batch_t *b) {
    PyBuffer_Release(&b->rec);
    PyBuffer_Release(&b->sig);
    if (b->kid.obj) PyBuffer_Release(&b->kid);
    if (b->ctx.obj) PyBuffer_Release(&b->ctx);
}

/* Shape checks shared by the entry points; 0 with an exception set on a bad shape. */
static int check_batch(batch_t *b, Py_ssize_t size, Py_ssize_t group, int sigs_per_group) {
    if (size <= 0 || b->rec.len % size || b->rec.len == 0) {
        PyErr_SetString(PyExc_ValueError, "records must be a non-empty multiple of the record size");
        return 0;
    }
    if (group < 0 || group > GROUP_MAX || (sigs_per_group && group == 0)) {
        PyErr_SetString(PyExc_ValueError, "group size must be 1..8189");
        return 0;
    }
    b->size = (size_t)size;
    b->group = (size_t)group;
    b->n = (size_t)(b->rec.len / size);
    b->groups = sigs_per_group ? (b->n + b->group - 1) / b->group : b->n;
    if (b->sig.obj && (size_t)b->sig.len != b->groups * SIG) {
        PyErr_SetString(PyExc_ValueError, "signatures must be 64 bytes per signing group (or record)");
        return 0;
    }
    return 1;
}

/* group_roots(records, size, group) -> bytes: the 32-byte root of every signing group, in order. */
static PyObject *py_group_roots(PyObject *self, PyObject *args) {
    batch_t b = {0};
    Py_ssize_t size, group;
    if (!PyArg_ParseTuple(args, "y*nn", &b.rec, &size, &group)) return NULL;
    if (!check_batch(&b, size, group, 1)) { PyBuffer_Release(&b.rec); return NULL; }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(b.groups * H));
    uint8_t *leaves = malloc(b.group * H);
    if (out == NULL || leaves == NULL) {
        Py_XDECREF(out); free(leaves); PyBuffer_Release(&b.rec);
        return out == NULL ? NULL : PyErr_NoMemory();
    }
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    for (size_t g = 0; g < b.groups; g++) {
        size_t first = g * b.group, count = b.n - first < b.group ? b.n - first : b.group;
        leaf_hashes((const uint8_t *)b.rec.buf + first * b.size, b.size, count, leaves);
        root_of(leaves, count, dst + g * H);
    }
    Py_END_ALLOW_THREADS
    free(leaves);
    PyBuffer_Release(&b.rec);
    return out;
}

/* The aux items of one group (records [first, first+count)) into out[0..count). */
static void group_items(const batch_t *b, size_t g, uint8_t *leaves, uint8_t *filled, uint8_t **paths,
                        PyObject **out) {
    size_t first = g * b->group, count = b->n - first < b->group ? b->n - first : b->group;
    leaf_hashes((const uint8_t *)b->rec.buf + first * b->size, b->size, count, leaves);
    for (size_t j = 0; j < count; j++) {
        uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out[first + j]);
        size_t value = AUX_FIXED + H * path_len(j, count);
        p[0] = TAG_GROUP; p[1] = (uint8_t)value; p[2] = (uint8_t)(value >> 8);
        memcpy(p + AUX_HEAD, b->kid.buf, KID);
        memcpy(p + AUX_HEAD + KID, (const uint8_t *)b->sig.buf + g * SIG, SIG);
        p[AUX_HEAD + KID + SIG] = (uint8_t)count; p[AUX_HEAD + KID + SIG + 1] = (uint8_t)(count >> 8);
        p[AUX_HEAD + KID + SIG + 2] = (uint8_t)j; p[AUX_HEAD + KID + SIG + 3] = (uint8_t)(j >> 8);
        paths[j] = p + AUX_HEAD + AUX_FIXED;
        filled[j] = 0;
    }
    uint8_t root[H];
    tree_paths(leaves, count, paths, filled, root);
}

/* The list of aux bytes objects, each allocated at its final length (filled later without the GIL). */
static PyObject *alloc_items(const batch_t *b) {
    PyObject *list = PyList_New((Py_ssize_t)b->n);
    for (size_t i = 0; list != NULL && i < b->n; i++) {
        size_t first = i / b->group * b->group;
        size_t count = b->n - first < b->group ? b->n - first : b->group;
        PyObject *item = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(AUX_HEAD + AUX_FIXED + H * path_len(i - first, count)));
        if (item == NULL) Py_CLEAR(list);
        else PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

/* group_auxes(records, size, group, signatures, key_id) -> list[bytes]: tag-5 aux item of every record. */
static PyObject *py_group_auxes(PyObject *self, PyObject *args) {
    batch_t b = {0};
    Py_ssize_t size, group;
    if (!PyArg_ParseTuple(args, "y*nny*y*", &b.rec, &size, &group, &b.sig, &b.kid)) return NULL;
    if (!check_batch(&b, size, group, 1) || (b.kid.len != KID && !PyErr_Format(PyExc_ValueError, "key id must be 4 bytes"))) {
        release(&b);
        return NULL;
    }
    PyObject *list = alloc_items(&b);
    uint8_t *leaves = malloc(b.group * (H + 1 + sizeof(uint8_t *)));
    if (list == NULL || leaves == NULL) {
        Py_XDECREF(list); free(leaves); release(&b);
        return list == NULL ? NULL : PyErr_NoMemory();
    }
    uint8_t **paths = (uint8_t **)(leaves + b.group * H);
    uint8_t *filled = leaves + b.group * (H + sizeof(uint8_t *));
    PyObject **items = ((PyListObject *)list)->ob_item;
    Py_BEGIN_ALLOW_THREADS
    for (size_t g = 0; g < b.groups; g++) group_items(&b, g, leaves, filled, paths, items);
    Py_END_ALLOW_THREADS
    free(leaves);
    release(&b);
    return list;
}

/* record_auxes(signatures, key_id) -> list[bytes]: the tag-1 aux item (key id, signature) of every
 * record of a batch signed per record. */
static PyObject *py_record_auxes(PyObject *self, PyObject *args) {
    Py_buffer sig, kid;
    if (!PyArg_ParseTuple(args, "y*y*", &sig, &kid)) return NULL;
    PyObject *list = NULL;
    if (sig.len % SIG || kid.len != KID) {
        PyErr_SetString(PyExc_ValueError, "signatures must be n x 64 bytes and the key id 4 bytes");
        goto done;
    }
    Py_ssize_t n = sig.len / SIG;
    list = PyList_New(n);
    for (Py_ssize_t i = 0; list != NULL && i < n; i++) {
        PyObject *item = PyBytes_FromStringAndSize(NULL, AUX_HEAD + KID + SIG);
        if (item == NULL) { Py_CLEAR(list); break; }
        uint8_t *p = (uint8_t *)PyBytes_AS_STRING(item);
        p[0] = TAG_RECORD; p[1] = KID + SIG; p[2] = 0;
        memcpy(p + AUX_HEAD, kid.buf, KID);
        memcpy(p + AUX_HEAD + KID, (const uint8_t *)sig.buf + i * SIG, SIG);
        PyList_SET_ITEM(list, i, item);
    }
done:
    PyBuffer_Release(&sig);
    PyBuffer_Release(&kid);
    return list;
}

static int parse_fn(PyObject *o, sign_open_fn *fn) {
    uintptr_t addr = (uintptr_t)PyLong_AsUnsignedLongLong(o);
    if (PyErr_Occurred()) return 0;
    if (addr == 0) { PyErr_SetString(PyExc_ValueError, "crypto_sign_open address is 0"); return 0; }
    *fn = (sign_open_fn)addr;
    return 1;
}

/* verify_records(open, pk, records, signatures, size, start, end) -> index of the first record in
 * [start, end) whose signature (64 bytes each, over the record) fails, or -1. */
static PyObject *py_verify_records(PyObject *self, PyObject *args) {
    batch_t b = {0};
    PyObject *fn_obj;
    Py_buffer pk;
    Py_ssize_t size, start, end;
    sign_open_fn fn;
    if (!PyArg_ParseTuple(args, "Oy*y*y*nnn", &fn_obj, &pk, &b.rec, &b.sig, &size, &start, &end)) return NULL;
    long bad = -1;
    uint8_t *buf = NULL;
    if (!parse_fn(fn_obj, &fn) || !check_batch(&b, size, 0, 0) || pk.len != 32 || start < 0 || end > (Py_ssize_t)b.n
        || (buf = malloc(2 * (SIG + b.size))) == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad public key, range or memory");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    unsigned long long mlen;
    for (Py_ssize_t i = start; i < end; i++) {
        memcpy(buf, (const uint8_t *)b.sig.buf + i * SIG, SIG);
        memcpy(buf + SIG, (const uint8_t *)b.rec.buf + i * b.size, b.size);
        if (fn(buf + SIG + b.size, &mlen, buf, SIG + b.size, pk.buf) != 0) { bad = (long)i; break; }
    }
    Py_END_ALLOW_THREADS
done:
    free(buf);
    PyBuffer_Release(&pk);
    release(&b);
    return PyErr_Occurred() ? NULL : PyLong_FromLong(bad);
}

/* One group's message (context || kind || count u16 || root) into sm + SIG, the signature before it. */
static void group_message(const batch_t *b, size_t g, uint8_t kind, uint8_t *leaves, uint8_t *sm) {
    size_t first = g * b->group, count = b->n - first < b->group ? b->n - first : b->group;
    size_t c = (size_t)b->ctx.len;
    memcpy(sm, (const uint8_t *)b->sig.buf + g * SIG, SIG);
    memcpy(sm + SIG, b->ctx.buf, c);
    sm[SIG + c] = kind;
    sm[SIG + c + 1] = (uint8_t)count;
    sm[SIG + c + 2] = (uint8_t)(count >> 8);
    leaf_hashes((const uint8_t *)b->rec.buf + first * b->size, b->size, count, leaves);
    root_of(leaves, count, sm + SIG + c + 3);
}

/* verify_groups(open, pk, context, kind, records, signatures, size, group, start, end) -> index of the
 * first signing group in [start, end) whose signature over its message fails, or -1. */
static PyObject *py_verify_groups(PyObject *self, PyObject *args) {
    batch_t b = {0};
    PyObject *fn_obj;
    Py_buffer pk;
    Py_ssize_t size, group, start, end;
    unsigned char kind;
    sign_open_fn fn;
    if (!PyArg_ParseTuple(args, "Oy*y*by*y*nnnn", &fn_obj, &pk, &b.ctx, &kind, &b.rec, &b.sig, &size, &group,
                          &start, &end)) return NULL;
    long bad = -1;
    uint8_t *leaves = NULL;
    if (!parse_fn(fn_obj, &fn) || !check_batch(&b, size, group, 1) || pk.len != 32 || b.ctx.len > CONTEXT_MAX
        || start < 0 || end > (Py_ssize_t)b.groups || (leaves = malloc(b.group * H)) == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad public key, context, range or memory");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    uint8_t sm[SIG + CONTEXT_MAX + 3 + H], m[sizeof sm];
    unsigned long long mlen, smlen = SIG + (unsigned long long)b.ctx.len + 3 + H;
    for (Py_ssize_t g = start; g < end; g++) {
        group_message(&b, (size_t)g, kind, leaves, sm);
        if (fn(m, &mlen, sm, smlen, pk.buf) != 0) { bad = (long)g; break; }
    }
    Py_END_ALLOW_THREADS
done:
    free(leaves);
    PyBuffer_Release(&pk);
    release(&b);
    return PyErr_Occurred() ? NULL : PyLong_FromLong(bad);
}

PyMethodDef group_methods[] = {
    {"group_roots", py_group_roots, METH_VARARGS, "RFC 6962 root of every signing group of a batch."},
    {"group_auxes", py_group_auxes, METH_VARARGS, "Tag-5 aux item of every record of a group-signed batch."},
    {"record_auxes", py_record_auxes, METH_VARARGS, "Tag-1 aux item of every record of a batch signed per record."},
    {"verify_records", py_verify_records, METH_VARARGS, "Ed25519 checks of records [start, end)."},
    {"verify_groups", py_verify_groups, METH_VARARGS, "Ed25519 checks of signing groups [start, end)."},
    {NULL, NULL, 0, NULL},
};
