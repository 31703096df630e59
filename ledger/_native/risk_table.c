/* sovledger RiskTable: risk states and payer-payee pairs kept in C across blocks, for the C rules hook
 * (rules.c) and ledger/apply/scratch.py (Committed.table, SideState).
 *
 * states  the committed state of every risk key read or written lately: a cache of the store's `risk`
 *         table (a key the store lacks is cached as "no history"). The open block changes a state in
 *         place and keeps its committed value in `saved` (first change only), so the block's view is
 *         one lookup; commit() forgets the saved values, abort() puts them back. An entry's change
 *         mark is the block's 8-bit epoch, so a commit does not touch the changed entries again.
 *         Bounded: after a commit, above max_states entries the oldest-inserted half is dropped; a
 *         miss reads the store, so results never depend on the bound. 160 bytes per entry + 16 bytes
 *         of index (load <= 1/2), + 144 bytes per state the open block changed.
 *         A key's in-block state lives either here (changed by the C hook) or in the Python dict
 *         SideState.risk, never both: take() hands it to Python (a linked chain's undo log, the
 *         reference create_transfer) and puts the committed value back here.
 * pairs   committed pair lookups (absent / present) and the block's pairs: new (looked up absent because
 *         a rule or Python asked, then paid) or touched (paid; the committed state never asked for, so
 *         never looked up). A touched pair reads as seen (paid earlier in this block). Seal inserts the
 *         new ones and puts the touched ones with no-overwrite (a committed pair is left as it is);
 *         commit() makes both present, abort() makes new ones absent and touched ones unknown again.
 *         Bounded by max_pairs (all dropped after a commit above it). 33 bytes per entry + 16 bytes of
 *         index.
 *
 * journal the table's half of the risk journal (ledger/risk_log.py, risk_journal.c): the states and pairs of
 *         committed blocks not folded yet are pinned (tent_t.pinned, PAIR_PIN): eviction keeps them, since
 *         the store's `risk` / `risk_pairs` do not hold them yet; a fold unpins all. A pair paid in the open
 *         block is new, touched or paid (committed and paid again): all three are in the block's list
 *         (pmap_t.blk) and in its journal row; commit makes them present and pinned.
 * begin(get_risk, get_pair, get_risks) opens a block over the write transaction's readers (one key; a
 * list of risk keys); commit(risk, pairs) publishes the block: its changes stay, the Python dict's
 * states are merged in, its new and touched pairs (the table's and the Python set's) become present;
 * abort() takes the block's changes and pairs back. prefetch(records, tracks) reads a segment's
 * uncached risk keys in one call (pairs are not prefetched: a transfer's pair is looked up only when a
 * rule reads it). rows() / pair_rows() / touched_pair_rows() give the block's rows, sorted by key,
 * packed as the store keeps them. */
#include "risk_table.h"

#include <stdlib.h>
#include <string.h>

#define EMPTY RT_EMPTY

kh_key_t RT_KEY;

/* open addressing shared by both maps: slots of (hash tag << 32 | index), a key's first slot picked by its
 * tag (rt_pos); match(i) compares entry i */
#define SLOT_TAG(h) ((h) & 0xFFFFFFFF00000000ULL)
#define FIND(m, h, MATCH)                                                                                   \
    do {                                                                                                  \
        if ((m)->slots == NULL) return -1;                                                                \
        for (size_t s_ = rt_pos(h, (m)->mask); (m)->slots[s_] != EMPTY; s_ = (s_ + 1) & (m)->mask) {       \
            uint64_t v_ = (m)->slots[s_];                                                                 \
            int32_t i_ = (int32_t)(uint32_t)v_;                                                           \
            if (SLOT_TAG(v_) == SLOT_TAG(h) && (MATCH)) return i_;                                        \
        }                                                                                                 \
        return -1;                                                                                        \
    } while (0)

static void slot_add(uint64_t *slots, size_t mask, uint64_t h, size_t i) {
    size_t s = rt_pos(h, mask);
    while (slots[s] != EMPTY) s = (s + 1) & mask;
    slots[s] = SLOT_TAG(h) | (uint64_t)i;
}

