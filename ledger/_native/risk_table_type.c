/* sovledger RiskTable, the Python type: what ledger/apply/scratch.py, seal.py and driver.py call
 * (the maps and the protocol: risk_table.c). */
#include "risk_table.h"

#include <stdlib.h>
#include <string.h>

static int state_key(PyObject *key, const uint8_t **k, int *klen) {
    if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) < 1 || PyBytes_GET_SIZE(key) > 17) {
        PyErr_SetString(PyExc_TypeError, "a risk key is bytes of 1..17");
        return -1;
    }
    *k = (const uint8_t *)PyBytes_AS_STRING(key);
    *klen = (int)PyBytes_GET_SIZE(key);
    return 0;
}

static int pair_key(PyObject *pk) {
    if (PyBytes_Check(pk) && PyBytes_GET_SIZE(pk) == PAIR_KEY_LEN) return 0;
    PyErr_SetString(PyExc_TypeError, "a pair key is 32 bytes (debit id || credit id)");
    return -1;
}

static PyObject *state_list(const uint64_t *st) {
    PyObject *list = PyList_New(RISK_STATE_LEN);
    for (int i = 0; list != NULL && i < RISK_STATE_LEN; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st[i]);
        if (v == NULL) Py_CLEAR(list);
        else PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* state(key) -> a new list, or None (no history): the open block's view */
static PyObject *rt_state(PyObject *self, PyObject *key) {
    const uint8_t *k;
    int klen;
    uint64_t st[RISK_STATE_LEN];
    uint8_t has;
    int32_t idx;
    if (state_key(key, &k, &klen) < 0 || rt_lookup((RiskTableObject *)self, k, klen, st, &has, &idx) < 0) return NULL;
    if (!has) Py_RETURN_NONE;
    return state_list(st);
}

/* take(key) -> the state the open block changed here, as a new list handed to Python (the table keeps the
 * committed value again), or None: the block did not change it here */
static PyObject *rt_take(PyObject *self, PyObject *key) {
    RiskTableObject *t = (RiskTableObject *)self;
    const uint8_t *k;
    int klen;
    if (state_key(key, &k, &klen) < 0) return NULL;
    int32_t i = tmap_find(&t->states, k, klen, rt_hash(k, klen));
    if (i < 0 || t->states.ents[i].changed != t->epoch) Py_RETURN_NONE;
    tent_t *e = &t->states.ents[i];
    PyObject *list = state_list(e->st);
    if (list != NULL) {
        tsave_t *s = &t->saved[e->saved];
        memcpy(e->st, s->st, sizeof e->st);
        e->has = s->has;
        e->changed = 0;
        s->idx = -1;
    }
    return list;
}

static PyObject *rt_seen_py(PyObject *self, PyObject *pk) {
    int seen;
    int32_t idx;
    if (pair_key(pk) < 0 || rt_seen((RiskTableObject *)self, (const uint8_t *)PyBytes_AS_STRING(pk), &seen, &idx) < 0)
        return NULL;
    return PyBool_FromLong(seen);
}

/* ---- sorted rows ---------------------------------------------------------------------------------- */

static int cmp_skey(const void *x, const void *y) {
    const skey_t *a = x, *b = y;
    for (int i = 0; i < 4; i++)
        if (a->w[i] != b->w[i]) return a->w[i] < b->w[i] ? -1 : 1;
    return 0;
}

/* the keys a[0..n) stably by their word w (LSD radix: a pass per byte of it that varies, the counts of every
 * byte taken in one read pass, the passes alternating between a and tmp; a word that is the same everywhere
 * costs one read) */
static void radix_word(skey_t *a, skey_t *tmp, size_t n, int w) {
    uint64_t all_or = 0, all_and = UINT64_MAX;
    for (size_t i = 0; i < n; i++) { all_or |= a[i].w[w]; all_and &= a[i].w[w]; }
    uint64_t varies = all_or ^ all_and;
    int shifts[8], passes = 0;
    for (int shift = 0; shift < 64; shift += 8)
        if ((varies >> shift) & 0xFF) shifts[passes++] = shift;
    if (passes == 0) return;
    size_t count[8][257]; /* 16 KiB at most; this frame is gone before sort_from recurses */
    memset(count, 0, (size_t)passes * sizeof count[0]);
    skey_t *src = a, *dst = tmp;
    for (size_t i = 0; i < n; i++)
        for (int p = 0; p < passes; p++) count[p][((a[i].w[w] >> shifts[p]) & 0xFF) + 1]++;
    for (int p = 0; p < passes; p++) {
        size_t *c = count[p];
        for (int b = 0; b < 256; b++) c[b + 1] += c[b];
        for (size_t i = 0; i < n; i++) dst[c[(src[i].w[w] >> shifts[p]) & 0xFF]++] = src[i];
        skey_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != a) memcpy(a, src, n * sizeof *a);
}

#define SORT_SMALL 48 /* runs up to this long: insertion sort */

/* a[0..n) sorted by the whole key, given that every key there has the same words before w */
static void sort_from(skey_t *a, skey_t *tmp, size_t n, int w) {
    if (w == 4) return; /* every word equal: the same key, kept in its order */
    if (n <= SORT_SMALL) {
        for (size_t i = 1; i < n; i++) {
            skey_t x = a[i];
            size_t j = i;
            for (; j > 0 && cmp_skey(&a[j - 1], &x) > 0; j--) a[j] = a[j - 1];
            a[j] = x;
        }
        return;
    }
    radix_word(a, tmp, n, w);
    for (size_t start = 0, end; start < n; start = end) { /* the runs that share word w: by the next words */
        for (end = start + 1; end < n && a[end].w[w] == a[start].w[w]; end++) {}
        if (end - start > 1) sort_from(a + start, tmp, end - start, w + 1);
    }
}

/* sort by key, stably (equal keys keep their order: the journal fold keeps the last): radix on the first
 * word, then each run of keys that share it by the next word, and so on (a word that is the same in a whole
 * run costs one read, so many pairs of one payer cost as few passes as pairs of many payers); short runs by
 * insertion. At most 4 levels deep, linear in n per level. tmp has room for n keys */
void sort_keys(skey_t *a, skey_t *tmp, size_t n) { sort_from(a, tmp, n, 0); }

/* (key, value) with value stolen */
static PyObject *item(const uint8_t *key, Py_ssize_t klen, PyObject *value) {
    PyObject *k = value != NULL ? PyBytes_FromStringAndSize((const char *)key, klen) : NULL;
    PyObject *t = k != NULL ? PyTuple_New(2) : NULL;
    if (t == NULL) {
        Py_XDECREF(k);
        Py_XDECREF(value);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, k);
    PyTuple_SET_ITEM(t, 1, value);
    return t;
}

static PyObject *packed(const uint64_t *st) { /* ledger/risk.py RISK_STRUCT: 17 x u64 little endian */
    PyObject *v = PyBytes_FromStringAndSize(NULL, RISK_ROW_LEN);
    if (v == NULL) return NULL;
    uint8_t *row = (uint8_t *)PyBytes_AS_STRING(v);
    for (int i = 0; i < RISK_STATE_LEN; i++)
        for (int k = 0; k < 8; k++) row[8 * i + k] = (uint8_t)(st[i] >> (8 * k));
    return v;
}

/* rows() -> [(key, 136-byte row)] of the states the open block changed here, sorted by key */
static PyObject *rt_rows(PyObject *self, PyObject *unused) {
    (void)unused;
    RiskTableObject *t = (RiskTableObject *)self;
    skey_t *order = PyMem_Malloc(2 * (t->nsaved + 1) * sizeof *order);
    if (order == NULL) return PyErr_NoMemory();
    size_t n = 0;
    for (size_t k = 0; k < t->nsaved; k++)
        if (t->saved[k].idx >= 0) {
            const tent_t *e = &t->states.ents[t->saved[k].idx];
            skey_of(&order[n++], e->key, e->klen);
        }
    sort_keys(order, order + t->nsaved + 1, n);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out != NULL && i < n; i++) {
        const tent_t *e = (const tent_t *)(const void *)(order[i].key - offsetof(tent_t, key));
        PyObject *it = item(e->key, e->klen, packed(e->st));
        if (it == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, (Py_ssize_t)i, it);
    }
    PyMem_Free(order);
    return out;
}

