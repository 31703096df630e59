/* sovledger RiskTable: risk states and payer-payee pairs kept in C across blocks, for the C rules hook
 * (rules.c) and ledger/apply/scratch.py (Committed.table, SideState).
 *
 * committed  the committed state of every risk key read or written lately (a cache of the store's `risk`
 *            table; a key the store lacks is cached as "no history"). Bounded: after a commit, above
 *            max_states entries the oldest-inserted half is dropped; a miss reads the store, so results
 *            never depend on the bound. 160 bytes per entry + 8 bytes of index (load <= 1/2).
 * overlay    the open block's changed states written by the C hook, in first-change order. A key's
 *            in-block state lives either here or in the Python dict SideState.risk, never both: take()
 *            moves it out to Python (a linked chain's undo log, the reference create_transfer).
 * pairs      committed pair lookups (absent / present) and the block's new pairs. Bounded the same way
 *            (max_pairs; cleared after a commit above it). 33 bytes per entry + 8 bytes of index.
 *
 * begin(get_risk, get_pair, get_pairs) opens a block (the write transaction's readers); commit(risk, pairs)
 * publishes the overlay and the Python dict's states into the committed table, the new pairs (the table's
 * and the Python set's) as present;
 * abort() drops the block's overlay and new pairs. rows() / pair_rows() give the block's rows, sorted. */
#include "risk_table.h"

#include <stdlib.h>
#include <string.h>

static size_t rt_hash(const uint8_t *k, int n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, k + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    for (; i < n; i++) h = (h ^ k[i]) * 0x100000001b3ULL;
    h ^= h >> 29;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return (size_t)(h ^ (h >> 32));
}

/* ---- the state map ------------------------------------------------------------------------------ */
static int32_t tmap_find(const tmap_t *m, const uint8_t *key, int klen) {
    if (m->slots == NULL) return -1;
    for (size_t s = rt_hash(key, klen) & m->mask; m->slots[s] >= 0; s = (s + 1) & m->mask) {
        const tent_t *e = &m->ents[m->slots[s]];
        if (e->klen == klen && memcmp(e->key, key, (size_t)klen) == 0) return m->slots[s];
    }
    return -1;
}

static void tmap_index(tmap_t *m) { /* rebuild the slots over ents[0..n) */
    memset(m->slots, 0xff, (m->mask + 1) * sizeof(int32_t));
    for (size_t i = 0; i < m->n; i++) {
        size_t s = rt_hash(m->ents[i].key, m->ents[i].klen) & m->mask;
        while (m->slots[s] >= 0) s = (s + 1) & m->mask;
        m->slots[s] = (int32_t)i;
    }
}

static int tmap_reserve(tmap_t *m, size_t need) {
    if (need <= m->cap) return 0;
    size_t cap = m->cap ? m->cap : 1024;
    while (cap < need) cap *= 2;
    if (cap > INT32_MAX / 2) { PyErr_NoMemory(); return -1; }
    tent_t *ents = PyMem_Realloc(m->ents, cap * sizeof(tent_t));
    if (ents == NULL) { PyErr_NoMemory(); return -1; }
    m->ents = ents;
    int32_t *slots = PyMem_Malloc(2 * cap * sizeof(int32_t));
    if (slots == NULL) { PyErr_NoMemory(); return -1; }
    PyMem_Free(m->slots);
    m->slots = slots;
    m->mask = 2 * cap - 1;
    m->cap = cap;
    tmap_index(m);
    return 0;
}

/* a new entry for key (not present); NULL on no memory */
static tent_t *tmap_insert(tmap_t *m, const uint8_t *key, int klen) {
    if (tmap_reserve(m, m->n + 1) < 0) return NULL;
    size_t s = rt_hash(key, klen) & m->mask;
    while (m->slots[s] >= 0) s = (s + 1) & m->mask;
    tent_t *e = &m->ents[m->n];
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, (size_t)klen);
    e->klen = (uint8_t)klen;
    e->live = 1;
    m->slots[s] = (int32_t)m->n++;
    return e;
}

static void tmap_clear(tmap_t *m) {
    if (m->slots != NULL && m->n) memset(m->slots, 0xff, (m->mask + 1) * sizeof(int32_t));
    m->n = 0;
}