static uint64_t *new_slots(size_t count) {
    uint64_t *slots = PyMem_Malloc(count * sizeof(uint64_t));
    if (slots == NULL) PyErr_NoMemory();
    else memset(slots, 0xff, count * sizeof(uint64_t));
    return slots;
}

/* ---- the state map ------------------------------------------------------------------------------ */
int32_t tmap_find(const tmap_t *m, const uint8_t *key, int klen, uint64_t h) {
    FIND(m, h, m->ents[i_].klen == klen && skey_eq(m->ents[i_].key, key, klen));
}

static void tmap_index(tmap_t *m) { /* rebuild the slots over ents[0..n) */
    memset(m->slots, 0xff, (m->mask + 1) * sizeof(uint64_t));
    for (size_t i = 0; i < m->n; i++) slot_add(m->slots, m->mask, rt_hash(m->ents[i].key, m->ents[i].klen), i);
}

/* the capacity for `need` entries, doubling from `cap` (or `first`); 0 (MemoryError set) beyond the slot range */
static size_t grown_cap(size_t cap, size_t need, size_t first) {
    cap = cap ? cap : first;
    while (cap < need) cap *= 2;
    if (cap > INT32_MAX / 2) { PyErr_NoMemory(); return 0; }
    return cap;
}

/* slots for `cap` entries (twice as many, open addressing) holding the old slots' entries: re-added from
 * their tags (rt_pos), in slot order, so the new slots fill in two forward sweeps; no key is read */
static int grow_slots(uint64_t **slots, size_t *mask, size_t cap) {
    uint64_t *fresh = new_slots(2 * cap), *old = *slots;
    if (fresh == NULL) return -1;
    size_t fmask = 2 * cap - 1;
    for (size_t s = 0; old != NULL && s <= *mask; s++)
        if (old[s] != EMPTY) slot_add(fresh, fmask, old[s], (uint32_t)old[s]);
    PyMem_Free(old);
    *slots = fresh;
    *mask = fmask;
    return 0;
}

static int tmap_reserve(tmap_t *m, size_t need) {
    if (need <= m->cap) return 0;
    size_t cap = grown_cap(m->cap, need, 1024);
    if (cap == 0) return -1;
    tent_t *ents = PyMem_Realloc(m->ents, cap * sizeof(tent_t));
    if (ents == NULL) { PyErr_NoMemory(); return -1; }
    m->ents = ents;
    if (grow_slots(&m->slots, &m->mask, cap) < 0) return -1;
    m->cap = cap;
    return 0;
}

/* a new entry for key (not present): its index, -1 on no memory */
int32_t tmap_insert(tmap_t *m, const uint8_t *key, int klen, uint64_t h) {
    if (tmap_reserve(m, m->n + 1) < 0) return -1;
    tent_t *e = &m->ents[m->n];
    memset(e, 0, offsetof(tent_t, st));
    memcpy(e->key, key, (size_t)klen);
    e->klen = (uint8_t)klen;
    slot_add(m->slots, m->mask, h, m->n);
    return (int32_t)m->n++;
}

void tmap_clear(tmap_t *m) {
    if (m->slots != NULL && m->n) memset(m->slots, 0xff, (m->mask + 1) * sizeof(uint64_t));
    m->n = 0;
}

/* drop the oldest-inserted entries (none changed) down to `keep`, never a pinned one (journaled, not folded:
 * the store's `risk` row is older); pinned entries beyond `keep` stay */
void tmap_keep_newest(tmap_t *m, size_t keep) {
    if (m->n <= keep) return;
    size_t pinned = 0;
    for (size_t i = 0; i < m->n; i++) pinned += m->ents[i].pinned;
    size_t unpinned = m->n - pinned, allow = keep > pinned ? keep - pinned : 0;
    size_t drop = unpinned > allow ? unpinned - allow : 0, j = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (!m->ents[i].pinned && drop) { drop--; continue; }
        if (j != i) m->ents[j] = m->ents[i];
        j++;
    }
    m->n = j;
    tmap_index(m);
}

/* key's committed state (merged from Python after a commit) */
int tmap_put(tmap_t *m, const uint8_t *key, int klen, const uint64_t *st) {
    uint64_t h = rt_hash(key, klen);
    int32_t i = tmap_find(m, key, klen, h);
    if (i < 0 && (i = tmap_insert(m, key, klen, h)) < 0) return -1;
    memcpy(m->ents[i].st, st, sizeof m->ents[i].st);
    m->ents[i].has = 1;
    m->ents[i].pinned = 1; /* a committed block's state: journaled until the next fold */
    return 0;
}

