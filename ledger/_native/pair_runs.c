/* sovledger pair runs (ledger/pair_runs.py, docs/formats.md tables pair_runs / pair_run_dir): the C half of
 * the write-optimised store of committed payer-payee pairs.
 *
 * merge_pairs(a, b)   the sorted, de-duplicated union of two runs' packed pairs (32 bytes each, each input
 *                     sorted): what a fold writes when it merges two runs. The Python reference of the same
 *                     name (ledger/pair_runs.py) must give the same bytes (tests/engine/test_pair_runs.py).
 * PairFilter(packed)  a per-process Bloom filter over one run's pairs, never stored: blocked (one 64-byte
 *                     block per pair, 7 bits set in it), at least 16 bits per pair (the block count rounded
 *                     up to a power of two), keyed with the risk maps' per-process key (keyed_hash.h), so
 *                     nobody outside the process can compute pairs that all hit it.
 * chunk_has(chunk, pk) a binary search in one sorted chunk (a lookup after a filter hit).
 * filter_hits(filters, pk) -> tuple of the indexes of `filters` (a tuple of PairFilter or None: no filter,
 *                     always a hit) that may hold pk: one hash for all, one block read per filter. An absent
 *                     pair costs this one call (an empty tuple: the shared singleton). */
#include "risk_table.h"

#define PF_BITS_PER_PAIR 16
#define PF_BLOCK_WORDS 8 /* 512 bits: one cache line */
#define PF_K 7           /* bits per pair, 9 bits of position each from the second hash */

typedef struct {
    PyObject_HEAD
    uint64_t *bits;  /* nblocks x PF_BLOCK_WORDS */
    size_t mask;     /* nblocks - 1 (a power of two) */
    Py_ssize_t count;
} PairFilterObject;

static inline void pf_hashes(const uint8_t *pk, uint64_t *h1, uint64_t *h2) {
    *h1 = rt_hash(pk, PAIR_KEY_LEN);
    *h2 = kh_fold(*h1 ^ RT_KEY.k[1], RT_KEY.k[2] | 1);
}

static inline void pf_add(PairFilterObject *f, uint64_t h1, uint64_t h2) {
    uint64_t *blk = f->bits + (size_t)(h1 & f->mask) * PF_BLOCK_WORDS;
    for (int i = 0; i < PF_K; i++, h2 >>= 9) blk[(h2 >> 6) & 7] |= (uint64_t)1 << (h2 & 63);
}

static inline int pf_may(const PairFilterObject *f, uint64_t h1, uint64_t h2) {
    const uint64_t *blk = f->bits + (size_t)(h1 & f->mask) * PF_BLOCK_WORDS;
    for (int i = 0; i < PF_K; i++, h2 >>= 9)
        if (!(blk[(h2 >> 6) & 7] >> (h2 & 63) & 1)) return 0;
    return 1;
}

static int packed_pairs(Py_buffer *b, const char *what) {
    if (b->len % PAIR_KEY_LEN != 0) {
        PyErr_Format(PyExc_ValueError, "%s: packed pairs are 32 bytes each", what);
        return -1;
    }
    return 0;
}

static PyObject *pf_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Py_buffer b;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "PairFilter(packed) takes no keywords");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*", &b)) return NULL;
    PairFilterObject *f = NULL;
    if (packed_pairs(&b, "PairFilter") < 0) goto done;
    size_t n = (size_t)b.len / PAIR_KEY_LEN, want = (n * PF_BITS_PER_PAIR + 511) / 512, nblocks = 1;
    while (nblocks < want) nblocks <<= 1;
    f = (PairFilterObject *)type->tp_alloc(type, 0);
    if (f == NULL) goto done;
    f->bits = PyMem_Calloc(nblocks * PF_BLOCK_WORDS, sizeof(uint64_t));
    if (f->bits == NULL) {
        Py_CLEAR(f);
        PyErr_NoMemory();
        goto done;
    }
    f->mask = nblocks - 1;
    f->count = (Py_ssize_t)n;
    const uint8_t *p = (const uint8_t *)b.buf;
    for (size_t i = 0; i < n; i++) {
        uint64_t h1, h2;
        pf_hashes(p + i * PAIR_KEY_LEN, &h1, &h2);
        pf_add(f, h1, h2);
    }
done:
    PyBuffer_Release(&b);
    return (PyObject *)f;
}

static void pf_dealloc(PyObject *self) {
    PyMem_Free(((PairFilterObject *)self)->bits);
    Py_TYPE(self)->tp_free(self);
}

static Py_ssize_t pf_len(PyObject *self) { return ((PairFilterObject *)self)->count; }

/* f.may(pk) -> whether the filter may hold pk (False: the run certainly does not) */
static PyObject *pf_may_py(PyObject *self, PyObject *pk) {
    if (!PyBytes_Check(pk) || PyBytes_GET_SIZE(pk) != PAIR_KEY_LEN) {
        PyErr_SetString(PyExc_TypeError, "a pair key is 32 bytes (debit id || credit id)");
        return NULL;
    }
    uint64_t h1, h2;
    pf_hashes((const uint8_t *)PyBytes_AS_STRING(pk), &h1, &h2);
    return PyBool_FromLong(pf_may((PairFilterObject *)self, h1, h2));
}