static void tmap_keep_newest(tmap_t *m, size_t keep) { /* drop the oldest-inserted entries */
    if (m->n <= keep) return;
    memmove(m->ents, m->ents + (m->n - keep), keep * sizeof(tent_t));
    m->n = keep;
    tmap_index(m);
}

static void tmap_free(tmap_t *m) {
    PyMem_Free(m->ents);
    PyMem_Free(m->slots);
    memset(m, 0, sizeof *m);
}

static int tmap_put(tmap_t *m, const uint8_t *key, int klen, const uint64_t *st, uint8_t has) {
    int32_t i = tmap_find(m, key, klen);
    tent_t *e = i >= 0 ? &m->ents[i] : tmap_insert(m, key, klen);
    if (e == NULL) return -1;
    memcpy(e->st, st, sizeof e->st);
    e->has = has;
    e->live = 1;
    return 0;
}

/* ---- the pair map ------------------------------------------------------------------------------- */
static int32_t pmap_find(const pmap_t *m, const uint8_t *pk) {
    if (m->slots == NULL) return -1;
    for (size_t s = rt_hash(pk, PAIR_KEY_LEN) & m->mask; m->slots[s] >= 0; s = (s + 1) & m->mask)
        if (memcmp(m->keys[m->slots[s]], pk, PAIR_KEY_LEN) == 0) return m->slots[s];
    return -1;
}

static int pmap_reserve(pmap_t *m, size_t need) {
    if (need <= m->cap) return 0;
    size_t cap = m->cap ? m->cap : 4096;
    while (cap < need) cap *= 2;
    if (cap > INT32_MAX / 2) { PyErr_NoMemory(); return -1; }
    void *keys = PyMem_Realloc(m->keys, cap * PAIR_KEY_LEN);
    if (keys == NULL) { PyErr_NoMemory(); return -1; }
    m->keys = keys;
    uint8_t *state = PyMem_Realloc(m->state, cap);
    if (state == NULL) { PyErr_NoMemory(); return -1; }
    m->state = state;
    int32_t *slots = PyMem_Malloc(2 * cap * sizeof(int32_t));
    if (slots == NULL) { PyErr_NoMemory(); return -1; }
    PyMem_Free(m->slots);
    m->slots = slots;
    m->mask = 2 * cap - 1;
    m->cap = cap;
    memset(m->slots, 0xff, 2 * cap * sizeof(int32_t));
    for (size_t i = 0; i < m->n; i++) {
        size_t s = rt_hash(m->keys[i], PAIR_KEY_LEN) & m->mask;
        while (m->slots[s] >= 0) s = (s + 1) & m->mask;
        m->slots[s] = (int32_t)i;
    }
    return 0;
}

static int pmap_insert(pmap_t *m, const uint8_t *pk, uint8_t state) {
    if (pmap_reserve(m, m->n + 1) < 0) return -1;
    size_t s = rt_hash(pk, PAIR_KEY_LEN) & m->mask;
    while (m->slots[s] >= 0) s = (s + 1) & m->mask;
    memcpy(m->keys[m->n], pk, PAIR_KEY_LEN);
    m->state[m->n] = state;
    m->slots[s] = (int32_t)m->n++;
    return 0;
}

static void pmap_clear(pmap_t *m) {
    if (m->slots != NULL && m->n) memset(m->slots, 0xff, (m->mask + 1) * sizeof(int32_t));
    m->n = m->nnew = 0;
}

static void pmap_settle(pmap_t *m, uint8_t to) { /* the block's new pairs: committed (PRESENT) or dropped */
    for (size_t i = 0; m->nnew && i < m->n; i++)
        if (m->state[i] == PAIR_NEW) { m->state[i] = to; m->nnew--; }
    m->nnew = 0;
}

/* ---- what the hook uses ------------------------------------------------------------------------- */
static int decode_row(PyObject *row, uint64_t st[RISK_STATE_LEN]) {
    Py_buffer b;
    if (PyObject_GetBuffer(row, &b, PyBUF_SIMPLE) < 0) return -1;
    int ok = b.len == RISK_ROW_LEN;
    if (ok) {
        const uint8_t *p = b.buf;
        for (int i = 0; i < RISK_STATE_LEN; i++, p += 8) {
            uint64_t v = 0;
            for (int k = 7; k >= 0; k--) v = v << 8 | p[k];
            st[i] = v;
        }
    } else {
        PyErr_Format(PyExc_ValueError, "a stored risk state has %zd bytes, not %d", b.len, RISK_ROW_LEN);
    }
    PyBuffer_Release(&b);
    return ok ? 0 : -1;
}

