/* sovledger risk states and payer-payee pairs kept in C across blocks (risk_table.c): what the C rules
 * hook (rules.c) shares with the RiskTable type. */
#ifndef SOVLEDGER_RISK_TABLE_H
#define SOVLEDGER_RISK_TABLE_H
#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <stdint.h>

#include "risk_core.h"

#define RISK_ROW_LEN (8 * RISK_STATE_LEN) /* ledger/risk.py RISK_STRUCT: 17 x u64 little endian */
#define PAIR_KEY_LEN 32                   /* debit id || credit id */

typedef struct { /* one risk state (160 bytes) */
    uint8_t key[17], klen, has, live;      /* has 0: the store has no row (no history); live 0: taken out */
    uint64_t st[RISK_STATE_LEN];
} tent_t;

typedef struct { /* keys in insertion order, open addressing over them */
    tent_t *ents;
    size_t n, cap;
    int32_t *slots;
    size_t mask;
} tmap_t;

enum { PAIR_ABSENT = 0, PAIR_PRESENT = 1, PAIR_NEW = 2 };

typedef struct { /* payer-payee pairs: a committed lookup (absent / present) or new in the open block */
    uint8_t (*keys)[PAIR_KEY_LEN];
    uint8_t *state;
    size_t n, cap, nnew;
    int32_t *slots;
    size_t mask;
} pmap_t;

typedef struct {
    PyObject_HEAD
    tmap_t committed; /* committed states (a cache of the store's `risk` rows, absent rows too), bounded */
    tmap_t overlay;   /* the open block's changed states, on the C path only */
    pmap_t pairs;     /* committed pair lookups and the open block's new pairs, bounded */
    size_t max_states, max_pairs;
    PyObject *get_risk, *get_pair, *get_pairs; /* the open block's store readers, NULL between blocks */
} RiskTableObject;

extern PyTypeObject RiskTableType;

/* the state of key as the open block sees it: overlay, committed table, the store (cached) */
int rt_lookup(RiskTableObject *t, const uint8_t *key, int klen, uint64_t st[RISK_STATE_LEN], uint8_t *has);
/* key's new in-block state into the overlay */
int rt_overlay_put(RiskTableObject *t, const uint8_t *key, int klen, const uint64_t st[RISK_STATE_LEN]);
/* whether the pair was seen: new in this block or committed (a store lookup, cached) */
int rt_seen(RiskTableObject *t, const uint8_t *pk, int *seen);
/* a pair rt_seen reported unseen becomes new in this block */
void rt_add_pair(RiskTableObject *t, const uint8_t *pk);
int risk_table_add_type(PyObject *module);
#endif