/* ---- the pair map ------------------------------------------------------------------------------- */
int32_t pmap_find(const pmap_t *m, const uint8_t *pk, uint64_t h) {
    FIND(m, h, pk_eq(m->keys[i_], pk));
}

static int pmap_reserve(pmap_t *m, size_t need) {
    if (need <= m->cap) return 0;
    size_t cap = grown_cap(m->cap, need, 4096);
    if (cap == 0) return -1;
    void *keys = PyMem_Realloc(m->keys, cap * PAIR_KEY_LEN);
    if (keys == NULL) { PyErr_NoMemory(); return -1; }
    m->keys = keys;
    uint8_t *state = PyMem_Realloc(m->state, cap);
    if (state == NULL) { PyErr_NoMemory(); return -1; }
    m->state = state;
    int32_t *blk = PyMem_Realloc(m->blk, cap * sizeof(int32_t));
    if (blk == NULL) { PyErr_NoMemory(); return -1; }
    m->blk = blk;
    if (grow_slots(&m->slots, &m->mask, cap) < 0) return -1;
    m->cap = cap;
    return 0;
}

/* a new entry for pk at slot s (empty: where a probe for pk ended) */
static int32_t pmap_put_at(pmap_t *m, size_t s, const uint8_t *pk, uint64_t h, uint8_t state) {
    memcpy(m->keys[m->n], pk, PAIR_KEY_LEN);
    m->state[m->n] = state;
    m->slots[s] = SLOT_TAG(h) | (uint64_t)m->n;
    return (int32_t)m->n++;
}

int32_t pmap_insert(pmap_t *m, const uint8_t *pk, uint64_t h, uint8_t state) {
    if (pmap_reserve(m, m->n + 1) < 0) return -1;
    size_t s = rt_pos(h, m->mask);
    while (m->slots[s] != EMPTY) s = (s + 1) & m->mask;
    return pmap_put_at(m, s, pk, h, state);
}

/* pk's entry (*at: -1 when absent, then *s is the empty slot it would take): one probe for find-or-insert;
 * room for one more entry is made first, so *s stays valid for pmap_put_at */
static int pmap_probe(pmap_t *m, const uint8_t *pk, uint64_t h, int32_t *at, size_t *s) {
    if (m->n + 1 > m->cap && pmap_reserve(m, m->n + 1) < 0) return -1;
    for (size_t k = rt_pos(h, m->mask);; k = (k + 1) & m->mask) {
        uint64_t v = m->slots[k];
        if (v == EMPTY) { *at = -1; *s = k; return 0; }
        if (SLOT_TAG(v) == SLOT_TAG(h) && pk_eq(m->keys[(uint32_t)v], pk)) { *at = (int32_t)(uint32_t)v; return 0; }
    }
}

void pmap_clear(pmap_t *m) {
    if (m->slots != NULL && m->n) memset(m->slots, 0xff, (m->mask + 1) * sizeof(uint64_t));
    m->n = m->nnew = m->ntouched = m->nblk = 0;
}

/* entry i becomes new or touched in the open block (from absent / unknown / just inserted: once per block) */
static void pmap_mark(pmap_t *m, int32_t i, uint8_t state) { /* blk has room: an entry is in it at most once */
    m->blk[m->nblk++] = i;
    m->state[i] = (uint8_t)((m->state[i] & PAIR_PIN) | state);
    if (state == PAIR_NEW) m->nnew++;
    else if (state == PAIR_TOUCHED) m->ntouched++;
}

/* the block's paid pairs: committed (present, pinned: journaled), or taken back (new: absent, touched:
 * unknown, paid: present as before) */