static int no_block(void) {
    PyErr_SetString(PyExc_RuntimeError, "the risk table has no open block (begin() first)");
    return -1;
}

int rt_lookup(RiskTableObject *t, const uint8_t *key, int klen, uint64_t st[RISK_STATE_LEN], uint8_t *has) {
    int32_t i = tmap_find(&t->overlay, key, klen);
    const tent_t *e = i >= 0 && t->overlay.ents[i].live ? &t->overlay.ents[i] : NULL;
    if (e == NULL && (i = tmap_find(&t->committed, key, klen)) >= 0) e = &t->committed.ents[i];
    if (e != NULL) {
        memcpy(st, e->st, sizeof e->st);
        *has = e->has;
        return 0;
    }
    if (t->get_risk == NULL) return no_block();
    PyObject *k = PyBytes_FromStringAndSize((const char *)key, klen);
    if (k == NULL) return -1;
    PyObject *row = PyObject_CallOneArg(t->get_risk, k);
    Py_DECREF(k);
    if (row == NULL) return -1;
    int bad = 0;
    if (row == Py_None) {
        memset(st, 0, RISK_ROW_LEN);
        *has = 0;
    } else {
        bad = decode_row(row, st);
        *has = 1;
    }
    Py_DECREF(row);
    return bad ? -1 : tmap_put(&t->committed, key, klen, st, *has);
}

int rt_overlay_put(RiskTableObject *t, const uint8_t *key, int klen, const uint64_t st[RISK_STATE_LEN]) {
    return tmap_put(&t->overlay, key, klen, st, 1);
}

int rt_seen(RiskTableObject *t, const uint8_t *pk, int *seen) {
    int32_t i = pmap_find(&t->pairs, pk);
    if (i >= 0) {
        *seen = t->pairs.state[i] != PAIR_ABSENT;
        return 0;
    }
    if (t->get_pair == NULL) return no_block();
    PyObject *k = PyBytes_FromStringAndSize((const char *)pk, PAIR_KEY_LEN);
    if (k == NULL) return -1;
    PyObject *row = PyObject_CallOneArg(t->get_pair, k);
    Py_DECREF(k);
    if (row == NULL) return -1;
    *seen = row != Py_None;
    Py_DECREF(row);
    return pmap_insert(&t->pairs, pk, *seen ? PAIR_PRESENT : PAIR_ABSENT);
}

void rt_add_pair(RiskTableObject *t, const uint8_t *pk) {
    int32_t i = pmap_find(&t->pairs, pk);
    if (i >= 0 && t->pairs.state[i] == PAIR_ABSENT) {
        t->pairs.state[i] = PAIR_NEW;
        t->pairs.nnew++;
    }
}

/* ---- the Python type ---------------------------------------------------------------------------- */
static int state_key(PyObject *key, const uint8_t **k, int *klen) {
    if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) < 1 || PyBytes_GET_SIZE(key) > 17) {
        PyErr_SetString(PyExc_TypeError, "a risk key is bytes of 1..17");
        return -1;
    }
    *k = (const uint8_t *)PyBytes_AS_STRING(key);
    *klen = (int)PyBytes_GET_SIZE(key);
    return 0;
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

/* state(key) -> a new list, or None (no history): the open block's view (overlay, committed, store) */
static PyObject *rt_state(PyObject *self, PyObject *key) {
    const uint8_t *k;
    int klen;
    uint64_t st[RISK_STATE_LEN];
    uint8_t has;
    if (state_key(key, &k, &klen) < 0 || rt_lookup((RiskTableObject *)self, k, klen, st, &has) < 0) return NULL;
    if (!has) Py_RETURN_NONE;
    return state_list(st);
}

/* take(key) -> the overlay's state as a new list (removed from the overlay), or None */
static PyObject *rt_take(PyObject *self, PyObject *key) {
    RiskTableObject *t = (RiskTableObject *)self;
    const uint8_t *k;
    int klen;
    if (state_key(key, &k, &klen) < 0) return NULL;
    int32_t i = tmap_find(&t->overlay, k, klen);
    if (i < 0 || !t->overlay.ents[i].live) Py_RETURN_NONE;
    PyObject *list = state_list(t->overlay.ents[i].st);
    if (list != NULL) t->overlay.ents[i].live = 0;
    return list;
}