/* [(pair key, b"")] of the block's pairs in `state` (count of them), sorted */
static PyObject *pairs_in(const pmap_t *m, uint8_t state, size_t count) {
    skey_t *order = PyMem_Malloc(2 * (count + 1) * sizeof *order);
    if (order == NULL) return PyErr_NoMemory();
    size_t n = 0;
    for (size_t k = 0; k < m->nblk && n < count; k++) /* the block's list, not the whole map */
        if (PSTATE(m, m->blk[k]) == state) skey_of(&order[n++], m->keys[m->blk[k]], PAIR_KEY_LEN);
    sort_keys(order, order + count + 1, n);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out != NULL && i < n; i++) {
        PyObject *it = item(order[i].key, PAIR_KEY_LEN, PyBytes_FromStringAndSize(NULL, 0));
        if (it == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, (Py_ssize_t)i, it);
    }
    PyMem_Free(order);
    return out;
}

/* pair_rows() -> the block's new pairs (known absent from the store): rows to insert */
static PyObject *rt_pair_rows(PyObject *self, PyObject *unused) {
    (void)unused;
    const pmap_t *m = &((RiskTableObject *)self)->pairs;
    return pairs_in(m, PAIR_NEW, m->nnew);
}

/* touched_pair_rows() -> the block's touched pairs (committed state unknown): rows to put with no-overwrite */
static PyObject *rt_touched_pair_rows(PyObject *self, PyObject *unused) {
    (void)unused;
    const pmap_t *m = &((RiskTableObject *)self)->pairs;
    return pairs_in(m, PAIR_TOUCHED, m->ntouched);
}

