/* sovledger risk journal (table `risk_log`, docs/formats.md): one row per block that changed risk state,
 * built here straight into one bytes object, loaded into the RiskTable (pinned) and folded into the rows of
 * `risk` / `risk_pairs`. The Python reference of every function is ledger/risk_log.py.
 *
 * A row: u32 LE state count ‖ u32 LE pair count ‖ the states sorted by key, each u8 key length ‖ key ‖
 * 17 × u64 LE ‖ the distinct pairs sorted, 32 bytes each. */
#include "risk_table.h"

#include <stdlib.h>
#include <string.h>

typedef skey_t jkey_t; /* a row's state key points one past its length byte; a block's, into its tent_t */

/* the entries and keys below are read in an order unrelated to where they sit (the table's entries in
 * change order, the sorted row's sources): fetch a few ahead (PREFETCH, risk_table.h) */
#define AHEAD 8
#define PREFETCH_SPAN(p, len)                                                                               \
    do {                                                                                                    \
        const char *q_ = (const char *)(p);                                                                 \
        for (size_t o_ = 0; o_ < (size_t)(len); o_ += 64) PREFETCH(q_ + o_);                              \
        PREFETCH(q_ + (len) - 1);                                                                          \
    } while (0)

/* the table's sort room for n keys and as many more (the sort's second buffer), grown when short and kept:
 * a fold needs megabytes, and fresh memory each time costs page faults */
static jkey_t *scratch_keys(RiskTableObject *t, size_t n) {
    size_t need = 2 * (n + 1) * sizeof(jkey_t);
    if (need > t->scratch_cap) {
        PyMem_Free(t->scratch);
        t->scratch = PyMem_Malloc(need);
        t->scratch_cap = t->scratch != NULL ? need : 0;
        if (t->scratch == NULL) return (jkey_t *)PyErr_NoMemory();
    }
    return t->scratch;
}

static void put_state(uint8_t *out, const uint8_t *key, int klen, const uint64_t *st) {
    out[0] = (uint8_t)klen;
    memcpy(out + 1, key, (size_t)klen);
    uint8_t *row = out + 1 + klen;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(row, st, RISK_ROW_LEN); /* 17 x u64 little endian: the host's layout */
#else
    for (int i = 0; i < RISK_STATE_LEN; i++)
        for (int k = 0; k < 8; k++) row[8 * i + k] = (uint8_t)(st[i] >> (8 * k));
#endif
}

static void put_u32(uint8_t *p, size_t v) {
    for (int k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (8 * k));
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* the entry a sort key of block_states points into */
#define ENTRY_OF(k) ((const tent_t *)(const void *)((k).key - offsetof(tent_t, key)))

/* the states the open block changed (the table's entries and the Python dict's, disjoint) as sort keys
 * into their entries: the table's own, the dict's copied into `extra`; the count, -1 on error */
static Py_ssize_t block_states(RiskTableObject *t, PyObject *risk, tent_t *extra, jkey_t *ks) {
    size_t n = 0;
    for (size_t k = 0; k < t->nsaved; k++) {
        if (k + AHEAD < t->nsaved && t->saved[k + AHEAD].idx >= 0) PREFETCH(&t->states.ents[t->saved[k + AHEAD].idx]);
        if (t->saved[k].idx < 0) continue;
        const tent_t *e = &t->states.ents[t->saved[k].idx];
        skey_of(&ks[n++], e->key, e->klen);
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(risk, &pos, &key, &value)) {
        Py_ssize_t klen = PyBytes_Check(key) ? PyBytes_GET_SIZE(key) : 0;
        if (klen < 1 || klen > 17) {
            PyErr_SetString(PyExc_TypeError, "a risk key is bytes of 1..17");
            return -1;
        }
        if (risk_read_list(value, extra->st) < 0) return -1;
        memcpy(extra->key, PyBytes_AS_STRING(key), (size_t)klen);
        extra->klen = (uint8_t)klen;
        skey_of(&ks[n++], extra->key, (int)klen);
        extra++;
    }
    return (Py_ssize_t)n;
}

/* the pairs the open block paid (the table's list and the Python set), sort keys in `ks`; the count, -1 */
static Py_ssize_t block_pairs(RiskTableObject *t, PyObject *paid, jkey_t *ks) {
    const pmap_t *m = &t->pairs;
    size_t n = 0;
    for (size_t k = 0; k < m->nblk; k++) {
        if (k + AHEAD < m->nblk) PREFETCH(m->keys[m->blk[k + AHEAD]]);
        skey_of(&ks[n++], m->keys[m->blk[k]], PAIR_KEY_LEN);
    }
    Py_ssize_t pos = 0;
    PyObject *key;
    Py_hash_t hash;
    while (_PySet_NextEntry(paid, &pos, &key, &hash)) {
        if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != PAIR_KEY_LEN) {
            PyErr_SetString(PyExc_TypeError, "a pair key is 32 bytes (debit id || credit id)");
            return -1;
        }
        skey_of(&ks[n++], (const uint8_t *)PyBytes_AS_STRING(key), PAIR_KEY_LEN);
    }
    return (Py_ssize_t)n;
}

