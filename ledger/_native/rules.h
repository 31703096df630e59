/* sovledger C rules hook: what rules.c (the Hook type, the block's risk states) and rules_eval.c (the
 * fields and the lowered program) share. See rules.c for the protocol. */
#ifndef SOVLEDGER_RULES_H
#define SOVLEDGER_RULES_H
#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "risk_core.h"
#include "risk_table.h"

typedef unsigned __int128 u128;
#define REC 176
#define I64_MAX INT64_MAX
enum { O_ID = 0, O_DR = 16, O_CR = 32, O_ALO = 48, O_AHI = 56, O_UD = 80, O_EXT = 96, O_LEDGER = 160,
       O_PSP = 164, O_TIMEOUT = 168, O_CODE = 172, O_FLAGS = 174 };

/* field ids: the order of ledger/rules/lowering.py NATIVE_FIELDS */
enum {
    F_AMOUNT, F_LEDGER, F_CODE, F_PSP_ID, F_FLAGS, F_PENDING, F_TIMEOUT, F_USER_DATA, F_PSP, F_TS, F_HEIGHT,
    F_NEW_PAYEE, F_EWMA, F_DEV_BPS, F_HISTORY_N,
    F_DEBIT0, /* 9 account fields: debits_pending, debits_posted, credits_pending, credits_posted, balance,
                 flags, code, ledger, user_data */
    F_CREDIT0 = F_DEBIT0 + 9,
    F_WOUT0 = F_CREDIT0 + 9, /* 6 window fields: count_1m, count_1h, count_24h, sum_1m, sum_1h, sum_24h */
    F_WIN0 = F_WOUT0 + 6,
    F_WPSP0 = F_WIN0 + 6,
    F_COUNT = F_WPSP0 + 6
};
enum { C_BOOL = 0, C_CMP = 1 };
enum { OP_LT, OP_LE, OP_GT, OP_GE, OP_EQ, OP_NE };
enum { EV_NO_MATCH = -1, EV_BAIL = -2 };

static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline int64_t sat_u128(u128 v) { return v > (u128)I64_MAX ? I64_MAX : (int64_t)v; }
static inline u128 le128(const uint8_t *p) { return (u128)rd64(p) | ((u128)rd64(p + 8) << 64); }

/* one risk key of the transfer being decided: its state as the block sees it (loaded on first use) */
typedef struct {
    uint8_t key[17], klen, has, loaded;
    int32_t idx;    /* its entry in the risk table, when list is NULL */
    uint64_t *st;   /* the state: the table entry's, worked on in place (re-pointed by rules_ctx_entry, as an
                       insert may move the entries), or buf (the Python list's copy) */
    uint64_t buf[RISK_STATE_LEN];
    PyObject *list; /* the block's Python list for this key (SideState.risk, owned), else NULL: the table */
} rent_t;

/* a rule of the program, read once per Hook (rules_eval.c rules_index). A rule whose first conjunct compares
 * one static field (ids below F_HEIGHT: the record's fields and the block's timestamp, never unknown) with one literal has
 * that conjunct as its guard: when it is false, so is the rule, and nothing else of it is read. A run of
 * consecutive rules guarded `field == literal` on the same field is dispatched by the record's value. */
typedef struct {
    const int64_t *body; /* the conjuncts after the guard (all of them without one) */
    int64_t rule, n;     /* rule index, conjuncts in body */
    int64_t glit;        /* the guard: field gop glit */
    int32_t gfield;      /* the guard's field, or -1: no guard */
    int32_t run;         /* the first rule of a dispatch run: the run's index, else -1 */
    int8_t gop, complex_rest;
} rdesc_t;

typedef struct {                /* a dispatch run: rules [start, end) all guarded `field == literal` */
    int32_t field, start, end;
    int32_t first;              /* its (literal, rule position) pairs: keys[first .. first + end - start) */
} rrun_t;

typedef struct { int64_t lit; int32_t pos; } rkey_t; /* sorted by (lit, pos) within a run */

#define HOOK_RING 8 /* prefetch_ahead's hashes of the next records (a power of two > 4) */
typedef struct {
    Py_ssize_t i;  /* the record, or -1 */
    uint64_t h[3]; /* rt_hash of its out key, in key, pair key */
} hring_t;

#define HOOK_PSPS 8 /* the PSP keys' hashes, by PSP id (direct mapped) */
typedef struct {
    uint32_t psp, valid;
    uint64_t h;
} pspc_t;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    hring_t ring[HOOK_RING];
    pspc_t pspc[HOOK_PSPS]; /* (zeroed with the object: nothing valid) */
    int64_t *prog;
    Py_ssize_t nprog;
    rdesc_t *rules; /* the program's rules (and their runs, keys): built once, in the same allocation */
    rrun_t *runs;
    rkey_t *keys;
    Py_ssize_t nrules;
    Py_buffer recs;
    int has_recs;
    Py_ssize_t n;
    uint64_t ts;
    risk_clock_t clock; /* ts as the risk windows see it */
    int64_t height;
    int height_ok, active, track_out, track_in, track_psp, track_pairs;
    RiskTableObject *table; /* committed states with the block's changes, and pairs (risk_table.c) */
    PyObject *risk, *pairs, *extrefs, *decided, *fallback; /* SideState.risk / .pairs (Python paths), ... */
} HookObject;

/* per-transfer evaluation context */
typedef struct {
    HookObject *h;
    Py_ssize_t i;
    const uint8_t *r;
    PyObject *dra, *cra, *pk; /* the account objects (NULL until read, when accts is set), the pair key */
    PyObject *accts;          /* apply.c's [(id, AccountState)], the payer at da and the payee at ca, or NULL */
    Py_ssize_t da, ca;
    const u128 *bal; /* the engine's balances (debit dp, dpo, cp, cpo, credit ...), or NULL: read the objects */
    uint64_t have; /* bit per field id: computed */
    int64_t v[F_COUNT];
    rent_t ent[3]; /* out, in, psp (loaded lazily) */
    int seen_known, in_pairs, seen;
    int32_t pair_idx; /* the pair's entry in the risk table (when not in_pairs) */
} ctx_t;


/* the hash of record i's pair key pk: from the ring prefetch_ahead filled, else computed */
static inline uint64_t rules_pair_hash(const HookObject *h, Py_ssize_t i, const uint8_t *pk) {
    const hring_t *g = &h->ring[i & (HOOK_RING - 1)];
    return g->i == i ? g->h[2] : rt_hash(pk, PAIR_KEY_LEN);
}

extern PyObject *S_DP, *S_DPO, *S_CP, *S_CPO, *S_FLAGS, *S_CODE, *S_LEDGER, *S_RECORD; /* attribute names */

rent_t *rules_ctx_entry(ctx_t *c, int which);        /* rules.c: a key's state, seeded on first touch */
int rules_seen(ctx_t *c);                            /* rules_eval.c: the payer-payee pair lookup */
int rules_touch(ctx_t *c);                           /* rules_eval.c: a successful transfer's pair, no lookup */
int64_t rules_evaluate(ctx_t *c);                    /* rules_eval.c: rule index, EV_NO_MATCH or EV_BAIL */
int rules_check_program(const int64_t *p, Py_ssize_t n);  /* rules_eval.c: the program's shape is sound */
int rules_index(HookObject *h);                      /* rules_eval.c: h->rules, runs, keys of a checked program */
#endif