/* the keys of these transfer records that are not cached yet, each once, entered in the cache as not read
 * yet (their indexes into idx): `which` bit 0 payer, 1 payee, 2 PSP state keys (ledger/risk.py KEY_OUT /
 * KEY_IN / psp_key) */
static PyObject *uncached(RiskTableObject *t, const uint8_t *recs, size_t n, int which, int32_t *idx) {
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list != NULL && i < n; i++) {
        const uint8_t *r = recs + 176 * i;
        for (int w = 0; w < 3; w++) {
            if (!(which >> w & 1)) continue;
            uint8_t k[17];
            int klen = 17;
            if (w == 2) {
                k[0] = 'p';
                for (int b = 0; b < 4; b++) k[1 + b] = r[167 - b]; /* psp_id: u32 little endian at 164, the key big endian */
                klen = 5;
            } else {
                k[0] = w == 0 ? 'o' : 'i';
                memcpy(k + 1, r + (w == 0 ? 16 : 32), 16);
            }
            uint64_t h = rt_hash(k, klen);
            if (tmap_find(&t->states, k, klen, h) >= 0) continue;
            int32_t at = tmap_insert(&t->states, k, klen, h);
            if (at >= 0) t->states.ents[at].has = HAS_UNKNOWN;
            PyObject *key = at >= 0 ? PyBytes_FromStringAndSize((const char *)k, klen) : NULL;
            if (key == NULL || PyList_Append(list, key) < 0) Py_CLEAR(list);
            else idx[PyList_GET_SIZE(list) - 1] = at;
            Py_XDECREF(key);
        }
    }
    return list;
}

/* the rows of those keys in one call of the store reader (one cursor walk), into the cache; a key whose
 * row could not be read stays "not read yet" (read alone when it is used) */
static Py_ssize_t fetch(RiskTableObject *t, const uint8_t *recs, size_t n, int which) {
    int32_t *idx = PyMem_Malloc((3 * n + 1) * sizeof(int32_t));
    PyObject *list = idx != NULL ? uncached(t, recs, n, which, idx) : PyErr_NoMemory(), *got = NULL;
    Py_ssize_t out = -1, u = list != NULL ? PyList_GET_SIZE(list) : 0;
    if (list == NULL) goto done;
    if (u && (got = PyObject_CallOneArg(t->get_risks, list)) == NULL) {
        if (PyErr_ExceptionMatches(PyExc_Exception)) { /* only a shortcut: each key is read (and fails) alone */
            PyErr_Clear();
            out = 0;
        }
        goto done;
    }
    if (u && (!PyList_Check(got) || PyList_GET_SIZE(got) != u)) {
        PyErr_SetString(PyExc_TypeError, "a store reader must return a list of one entry per key");
        goto done;
    }
    for (Py_ssize_t i = 0; i < u; i++) {
        PyObject *row = PyList_GET_ITEM(got, i);
        uint64_t st[RISK_STATE_LEN] = {0};
        if (row != Py_None && rt_decode_row(row, st) < 0) goto done;
        memcpy(t->states.ents[idx[i]].st, st, sizeof st);
        t->states.ents[idx[i]].has = row != Py_None ? HAS_ROW : HAS_NONE;
    }
    out = u;
done:
    Py_XDECREF(list);
    Py_XDECREF(got);
    PyMem_Free(idx);
    return out;
}

/* prefetch(records, tracks) -> how many rows were looked up: the records' uncached risk states (tracks
 * bit 0 payer, 1 payee, 2 PSP; bit 3, pairs, is ignored: a pair is looked up only when read), one store
 * call instead of one get per key */