static PyObject *rt_seen_py(PyObject *self, PyObject *pk) {
    int seen;
    if (!PyBytes_Check(pk) || PyBytes_GET_SIZE(pk) != PAIR_KEY_LEN) {
        PyErr_SetString(PyExc_TypeError, "a pair key is 32 bytes (debit id || credit id)");
        return NULL;
    }
    if (rt_seen((RiskTableObject *)self, (const uint8_t *)PyBytes_AS_STRING(pk), &seen) < 0) return NULL;
    return PyBool_FromLong(seen);
}

static int cmp_tent(const void *a, const void *b) {
    const tent_t *x = *(const tent_t *const *)a, *y = *(const tent_t *const *)b;
    int n = x->klen < y->klen ? x->klen : y->klen, c = memcmp(x->key, y->key, (size_t)n);
    return c ? c : (int)x->klen - (int)y->klen;
}

static PyObject *row_item(const uint8_t *key, Py_ssize_t klen, const uint64_t *st) {
    uint8_t row[RISK_ROW_LEN];
    for (int i = 0; st != NULL && i < RISK_STATE_LEN; i++)
        for (int k = 0; k < 8; k++) row[8 * i + k] = (uint8_t)(st[i] >> (8 * k));
    return Py_BuildValue("(y#y#)", (const char *)key, klen, (const char *)row, st != NULL ? RISK_ROW_LEN : 0);
}