/* the row from sorted states (keys into their entries) and sorted pairs (duplicates dropped) */
static PyObject *journal_value(const jkey_t *states, size_t ns, const jkey_t *pairs, size_t np) {
    size_t size = 8, distinct = 0;
    for (size_t i = 0; i < ns; i++) size += 1 + (size_t)ENTRY_OF(states[i])->klen + RISK_ROW_LEN;
    for (size_t i = 0; i < np; i++) distinct += i == 0 || !skey_same(&pairs[i], &pairs[i - 1]);
    size += distinct * PAIR_KEY_LEN;
    PyObject *v = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (v == NULL) return NULL;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(v);
    put_u32(out, ns);
    put_u32(out + 4, distinct);
    out += 8;
    for (size_t i = 0; i < ns; i++) {
        if (i + AHEAD < ns) PREFETCH_SPAN(ENTRY_OF(states[i + AHEAD]), sizeof(tent_t));
        const tent_t *e = ENTRY_OF(states[i]);
        put_state(out, e->key, e->klen, e->st);
        out += 1 + (size_t)e->klen + RISK_ROW_LEN;
    }
    for (size_t i = 0; i < np; i++) {
        if (i + AHEAD < np) PREFETCH(pairs[i + AHEAD].key);
        if (i > 0 && skey_same(&pairs[i], &pairs[i - 1])) continue;
        memcpy(out, pairs[i].key, PAIR_KEY_LEN);
        out += PAIR_KEY_LEN;
    }
    return v;
}

/* journal(risk, paid) -> the open block's journal row, or None: it changed no state and paid no pair */
PyObject *rt_journal(PyObject *self, PyObject *args) {
    RiskTableObject *t = (RiskTableObject *)self;
    PyObject *risk, *paid, *out = NULL;
    if (!PyArg_ParseTuple(args, "O!O!", &PyDict_Type, &risk, &PySet_Type, &paid)) return NULL;
    size_t cs = t->nsaved + (size_t)PyDict_GET_SIZE(risk), cp = t->pairs.nblk + (size_t)PySet_GET_SIZE(paid);
    tent_t *extra = PyMem_Malloc(((size_t)PyDict_GET_SIZE(risk) + 1) * sizeof(tent_t)); /* the dict's states */
    jkey_t *ks = extra != NULL ? scratch_keys(t, cs + cp) : NULL; /* the second half: the sort's room */
    if (extra == NULL || ks == NULL) {
        if (extra == NULL) PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t ns = block_states(t, risk, extra, ks);
    Py_ssize_t np = ns < 0 ? -1 : block_pairs(t, paid, ks + ns);
    if (np < 0) goto done;
    if (ns == 0 && np == 0) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    jkey_t *tmp = ks + cs + cp + 1;
    sort_keys(ks, tmp, (size_t)ns);
    sort_keys(ks + ns, tmp, (size_t)np);
    out = journal_value(ks, (size_t)ns, ks + ns, (size_t)np);
done:
    PyMem_Free(extra);
    return out;
}

/* ---- reading rows --------------------------------------------------------------------------------- */
typedef struct {
    Py_buffer b;
    uint32_t ns, np;
    const uint8_t *pairs; /* where the pairs start */
} jrow_t;

/* check one row's layout; its counts and where its pairs start */
static int open_row(PyObject *value, jrow_t *r) {
    if (PyObject_GetBuffer(value, &r->b, PyBUF_SIMPLE) < 0) return -1;
    const uint8_t *p = r->b.buf, *end = p + r->b.len;
    if (r->b.len < 8) goto bad;
    r->ns = get_u32(p);
    r->np = get_u32(p + 4);
    p += 8;
    for (uint32_t i = 0; i < r->ns; i++) {
        if (p >= end || p[0] < 1 || p[0] > 17 || (size_t)(end - p) < 1 + (size_t)p[0] + RISK_ROW_LEN) goto bad;
        p += 1 + p[0] + RISK_ROW_LEN;
    }
    if ((size_t)(end - p) != (size_t)r->np * PAIR_KEY_LEN) goto bad;
    r->pairs = p;
    return 0;
bad:
    PyBuffer_Release(&r->b);
    PyErr_SetString(PyExc_ValueError, "a risk_log row is malformed (docs/formats.md, table risk_log)");
    return -1;
}

static void decode_st(const uint8_t *row, uint64_t st[RISK_STATE_LEN]) {
    for (int i = 0; i < RISK_STATE_LEN; i++, row += 8) {
        uint64_t v = 0;
        for (int k = 7; k >= 0; k--) v = v << 8 | row[k];
        st[i] = v;
    }
}

/* the rows of a list of journal values, opened (n of them); NULL on error */
static jrow_t *open_rows(PyObject *values, Py_ssize_t *n) {
    if (!PyList_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "journal rows come as a list of bytes");
        return NULL;
    }
    *n = PyList_GET_SIZE(values);
    jrow_t *rows = PyMem_Calloc((size_t)*n + 1, sizeof(jrow_t));
    if (rows == NULL) return (jrow_t *)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < *n; i++) {
        if (open_row(PyList_GET_ITEM(values, i), &rows[i]) < 0) {
            for (Py_ssize_t k = 0; k < i; k++) PyBuffer_Release(&rows[k].b);
            PyMem_Free(rows);
            return NULL;
        }
    }
    return rows;
}