void pmap_settle(pmap_t *m, int keep) {
    for (size_t k = 0; k < m->nblk; k++) {
        int32_t i = m->blk[k];
        uint8_t s = m->state[i] & 0x7F, pin = m->state[i] & PAIR_PIN;
        if (keep) m->state[i] = PAIR_PRESENT | PAIR_PIN;
        else if (s == PAIR_NEW) m->state[i] = PAIR_ABSENT;
        else if (s == PAIR_TOUCHED) m->state[i] = PAIR_UNKNOWN;
        else if (s == PAIR_PAID) m->state[i] = PAIR_PRESENT | pin;
    }
    m->nnew = m->ntouched = m->nblk = 0;
}

/* above the bound: drop every pair but the pinned ones (journaled, not in risk_pairs yet) */
void pmap_keep_pinned(pmap_t *m) {
    size_t j = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (!(m->state[i] & PAIR_PIN)) continue;
        if (j != i) {
            memcpy(m->keys[j], m->keys[i], PAIR_KEY_LEN);
            m->state[j] = m->state[i];
        }
        j++;
    }
    m->n = j;
    if (m->slots != NULL) memset(m->slots, 0xff, (m->mask + 1) * sizeof(uint64_t));
    for (size_t i = 0; i < m->n; i++) slot_add(m->slots, m->mask, rt_hash(m->keys[i], PAIR_KEY_LEN), i);
}