/* rows() -> [(key, 136-byte row)] of the overlay, sorted by key */
static PyObject *rt_rows(PyObject *self, PyObject *unused) {
    (void)unused;
    tmap_t *m = &((RiskTableObject *)self)->overlay;
    const tent_t **order = PyMem_Malloc((m->n + 1) * sizeof *order);
    if (order == NULL) return PyErr_NoMemory();
    size_t n = 0;
    for (size_t i = 0; i < m->n; i++)
        if (m->ents[i].live) order[n++] = &m->ents[i];
    qsort(order, n, sizeof *order, cmp_tent);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out != NULL && i < n; i++) {
        PyObject *item = row_item(order[i]->key, order[i]->klen, order[i]->st);
        if (item == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
    PyMem_Free(order);
    return out;
}

static int cmp_pair(const void *a, const void *b) {
    return memcmp(*(const uint8_t *const *)a, *(const uint8_t *const *)b, PAIR_KEY_LEN);
}

/* pair_rows() -> [(pair key, b"")] of the block's new pairs, sorted */
static PyObject *rt_pair_rows(PyObject *self, PyObject *unused) {
    (void)unused;
    pmap_t *m = &((RiskTableObject *)self)->pairs;
    const uint8_t **order = PyMem_Malloc((m->nnew + 1) * sizeof *order);
    if (order == NULL) return PyErr_NoMemory();
    size_t n = 0;
    for (size_t i = 0; i < m->n && n < m->nnew; i++)
        if (m->state[i] == PAIR_NEW) order[n++] = m->keys[i];
    qsort(order, n, sizeof *order, cmp_pair);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out != NULL && i < n; i++) {
        PyObject *item = row_item(order[i], PAIR_KEY_LEN, NULL);
        if (item == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
    PyMem_Free(order);
    return out;
}

/* prefetch(records) -> how many pairs were looked up: the distinct pairs of these transfer records
 * that are not cached yet, sorted, in one get_pairs(list) call (one cursor walk) */
static PyObject *rt_prefetch(PyObject *self, PyObject *arg) {
    RiskTableObject *t = (RiskTableObject *)self;
    Py_buffer b;
    if (t->get_pairs == NULL) { no_block(); return NULL; }
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    size_t n = (size_t)b.len / 176, m = 0;
    uint8_t *keys = PyMem_Malloc(n * PAIR_KEY_LEN + 1);
    const uint8_t **order = PyMem_Malloc((n + 1) * sizeof *order);
    PyObject *list = NULL, *got = NULL, *out = NULL;
    if (keys == NULL || order == NULL) { PyErr_NoMemory(); goto done; }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *r = (const uint8_t *)b.buf + 176 * i;
        memcpy(keys + PAIR_KEY_LEN * m, r + 16, PAIR_KEY_LEN); /* debit id (16..32) || credit id (32..48) */
        if (pmap_find(&t->pairs, keys + PAIR_KEY_LEN * m) < 0) { order[m] = keys + PAIR_KEY_LEN * m; m++; }
    }
    qsort(order, m, sizeof *order, cmp_pair);
    size_t u = 0;
    for (size_t i = 0; i < m; i++)
        if (u == 0 || memcmp(order[u - 1], order[i], PAIR_KEY_LEN) != 0) order[u++] = order[i];
    if ((list = PyList_New((Py_ssize_t)u)) == NULL) goto done;
    for (size_t i = 0; i < u; i++) {
        PyObject *k = PyBytes_FromStringAndSize((const char *)order[i], PAIR_KEY_LEN);
        if (k == NULL) goto done;
        PyList_SET_ITEM(list, (Py_ssize_t)i, k);
    }
    if (u && (got = PyObject_CallOneArg(t->get_pairs, list)) == NULL) goto done;
    if (u && (!PyList_Check(got) || (size_t)PyList_GET_SIZE(got) != u)) {
        PyErr_SetString(PyExc_TypeError, "get_pairs must return one entry per key");
        goto done;
    }
    for (size_t i = 0; i < u; i++)
        if (pmap_insert(&t->pairs, order[i], PyList_GET_ITEM(got, (Py_ssize_t)i) != Py_None) < 0) goto done;
    out = PyLong_FromSize_t(u);
done:
    Py_XDECREF(list);
    Py_XDECREF(got);
    PyMem_Free(keys);
    PyMem_Free(order);
    PyBuffer_Release(&b);
    return out;
}

static void close_block(RiskTableObject *t) {
    Py_CLEAR(t->get_risk);
    Py_CLEAR(t->get_pair);
    Py_CLEAR(t->get_pairs);
    tmap_clear(&t->overlay);
}

static PyObject *rt_begin(PyObject *self, PyObject *args) {
    RiskTableObject *t = (RiskTableObject *)self;
    PyObject *a, *b, *c;
    if (!PyArg_ParseTuple(args, "OOO", &a, &b, &c)) return NULL;
    close_block(t); /* a block left open by a failure is dropped */
    pmap_settle(&t->pairs, PAIR_ABSENT);
    t->get_risk = Py_NewRef(a);
    t->get_pair = Py_NewRef(b);
    t->get_pairs = Py_NewRef(c);
    Py_RETURN_NONE;
}

static void forget_all(RiskTableObject *t) {
    close_block(t);
    tmap_clear(&t->committed);
    pmap_clear(&t->pairs);
}

static PyObject *rt_forget(PyObject *self, PyObject *unused) {
    (void)unused;
    forget_all((RiskTableObject *)self);
    Py_RETURN_NONE;
}

/* the Python paths' new pairs (SideState.pairs) are committed now: present (a cached lookup said absent) */
static int commit_pairs(RiskTableObject *t, PyObject *pairs) {
    Py_ssize_t pos = 0;
    PyObject *pk;
    Py_hash_t hash;
    while (_PySet_NextEntry(pairs, &pos, &pk, &hash)) {
        if (!PyBytes_Check(pk) || PyBytes_GET_SIZE(pk) != PAIR_KEY_LEN) {
            PyErr_SetString(PyExc_TypeError, "a pair key is 32 bytes (debit id || credit id)");
            return -1;
        }
        const uint8_t *k = (const uint8_t *)PyBytes_AS_STRING(pk);
        int32_t i = pmap_find(&t->pairs, k);
        if (i >= 0) t->pairs.state[i] = PAIR_PRESENT; /* (a new pair here is in the table, never in both) */
        else if (pmap_insert(&t->pairs, k, PAIR_PRESENT) < 0) return -1;
    }
    return 0;
}

/* commit(risk, pairs): the block committed; its overlay and the Python dict's states, its new pairs and
 * the Python set's become committed */
static PyObject *rt_commit(PyObject *self, PyObject *args) {
    RiskTableObject *t = (RiskTableObject *)self;
    PyObject *risk, *pairs;
    if (!PyArg_ParseTuple(args, "O!O!", &PyDict_Type, &risk, &PySet_Type, &pairs)) return NULL;
    for (size_t i = 0; i < t->overlay.n; i++) {
        const tent_t *e = &t->overlay.ents[i];
        if (e->live && tmap_put(&t->committed, e->key, e->klen, e->st, 1) < 0) {
            forget_all(t);
            return NULL;
        }
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(risk, &pos, &key, &value)) {
        const uint8_t *k;
        int klen;
        uint64_t st[RISK_STATE_LEN];
        if (state_key(key, &k, &klen) < 0 || risk_read_list(value, st) < 0 ||
            tmap_put(&t->committed, k, klen, st, 1) < 0) {
            forget_all(t); /* half-published: forget every cached state */
            return NULL;
        }
    }
    pmap_settle(&t->pairs, PAIR_PRESENT);
    if (commit_pairs(t, pairs) < 0) {
        forget_all(t);
        return NULL;
    }
    close_block(t);
    if (t->committed.n > t->max_states) tmap_keep_newest(&t->committed, t->max_states / 2);
    if (t->pairs.n > t->max_pairs) pmap_clear(&t->pairs);
    Py_RETURN_NONE;
}

static PyObject *rt_abort(PyObject *self, PyObject *unused) {
    (void)unused;
    RiskTableObject *t = (RiskTableObject *)self;
    close_block(t);
    pmap_settle(&t->pairs, PAIR_ABSENT);
    Py_RETURN_NONE;
}

static PyObject *rt_sizes(PyObject *self, PyObject *unused) {
    (void)unused;
    RiskTableObject *t = (RiskTableObject *)self;
    size_t live = 0;
    for (size_t i = 0; i < t->overlay.n; i++) live += t->overlay.ents[i].live;
    return Py_BuildValue("(nnnn)", (Py_ssize_t)t->committed.n, (Py_ssize_t)live, (Py_ssize_t)t->pairs.n,
                         (Py_ssize_t)t->pairs.nnew);
}

static PyObject *rt_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Py_ssize_t max_states, max_pairs;
    if (kw != NULL && PyDict_GET_SIZE(kw)) { PyErr_SetString(PyExc_TypeError, "RiskTable takes no keywords"); return NULL; }
    if (!PyArg_ParseTuple(args, "nn", &max_states, &max_pairs)) return NULL;
    if (max_states < 2 || max_pairs < 2) { PyErr_SetString(PyExc_ValueError, "bounds must be at least 2"); return NULL; }
    RiskTableObject *t = (RiskTableObject *)type->tp_alloc(type, 0);
    if (t != NULL) { t->max_states = (size_t)max_states; t->max_pairs = (size_t)max_pairs; }
    return (PyObject *)t;
}