static PyObject *pf_nbytes(PyObject *self, void *unused) {
    (void)unused;
    return PyLong_FromSize_t((((PairFilterObject *)self)->mask + 1) * PF_BLOCK_WORDS * sizeof(uint64_t));
}

static PyMethodDef PF_METHODS[] = {
    {"may", pf_may_py, METH_O, "may(pk) -> whether the run may hold the pair (False: it does not)"},
    {NULL, NULL, 0, NULL},
};
static PyGetSetDef PF_GETSET[] = {
    {"nbytes", pf_nbytes, NULL, "the filter's memory (bytes)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
static PySequenceMethods PF_SEQ = {.sq_length = pf_len};

PyTypeObject PairFilterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ledger._native._risk.PairFilter",
    .tp_basicsize = sizeof(PairFilterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PairFilter(packed pairs): a per-process Bloom filter over one pair run (ledger/pair_runs.py)",
    .tp_new = pf_new,
    .tp_dealloc = pf_dealloc,
    .tp_methods = PF_METHODS,
    .tp_getset = PF_GETSET,
    .tp_as_sequence = &PF_SEQ,
};

/* filter_hits(filters, pk) -> tuple of the indexes whose filter may hold pk (None: no filter, a hit) */
PyObject *pair_filter_hits(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyTuple_Check(args[0]) || !PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[1]) != PAIR_KEY_LEN) {
        PyErr_SetString(PyExc_TypeError, "filter_hits(filters: tuple, pk: 32 bytes)");
        return NULL;
    }
    PyObject *filters = args[0];
    /* (the merge rule keeps at most 3 x (log2(pairs) + 1) runs: < 200 for any count a u64 can hold) */
    Py_ssize_t n = PyTuple_GET_SIZE(filters), hits[256], nh = 0;
    if (n > 256) {
        PyErr_SetString(PyExc_ValueError, "filter_hits: at most 256 filters");
        return NULL;
    }
    uint64_t h1, h2;
    pf_hashes((const uint8_t *)PyBytes_AS_STRING(args[1]), &h1, &h2);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyTuple_GET_ITEM(filters, i);
        if (f == Py_None) hits[nh++] = i;
        else if (Py_TYPE(f) != &PairFilterType) {
            PyErr_SetString(PyExc_TypeError, "filter_hits: each filter is a PairFilter or None");
            return NULL;
        } else if (pf_may((PairFilterObject *)f, h1, h2)) hits[nh++] = i;
    }
    PyObject *out = PyTuple_New(nh);
    for (Py_ssize_t i = 0; out != NULL && i < nh; i++) PyTuple_SET_ITEM(out, i, PyLong_FromSsize_t(hits[i]));
    return out;
}

/* merge_pairs(a, b) -> the sorted union of two sorted packed pair arrays, each pair once */
PyObject *pair_merge(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer a, b;
    if (!PyArg_ParseTuple(args, "y*y*", &a, &b)) return NULL;
    PyObject *out = NULL;
    if (packed_pairs(&a, "merge_pairs") < 0 || packed_pairs(&b, "merge_pairs") < 0) goto done;
    out = PyBytes_FromStringAndSize(NULL, a.len + b.len);
    if (out == NULL) goto done;
    const uint8_t *p = a.buf, *pe = p + a.len, *q = b.buf, *qe = q + b.len;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out), *o0 = o;
    const uint8_t *last = NULL;
    while (p < pe || q < qe) {
        const uint8_t *next;
        if (q >= qe || (p < pe && pk_cmp(p, q) <= 0)) {
            next = p;
            p += PAIR_KEY_LEN;
            if (p < pe && pk_cmp(next, p) > 0) goto unsorted;
        } else {
            next = q;
            q += PAIR_KEY_LEN;
            if (q < qe && pk_cmp(next, q) > 0) goto unsorted;
        }
        if (last != NULL && pk_eq(last, next)) continue;
        memcpy(o, next, PAIR_KEY_LEN);
        last = o;
        o += PAIR_KEY_LEN;
    }
    if (_PyBytes_Resize(&out, o - o0) < 0) out = NULL;
    goto done;
unsorted:
    Py_CLEAR(out);
    PyErr_SetString(PyExc_ValueError, "merge_pairs: a run's pairs are not sorted");
done:
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return out;
}

/* chunk_has(chunk, pk) -> whether a sorted packed chunk holds pk (a binary search) */
PyObject *pair_chunk_has(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[1]) != PAIR_KEY_LEN
        || PyBytes_GET_SIZE(args[0]) % PAIR_KEY_LEN != 0) {
        PyErr_SetString(PyExc_TypeError, "chunk_has(chunk: packed pairs, pk: 32 bytes)");
        return NULL;
    }
    const uint8_t *c = (const uint8_t *)PyBytes_AS_STRING(args[0]), *k = (const uint8_t *)PyBytes_AS_STRING(args[1]);
    return PyBool_FromLong(pairs_have(c, (size_t)PyBytes_GET_SIZE(args[0]) / PAIR_KEY_LEN, k));
}

int pair_runs_add_type(PyObject *module) {
    if (PyType_Ready(&PairFilterType) < 0) return -1;
    return PyModule_AddObjectRef(module, "PairFilter", (PyObject *)&PairFilterType);
}
