/* sovledger risk states and payer-payee pairs kept in C across blocks (risk_table.c): what the C rules
 * hook (rules.c) shares with the RiskTable type. */
#ifndef SOVLEDGER_RISK_TABLE_H
#define SOVLEDGER_RISK_TABLE_H
#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "keyed_hash.h"
#include "risk_core.h"

#define RISK_ROW_LEN (8 * RISK_STATE_LEN) /* ledger/risk.py RISK_STRUCT: 17 x u64 little endian */
#define PAIR_KEY_LEN 32                   /* debit id || credit id */
#define RT_EMPTY UINT64_MAX               /* a free slot */

/* a cache prefetch whose address stays live: the empty asm stops GCC 12 from dropping a __builtin_prefetch
 * whose address is loaded from memory behind a branch (rules.c, risk_journal.c) */
#define PREFETCH(p)                                                                                          \
    do {                                                                                                    \
        const void *p_ = (p);                                                                               \
        __asm__ volatile("" : : "r"(p_));                                                                   \
        __builtin_prefetch(p_);                                                                             \
    } while (0)

typedef struct { /* one risk state (168 bytes) */
    uint8_t key[17], klen;
    uint8_t has;     /* HAS_NONE: no history (the store has no row); HAS_UNKNOWN: not read yet */
    uint8_t changed; /* == the table's epoch: changed in the open block, its committed state is saved[saved] */
    uint8_t pinned;  /* journaled (risk_log), not folded into `risk` yet: never evicted */
    uint32_t saved;
    uint64_t st[RISK_STATE_LEN]; /* the open block's view: committed, or as the block changed it */
} tent_t;

typedef struct { /* a state's committed value, kept while the open block has changed it (144 bytes) */
    int32_t idx; /* the entry, or -1: handed to Python (take) */
    uint8_t has;
    uint64_t st[RISK_STATE_LEN];
} tsave_t;

typedef struct { /* keys in insertion order; open addressing over them, slot = hash tag << 32 | index */
    tent_t *ents;
    size_t n, cap;
    uint64_t *slots;
    size_t mask;
} tmap_t;

/* absent / present: a committed lookup; new: looked up absent, then paid in the open block; touched: paid in
 * the open block, committed state not looked up; paid: present and paid again in the open block; unknown: not
 * known (a touched pair of an aborted block). PAIR_PIN on top: committed by a journaled block (risk_log, not
 * folded into risk_pairs yet), never evicted. */
enum { PAIR_ABSENT = 0, PAIR_PRESENT = 1, PAIR_NEW = 2, PAIR_UNKNOWN = 3, PAIR_TOUCHED = 4, PAIR_PAID = 5 };
#define PAIR_PIN 0x80
#define PSTATE(m, i) ((m)->state[i] & 0x7F)
enum { HAS_NONE = 0, HAS_ROW = 1, HAS_UNKNOWN = 2 };                       /* tent_t.has */

typedef struct { /* payer-payee pairs: a committed lookup (absent / present), new or touched in the open block */
    uint8_t (*keys)[PAIR_KEY_LEN];
    uint8_t *state;
    size_t n, cap, nnew, ntouched;
    uint64_t *slots;
    size_t mask;
    int32_t *blk;     /* the open block's new and touched pairs (indexes, each once; room for cap): seal and settle
                         read only these */
    size_t nblk;
} pmap_t;

typedef struct {
    PyObject_HEAD
    tmap_t states;    /* committed states (a cache of the store's `risk` rows, absent rows too), bounded;
                         the open block's changes are made in place, the committed values kept in saved */
    tsave_t *saved;   /* the entries the open block changed, in first-change order */
    size_t nsaved, capsaved;
    uint8_t epoch;    /* the open block's mark (1..255; a commit or abort moves on: no sweep of the entries) */
    pmap_t pairs;     /* committed pair lookups and the open block's new pairs, bounded */
    size_t max_states, max_pairs;
    PyObject *get_risk, *get_pair;    /* the open block's store readers (one key), NULL between blocks */
    PyObject *get_risks;              /* (a sorted list of risk keys) */
    void *scratch;                    /* the journal row's and the fold's sort room, reused (risk_journal.c) */
    size_t scratch_cap;
} RiskTableObject;

extern PyTypeObject RiskTableType;

/* a key's 64-bit hash (both maps; low bits pick the slot, the high 32 bits are the slot's tag), keyed once
 * per process (keyed_hash.h: a PSP cannot compute ids whose keys share a probe chain); inline: the hook
 * hashes three or four keys per transfer */