static void rt_dealloc(PyObject *self) {
    RiskTableObject *t = (RiskTableObject *)self;
    close_block(t);
    tmap_free(&t->committed);
    tmap_free(&t->overlay);
    PyMem_Free(t->pairs.keys);
    PyMem_Free(t->pairs.state);
    PyMem_Free(t->pairs.slots);
    Py_TYPE(self)->tp_free(self);
}

static PyMethodDef RT_METHODS[] = {
    {"begin", rt_begin, METH_VARARGS, "begin(get_risk, get_pair, get_pairs): open a block over its write transaction."},
    {"state", rt_state, METH_O, "state(key) -> a new list or None: the open block's view of a risk state."},
    {"take", rt_take, METH_O, "take(key) -> the overlay's state as a list (moved out to Python) or None."},
    {"seen", rt_seen_py, METH_O, "seen(pair key) -> whether the pair is new in this block or committed."},
    {"rows", rt_rows, METH_NOARGS, "rows() -> sorted (key, row) of the block's overlay."},
    {"pair_rows", rt_pair_rows, METH_NOARGS, "pair_rows() -> sorted (pair key, b'') of the block's new pairs."},
    {"prefetch", rt_prefetch, METH_O, "prefetch(records) -> pairs looked up in one sorted get_pairs call."},
    {"commit", rt_commit, METH_VARARGS, "commit(risk, pairs): the block committed; publish its states and pairs."},
    {"abort", rt_abort, METH_NOARGS, "abort(): the block failed; drop its overlay and new pairs."},
    {"forget", rt_forget, METH_NOARGS, "forget(): drop every cached state and pair."},
    {"sizes", rt_sizes, METH_NOARGS, "sizes() -> (committed states, overlay states, cached pairs, new pairs)."},
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