static PyObject *rt_prefetch(PyObject *self, PyObject *args) {
    RiskTableObject *t = (RiskTableObject *)self;
    Py_buffer b;
    int tracks;
    if (!PyArg_ParseTuple(args, "y*i", &b, &tracks)) return NULL;
    Py_ssize_t states = 0;
    if (t->get_risks == NULL) rt_no_block();
    else if (tracks & 7) states = fetch(t, b.buf, (size_t)b.len / 176, tracks & 7);
    PyBuffer_Release(&b);
    if (t->get_risks == NULL || states < 0) return NULL;
    return PyLong_FromSsize_t(states);
}

/* ---- the block protocol ----------------------------------------------------------------------------- */
static void close_block(RiskTableObject *t, int keep) {
    Py_CLEAR(t->get_risk);
    Py_CLEAR(t->get_pair);
    Py_CLEAR(t->get_risks);
    rt_settle_states(t, keep);
    pmap_settle(&t->pairs, keep);
}

static void forget_all(RiskTableObject *t) {
    close_block(t, 0);
    tmap_clear(&t->states);
    pmap_clear(&t->pairs);
}

static PyObject *rt_begin(PyObject *self, PyObject *args) {
    RiskTableObject *t = (RiskTableObject *)self;
    PyObject *a, *b, *c;
    if (!PyArg_ParseTuple(args, "OOO", &a, &b, &c)) return NULL;
    close_block(t, 0); /* a block left open by a failure is taken back */
    t->get_risk = Py_NewRef(a);
    t->get_pair = Py_NewRef(b);
    t->get_risks = Py_NewRef(c);
    Py_RETURN_NONE;
}

/* the Python paths' states and new pairs (SideState.risk / .pairs) are committed now */
static int merge_python(RiskTableObject *t, PyObject *risk, PyObject *pairs) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(risk, &pos, &key, &value)) {
        const uint8_t *k;
        int klen;
        uint64_t st[RISK_STATE_LEN];
        if (state_key(key, &k, &klen) < 0 || risk_read_list(value, st) < 0 || tmap_put(&t->states, k, klen, st) < 0)
            return -1;
    }
    Py_hash_t hash;
    pos = 0;
    while (_PySet_NextEntry(pairs, &pos, &key, &hash)) {
        if (pair_key(key) < 0) return -1;
        const uint8_t *pk = (const uint8_t *)PyBytes_AS_STRING(key);
        uint64_t h = rt_hash(pk, PAIR_KEY_LEN);
        int32_t i = pmap_find(&t->pairs, pk, h); /* journaled: pinned (a fold unpins after the merge) */
        if (i >= 0) t->pairs.state[i] = PAIR_PRESENT | PAIR_PIN; /* a cached "absent" (or unknown) */
        else if (pmap_insert(&t->pairs, pk, h, PAIR_PRESENT | PAIR_PIN) < 0) return -1;
    }
    return 0;
}

/* commit(risk, pairs, folded): the block committed: its changes here stay, the Python paths' join them;
 * journaled, they are pinned until a fold (`folded`: this block folded the journal, nothing stays pinned) */
static PyObject *rt_commit(PyObject *self, PyObject *args) {
    RiskTableObject *t = (RiskTableObject *)self;
    PyObject *risk, *pairs;
    int folded = 0;
    if (!PyArg_ParseTuple(args, "O!O!|p", &PyDict_Type, &risk, &PySet_Type, &pairs, &folded)) return NULL;
    rt_pin_block(t);
    close_block(t, 1);
    if (merge_python(t, risk, pairs) < 0) {
        forget_all(t); /* half-published: forget every cached state (the caller reloads the journal) */
        return NULL;
    }
    if (folded) rt_unpin_all(t);
    if (t->states.n > t->max_states) tmap_keep_newest(&t->states, t->max_states / 2);
    if (t->pairs.n > t->max_pairs) pmap_keep_pinned(&t->pairs);
    Py_RETURN_NONE;
}

static PyObject *rt_abort(PyObject *self, PyObject *unused) {
    (void)unused;
    close_block((RiskTableObject *)self, 0);
    Py_RETURN_NONE;
}

static PyObject *rt_forget(PyObject *self, PyObject *unused) {
    (void)unused;
    forget_all((RiskTableObject *)self);
    Py_RETURN_NONE;
}

static PyObject *rt_sizes(PyObject *self, PyObject *unused) {
    (void)unused;
    RiskTableObject *t = (RiskTableObject *)self;
    size_t changed = 0;
    for (size_t k = 0; k < t->nsaved; k++) changed += t->saved[k].idx >= 0;
    return Py_BuildValue("(nnnnn)", (Py_ssize_t)t->states.n, (Py_ssize_t)changed, (Py_ssize_t)t->pairs.n,
                         (Py_ssize_t)t->pairs.nnew, (Py_ssize_t)t->pairs.ntouched);
}