extern kh_key_t RT_KEY; /* risk_table.c; set at import (risk.c) */
static inline uint64_t rt_hash(const uint8_t *k, int n) { return kh_bytes(&RT_KEY, k, n); }

/* a key's first slot: from the hash's high 32 bits, which a slot keeps as its tag, so a growing map
 * re-adds its slots without hashing or reading a key again (risk_table.c) */
static inline size_t rt_pos(uint64_t h, size_t mask) { return (size_t)(h >> 32) & mask; }

/* two pair keys equal (four 8-byte compares, no memcmp call) */
static inline int pk_eq(const uint8_t *a, const uint8_t *b) {
    uint64_t x[4], y[4];
    memcpy(x, a, PAIR_KEY_LEN);
    memcpy(y, b, PAIR_KEY_LEN);
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/* bytewise order of two pair keys (memcmp's sign) from four big-endian word compares */
static inline int pk_cmp(const uint8_t *a, const uint8_t *b) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (int i = 0; i < PAIR_KEY_LEN; i += 8) {
        uint64_t x = __builtin_bswap64(kh_rd64(a + i)), y = __builtin_bswap64(kh_rd64(b + i));
        if (x != y) return x < y ? -1 : 1;
    }
    return 0;
#else
    int c = memcmp(a, b, PAIR_KEY_LEN);
    return (c > 0) - (c < 0);
#endif
}

/* whether n sorted pair keys at `pairs` hold pk (binary search: a journal row's pairs, a run's chunk) */
static inline int pairs_have(const uint8_t *pairs, size_t n, const uint8_t *pk) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = pk_cmp(pairs + mid * PAIR_KEY_LEN, pk);
        if (c == 0) return 1;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

typedef struct { /* a key in sortable form (risk_table_type.c sort_keys) */
    uint64_t w[4]; /* the key big endian, zero padded; a state key's length in the last byte of w[2] */
    const uint8_t *key;
} skey_t;
void sort_keys(skey_t *a, skey_t *tmp, size_t n);

/* a key's sort form: a pair key (32 bytes) or a state key (1..17 bytes, its length in byte 23: a shorter key
 * that is a prefix sorts first). A state key is read as three whole words and the bytes past its length
 * masked off, so every caller's state key must be followed by at least 7 readable bytes (a row's state, the
 * rest of a tent_t): no variable-length copy */
static inline void skey_of(skey_t *s, const uint8_t *key, int klen) {
    uint64_t w[4];
    memcpy(w, key, 24);
    if (klen == PAIR_KEY_LEN) {
        memcpy(&w[3], key + 24, 8);
    } else {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        for (int i = 0; i < 3; i++) {
            int valid = klen - 8 * i;
            if (valid < 8) w[i] = valid <= 0 ? 0 : w[i] & ((1ULL << (8 * valid)) - 1);
        }
        w[2] |= (uint64_t)klen << 56;
#else
        uint8_t buf[24] = {0};
        memcpy(buf, key, (size_t)klen);
        buf[23] = (uint8_t)klen;
        memcpy(w, buf, 24);
#endif
        w[3] = 0;
    }
    for (int i = 0; i < 4; i++) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        s->w[i] = __builtin_bswap64(w[i]);
#else
        s->w[i] = w[i];
#endif
    }
    s->key = key;
}