static void close_rows(jrow_t *rows, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) PyBuffer_Release(&rows[i].b);
    PyMem_Free(rows);
}

/* load(values): the journal's rows, oldest first, into the table: their states and pairs committed and
 * pinned (between blocks: after open, a snapshot or a restore) */
PyObject *rt_load(PyObject *self, PyObject *values) {
    RiskTableObject *t = (RiskTableObject *)self;
    if (t->get_risk != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the risk journal is loaded between blocks, not in an open one");
        return NULL;
    }
    Py_ssize_t n;
    jrow_t *rows = open_rows(values, &n);
    if (rows == NULL) return NULL;
    int bad = 0;
    for (Py_ssize_t r = 0; !bad && r < n; r++) {
        const uint8_t *p = (const uint8_t *)rows[r].b.buf + 8;
        for (uint32_t i = 0; !bad && i < rows[r].ns; i++, p += 1 + p[0] + RISK_ROW_LEN) {
            uint64_t st[RISK_STATE_LEN];
            decode_st(p + 1 + p[0], st);
            bad = tmap_put(&t->states, p + 1, p[0], st) < 0;
        }
        for (uint32_t i = 0; !bad && i < rows[r].np; i++) {
            const uint8_t *pk = rows[r].pairs + (size_t)i * PAIR_KEY_LEN;
            uint64_t h = rt_hash(pk, PAIR_KEY_LEN);
            int32_t at = pmap_find(&t->pairs, pk, h);
            if (at >= 0) t->pairs.state[at] = PAIR_PRESENT | PAIR_PIN;
            else bad = pmap_insert(&t->pairs, pk, h, PAIR_PRESENT | PAIR_PIN) < 0;
        }
    }
    close_rows(rows, n);
    if (bad) return NULL;
    Py_RETURN_NONE;
}

/* the distinct states in ks (n, sorted, ties in row order) as new lists of bytes: their keys in *keys and
 * the last entry's value of each in *vals (bytes are untracked: no tuples, no GC work) */
static int last_of_each(const jkey_t *ks, size_t n, PyObject **keys, PyObject **vals) {
    Py_ssize_t m = 0;
    for (size_t i = 0; i < n; i++) m += i + 1 == n || !skey_same(&ks[i], &ks[i + 1]);
    if ((*keys = PyList_New(m)) == NULL || (*vals = PyList_New(m)) == NULL) return -1;
    Py_ssize_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && skey_same(&ks[i], &ks[i + 1])) continue; /* a later row has this key */
        Py_ssize_t klen = ks[i].key[-1];
        PyObject *k = PyBytes_FromStringAndSize((const char *)ks[i].key, klen);
        if (k == NULL) return -1;
        PyList_SET_ITEM(*keys, at, k);
        PyObject *v = PyBytes_FromStringAndSize((const char *)ks[i].key + klen, RISK_ROW_LEN);
        if (v == NULL) return -1;
        PyList_SET_ITEM(*vals, at, v);
        at++;
    }
    return 0;
}