static PyObject *rt_pinned(PyObject *self, PyObject *unused) {
    (void)unused;
    RiskTableObject *t = (RiskTableObject *)self;
    size_t states = 0, pairs = 0;
    for (size_t i = 0; i < t->states.n; i++) states += t->states.ents[i].pinned;
    for (size_t i = 0; i < t->pairs.n; i++) pairs += (t->pairs.state[i] & PAIR_PIN) != 0;
    return Py_BuildValue("(nn)", (Py_ssize_t)states, (Py_ssize_t)pairs);
}

static PyObject *rt_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Py_ssize_t max_states, max_pairs;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "RiskTable takes no keywords");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "nn", &max_states, &max_pairs)) return NULL;
    if (max_states < 2 || max_pairs < 2) {
        PyErr_SetString(PyExc_ValueError, "bounds must be at least 2");
        return NULL;
    }
    RiskTableObject *t = (RiskTableObject *)type->tp_alloc(type, 0);
    if (t != NULL) {
        t->epoch = 1;
        t->max_states = (size_t)max_states;
        t->max_pairs = (size_t)max_pairs;
    }
    return (PyObject *)t;
}

static void rt_dealloc(PyObject *self) {
    RiskTableObject *t = (RiskTableObject *)self;
    Py_CLEAR(t->get_risk);
    Py_CLEAR(t->get_pair);
    Py_CLEAR(t->get_risks);
    PyMem_Free(t->states.ents);
    PyMem_Free(t->states.slots);
    PyMem_Free(t->saved);
    PyMem_Free(t->pairs.keys);
    PyMem_Free(t->pairs.state);
    PyMem_Free(t->pairs.blk);
    PyMem_Free(t->pairs.slots);
    PyMem_Free(t->scratch);
    Py_TYPE(self)->tp_free(self);
}

static PyMethodDef RT_METHODS[] = {
    {"begin", rt_begin, METH_VARARGS,
     "begin(get_risk, get_pair, get_risks): open a block over its write transaction's readers."},
    {"state", rt_state, METH_O, "state(key) -> a new list or None: the open block's view of a risk state."},
    {"take", rt_take, METH_O, "take(key) -> the block's changed state as a list handed to Python, or None."},
    {"seen", rt_seen_py, METH_O, "seen(pair key) -> whether the pair is new or touched in this block, or committed."},
    {"rows", rt_rows, METH_NOARGS, "rows() -> sorted (key, row) of the states the block changed here."},
    {"pair_rows", rt_pair_rows, METH_NOARGS, "pair_rows() -> sorted (pair key, b'') of the block's new pairs."},
    {"touched_pair_rows", rt_touched_pair_rows, METH_NOARGS,
     "touched_pair_rows() -> sorted (pair key, b'') of the block's touched pairs (put with no-overwrite)."},
    {"prefetch", rt_prefetch, METH_VARARGS,
     "prefetch(records, tracks) -> rows looked up: the uncached risk states, one store call."},
    {"commit", rt_commit, METH_VARARGS,
     "commit(risk, pairs, folded=False): the block committed; publish (and pin, unless folded) its states and pairs."},
    {"journal", rt_journal, METH_VARARGS, "journal(risk, paid) -> the open block's risk_log row, or None."},
    {"load", rt_load, METH_O, "load(rows): the risk journal's rows, oldest first, committed and pinned."},
    {"fold", rt_fold, METH_O, "fold(rows) -> (risk keys, their rows, pair keys): the journal folded, sorted by key."},
    {"pinned", rt_pinned, METH_NOARGS, "pinned() -> (pinned states, pinned pairs)."},
    {"abort", rt_abort, METH_NOARGS, "abort(): the block failed; take its changes and new pairs back."},
    {"forget", rt_forget, METH_NOARGS, "forget(): drop every cached state and pair."},
    {"sizes", rt_sizes, METH_NOARGS,
     "sizes() -> (cached states, states the block changed, cached pairs, new pairs, touched pairs)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject RiskTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ledger._native._risk.RiskTable",
    .tp_basicsize = sizeof(RiskTableObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RiskTable(max_states, max_pairs): risk states and payer-payee pairs kept in C across blocks "
              "(ledger/_native/risk_table.c).",
    .tp_new = rt_new,
    .tp_dealloc = rt_dealloc,
    .tp_methods = RT_METHODS,
};

int risk_table_add_type(PyObject *module) {
    if (PyType_Ready(&RiskTableType) < 0) return -1;
    return PyModule_AddObjectRef(module, "RiskTable", (PyObject *)&RiskTableType);
}