/* two sort keys of the same key */
static inline int skey_same(const skey_t *a, const skey_t *b) {
    return ((a->w[0] ^ b->w[0]) | (a->w[1] ^ b->w[1]) | (a->w[2] ^ b->w[2]) | (a->w[3] ^ b->w[3])) == 0;
}
/* the risk journal (risk_journal.c): RiskTable methods */
PyObject *rt_journal(PyObject *self, PyObject *args);
PyObject *rt_load(PyObject *self, PyObject *values);
PyObject *rt_fold(PyObject *self, PyObject *values);
/* and module functions: one key's journaled state / pair without an overlay (ledger/dry_run.py) */
PyObject *journal_state(PyObject *module, PyObject *args);
PyObject *journal_has_pair(PyObject *module, PyObject *args);
/* pair runs (pair_runs.c, ledger/pair_runs.py): the merge of two runs, the per-run filters */
PyObject *pair_merge(PyObject *module, PyObject *args);
PyObject *pair_filter_hits(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *pair_chunk_has(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
int pair_runs_add_type(PyObject *module);

/* the state of key as the open block sees it (its changes, else committed: cached, else the store) and
 * its entry's index for rt_write */
int rt_lookup(RiskTableObject *t, const uint8_t *key, int klen, uint64_t st[RISK_STATE_LEN], uint8_t *has,
              int32_t *idx);
/* the entry of key (hash h = rt_hash(key, klen)) as the open block sees it, read from the store when not
 * cached: the C hook works on states[idx].st in place (valid until the next insert moves the entries) */
int rt_entry(RiskTableObject *t, const uint8_t *key, int klen, uint64_t h, int32_t *idx);
/* the entry is about to change in the open block: its committed value saved on the first change; has = 1 */
int rt_change(RiskTableObject *t, int32_t idx);
/* whether the pair was seen: new or touched in this block, or committed (a store lookup, cached); its index.
 * rt_seen_h: the same with the pair key's hash h = rt_hash(pk, PAIR_KEY_LEN) known */
int rt_seen(RiskTableObject *t, const uint8_t *pk, int *seen, int32_t *idx);
int rt_seen_h(RiskTableObject *t, const uint8_t *pk, uint64_t h, int *seen, int32_t *idx);
/* a pair rt_seen looked up is paid in this block (unseen: new; committed: paid) */
void rt_add_pair(RiskTableObject *t, int32_t idx);
/* a successful transfer's pair (hash h), without a store lookup: new (known absent) or touched (committed
 * state unknown) */
int rt_touch(RiskTableObject *t, const uint8_t *pk, uint64_t h);
int risk_table_add_type(PyObject *module);

/* the maps, for risk_table_type.c (the Python type) */
int32_t tmap_find(const tmap_t *m, const uint8_t *key, int klen, uint64_t h);
int32_t tmap_insert(tmap_t *m, const uint8_t *key, int klen, uint64_t h);
int rt_decode_row(PyObject *row, uint64_t st[RISK_STATE_LEN]);
int tmap_put(tmap_t *m, const uint8_t *key, int klen, const uint64_t *st);
void tmap_clear(tmap_t *m);
void tmap_keep_newest(tmap_t *m, size_t keep);
int32_t pmap_find(const pmap_t *m, const uint8_t *pk, uint64_t h);
int32_t pmap_insert(pmap_t *m, const uint8_t *pk, uint64_t h, uint8_t state);
void pmap_clear(pmap_t *m);
void pmap_settle(pmap_t *m, int keep);
void pmap_keep_pinned(pmap_t *m);
void rt_settle_states(RiskTableObject *t, int keep);
void rt_pin_block(RiskTableObject *t);
void rt_unpin_all(RiskTableObject *t);
int rt_no_block(void);
void rt_max_probes(const RiskTableObject *t, size_t *states, size_t *pairs);
/* two state keys of klen bytes equal: an account's (17 bytes) in three compares, a PSP's (5) in two */
static inline int skey_eq(const uint8_t *a, const uint8_t *b, int klen) {
    if (klen == 5) {
        uint32_t x, y;
        memcpy(&x, a, 4);
        memcpy(&y, b, 4);
        return ((x ^ y) | (uint32_t)(a[4] ^ b[4])) == 0;
    }
    if (klen != 17) return memcmp(a, b, (size_t)klen) == 0;
    uint64_t x[2], y[2];
    memcpy(x, a, 16);
    memcpy(y, b, 16);
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (uint64_t)(a[16] ^ b[16])) == 0;
}

/* rt_entry's common case inline (the hook's lookups): key cached with a known state; else rt_entry */
static inline int rt_entry_fast(RiskTableObject *t, const uint8_t *key, int klen, uint64_t h, int32_t *idx) {
    const tmap_t *m = &t->states;
    for (size_t s = m->slots != NULL ? rt_pos(h, m->mask) : 0; m->slots != NULL && m->slots[s] != RT_EMPTY;
         s = (s + 1) & m->mask) {
        uint64_t v = m->slots[s];
        const tent_t *e = &m->ents[(uint32_t)v];
        if ((v ^ h) >> 32 || e->klen != klen || !skey_eq(e->key, key, klen)) continue;
        if (e->has == HAS_UNKNOWN) break;
        *idx = (int32_t)(uint32_t)v;
        return 0;
    }
    return rt_entry(t, key, klen, h, idx);
}

/* rt_change's common case inline: the entry changed in this block already */
static inline int rt_change_fast(RiskTableObject *t, int32_t idx) {
    tent_t *e = &t->states.ents[idx];
    if (e->changed != t->epoch) return rt_change(t, idx);
    e->has = 1;
    return 0;
}

#endif