/* ---- what the hook uses ------------------------------------------------------------------------- */
int rt_decode_row(PyObject *row, uint64_t st[RISK_STATE_LEN]) {
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

int rt_no_block(void) {
    PyErr_SetString(PyExc_RuntimeError, "the risk table has no open block (begin() first)");
    return -1;
}

int rt_entry(RiskTableObject *t, const uint8_t *key, int klen, uint64_t h, int32_t *idx) {
    int32_t i = tmap_find(&t->states, key, klen, h);
    if (i < 0 || t->states.ents[i].has == HAS_UNKNOWN) { /* the store's row, cached (the block writes rows at seal) */
        uint64_t row_st[RISK_STATE_LEN];
        uint8_t row_has = 0;
        if (t->get_risk == NULL) return rt_no_block();
        PyObject *k = PyBytes_FromStringAndSize((const char *)key, klen);
        PyObject *row = k != NULL ? PyObject_CallOneArg(t->get_risk, k) : NULL;
        Py_XDECREF(k);
        if (row == NULL) return -1;
        int bad = 0;
        if (row == Py_None) memset(row_st, 0, sizeof row_st);
        else { bad = rt_decode_row(row, row_st); row_has = 1; }
        Py_DECREF(row);
        if (bad || (i < 0 && (i = tmap_insert(&t->states, key, klen, h)) < 0)) return -1;
        memcpy(t->states.ents[i].st, row_st, sizeof row_st);
        t->states.ents[i].has = row_has;
    }
    *idx = i;
    return 0;
}

int rt_lookup(RiskTableObject *t, const uint8_t *key, int klen, uint64_t st[RISK_STATE_LEN], uint8_t *has,
              int32_t *idx) {
    if (rt_entry(t, key, klen, rt_hash(key, klen), idx) < 0) return -1;
    const tent_t *e = &t->states.ents[*idx];
    memcpy(st, e->st, sizeof e->st);
    *has = e->has;
    return 0;
}

int rt_change(RiskTableObject *t, int32_t idx) {
    tent_t *e = &t->states.ents[idx];
    if (e->changed != t->epoch) { /* the first change in this block: keep the committed value */
        if (t->nsaved == t->capsaved) {
            size_t cap = t->capsaved ? 2 * t->capsaved : 1024;
            tsave_t *saved = PyMem_Realloc(t->saved, cap * sizeof(tsave_t));
            if (saved == NULL) { PyErr_NoMemory(); return -1; }
            t->saved = saved;
            t->capsaved = cap;
        }
        tsave_t *s = &t->saved[t->nsaved];
        s->idx = idx;
        s->has = e->has;
        memcpy(s->st, e->st, sizeof s->st);
        e->saved = (uint32_t)t->nsaved++;
        e->changed = t->epoch;
    }
    e->has = 1;
    return 0;
}

int rt_seen(RiskTableObject *t, const uint8_t *pk, int *seen, int32_t *idx) {
    return rt_seen_h(t, pk, rt_hash(pk, PAIR_KEY_LEN), seen, idx);
}

int rt_seen_h(RiskTableObject *t, const uint8_t *pk, uint64_t h, int *seen, int32_t *idx) {
    int32_t i = pmap_find(&t->pairs, pk, h);
    if (i < 0 || PSTATE(&t->pairs, i) == PAIR_UNKNOWN) {
        if (t->get_pair == NULL) return rt_no_block();
        PyObject *k = PyBytes_FromStringAndSize((const char *)pk, PAIR_KEY_LEN);
        PyObject *row = k != NULL ? PyObject_CallOneArg(t->get_pair, k) : NULL;
        Py_XDECREF(k);
        if (row == NULL) return -1;
        uint8_t state = row != Py_None ? PAIR_PRESENT : PAIR_ABSENT;
        Py_DECREF(row);
        if (i >= 0) t->pairs.state[i] = state;
        else if ((i = pmap_insert(&t->pairs, pk, h, state)) < 0) return -1;
    }
    *seen = PSTATE(&t->pairs, i) != PAIR_ABSENT;
    *idx = i;
    return 0;
}

void rt_add_pair(RiskTableObject *t, int32_t idx) {
    uint8_t s = PSTATE(&t->pairs, idx);
    if (s == PAIR_ABSENT) pmap_mark(&t->pairs, idx, PAIR_NEW);
    else if (s == PAIR_PRESENT) pmap_mark(&t->pairs, idx, PAIR_PAID); /* journaled again with this block */
}

int rt_touch(RiskTableObject *t, const uint8_t *pk, uint64_t h) {
    if (t->get_pair == NULL) return rt_no_block();
    int32_t i;
    size_t s;
    if (pmap_probe(&t->pairs, pk, h, &i, &s) < 0) return -1;
    if (i < 0) {
        i = pmap_put_at(&t->pairs, s, pk, h, PAIR_UNKNOWN);
        pmap_mark(&t->pairs, i, PAIR_TOUCHED);
    } else if (PSTATE(&t->pairs, i) == PAIR_UNKNOWN) {
        pmap_mark(&t->pairs, i, PAIR_TOUCHED);
    } else {
        rt_add_pair(t, i); /* absent: new; present: paid; new, touched, paid: nothing to do */
    }
    return 0;
}

/* the block's changes: kept (commit) or put back (abort) */
void rt_settle_states(RiskTableObject *t, int keep) {
    for (size_t k = 0; !keep && k < t->nsaved; k++) {
        const tsave_t *s = &t->saved[k];
        if (s->idx < 0) continue;
        tent_t *e = &t->states.ents[s->idx];
        memcpy(e->st, s->st, sizeof e->st);
        e->has = s->has;
    }
    t->nsaved = 0;
    if (++t->epoch == 0) { /* wrapped: no entry may keep a stale mark that equals a future epoch */
        for (size_t i = 0; i < t->states.n; i++) t->states.ents[i].changed = 0;
        t->epoch = 1;
    }
}


/* the committed block's changed states are journaled: pinned until the next fold */
void rt_pin_block(RiskTableObject *t) {
    for (size_t k = 0; k < t->nsaved; k++)
        if (t->saved[k].idx >= 0) t->states.ents[t->saved[k].idx].pinned = 1;
}

/* a fold wrote every journaled state and pair into `risk` / `risk_pairs`: nothing is pinned any more */
void rt_unpin_all(RiskTableObject *t) {
    for (size_t i = 0; i < t->states.n; i++) t->states.ents[i].pinned = 0;
    for (size_t i = 0; i < t->pairs.n; i++) t->pairs.state[i] &= 0x7F;
}

/* the longest probe (slots read by a lookup) of each map: (states, pairs); tests of the keyed hash */
void rt_max_probes(const RiskTableObject *t, size_t *states, size_t *pairs) {
    const uint64_t *slots[2] = {t->states.slots, t->pairs.slots};
    size_t masks[2] = {t->states.mask, t->pairs.mask}, worst[2] = {0, 0};
    for (int m = 0; m < 2; m++)
        for (size_t s = 0; slots[m] != NULL && s <= masks[m]; s++)
            if (slots[m][s] != EMPTY) {
                size_t d = ((s - rt_pos(slots[m][s], masks[m])) & masks[m]) + 1;
                if (d > worst[m]) worst[m] = d;
            }
    *states = worst[0];
    *pairs = worst[1];
}