/* the distinct pairs in ks (n, sorted) packed into one new bytes object (a pair run's bytes) */
static PyObject *distinct_packed(const jkey_t *ks, size_t n) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += i + 1 == n || !skey_same(&ks[i], &ks[i + 1]);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * PAIR_KEY_LEN));
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && skey_same(&ks[i], &ks[i + 1])) continue;
        memcpy(o, ks[i].key, PAIR_KEY_LEN);
        o += PAIR_KEY_LEN;
    }
    return out;
}

/* fold(values) -> (risk keys, their rows, packed pairs): the latest state of each key and every distinct pair
 * of the journal's rows (oldest first), sorted by key: `risk`'s rows and the bytes of a new pair run */
PyObject *rt_fold(PyObject *self, PyObject *values) {
    Py_ssize_t n;
    jrow_t *rows = open_rows(values, &n);
    if (rows == NULL) return NULL;
    size_t ns = 0, np = 0;
    for (Py_ssize_t r = 0; r < n; r++) { ns += rows[r].ns; np += rows[r].np; }
    jkey_t *ks = scratch_keys((RiskTableObject *)self, ns + np);
    PyObject *keys = NULL, *vals = NULL, *pairs = NULL, *out = NULL;
    if (ks == NULL) goto done;
    jkey_t *tmp = ks + ns + np + 1;
    size_t a = 0, b = ns;
    for (Py_ssize_t r = 0; r < n; r++) { /* in row order: the stable sort keeps a key's entries in it */
        const uint8_t *p = (const uint8_t *)rows[r].b.buf + 8;
        for (uint32_t i = 0; i < rows[r].ns; i++, p += 1 + p[0] + RISK_ROW_LEN) skey_of(&ks[a++], p + 1, p[0]);
        for (uint32_t i = 0; i < rows[r].np; i++) skey_of(&ks[b++], rows[r].pairs + (size_t)i * PAIR_KEY_LEN, PAIR_KEY_LEN);
    }
    sort_keys(ks, tmp, ns);
    sort_keys(ks + ns, tmp, np);
    if (last_of_each(ks, ns, &keys, &vals) == 0 && (pairs = distinct_packed(ks + ns, np)) != NULL)
        out = PyTuple_Pack(3, keys, vals, pairs);
done:
    Py_XDECREF(keys);
    Py_XDECREF(vals);
    Py_XDECREF(pairs);
    close_rows(rows, n);
    return out;
}

/* ---- one key, without building the whole overlay (ledger/dry_run.py) ---------------------------- */

/* journal_state(rows, key) -> the packed state (17 x u64 LE) of `key` in the newest row that has it, or None */
PyObject *journal_state(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *values;
    Py_buffer k;
    if (!PyArg_ParseTuple(args, "Oy*", &values, &k)) return NULL;
    Py_ssize_t n = 0;
    jrow_t *rows = open_rows(values, &n);
    PyObject *out = NULL;
    if (rows == NULL) goto done;
    for (Py_ssize_t i = n - 1; i >= 0 && out == NULL; i--) {
        const uint8_t *p = (const uint8_t *)rows[i].b.buf + 8;
        for (uint32_t e = 0; e < rows[i].ns; e++, p += 1 + p[0] + RISK_ROW_LEN)
            if (p[0] == k.len && memcmp(p + 1, k.buf, (size_t)k.len) == 0) {
                out = PyBytes_FromStringAndSize((const char *)p + 1 + p[0], RISK_ROW_LEN);
                break;
            }
    }
    close_rows(rows, n);
    if (out == NULL && !PyErr_Occurred()) out = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&k);
    return out;
}

/* journal_has_pair(rows, pair_key) -> whether any row holds the pair (each row's pairs are sorted) */
PyObject *journal_has_pair(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *values;
    Py_buffer k;
    if (!PyArg_ParseTuple(args, "Oy*", &values, &k)) return NULL;
    PyObject *out = NULL;
    Py_ssize_t n = 0;
    jrow_t *rows = k.len == PAIR_KEY_LEN ? open_rows(values, &n) : NULL;
    if (k.len != PAIR_KEY_LEN) PyErr_SetString(PyExc_ValueError, "a pair key is 32 bytes (debit id || credit id)");
    if (rows == NULL) goto done;
    int found = 0;
    for (Py_ssize_t i = 0; i < n && !found; i++) found = pairs_have(rows[i].pairs, rows[i].np, k.buf);
    close_rows(rows, n);
    out = PyBool_FromLong(found);
done:
    PyBuffer_Release(&k);
    return out;
}
