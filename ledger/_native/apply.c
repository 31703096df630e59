/* sovledger native engine, transfer apply: the per-transfer logic of ledger/apply/transfers.py
 * (record decode, checks in the precedence of docs/results.md, u128 balances, linked chains,
 * pending/post/void) for a batch whose accounts and known transfers Python gathered first.
 *
 *   1. GIL held: read the gathered accounts and transfer refs into C tables.
 *   2. GIL released: decide every record (results, balances, statuses), undoing failed chains.
 *   3. GIL held: write the outcome back into the block scratch state the Python reference uses
 *      (AccountState balances, TransferRef objects, Event objects, expiry keys), so sealing,
 *      writes and every later batch of the block see exactly what the reference would leave.
 * Byte-identical to the reference (tests/engine/test_differential.py). */
#include "slots.h"
#include "keyed_hash.h"

typedef unsigned __int128 u128;
#define U128_MAX (~(u128)0)
#define REC 176
enum { O_ID = 0, O_DR = 16, O_CR = 32, O_ALO = 48, O_AHI = 56, O_PID = 64, O_UD = 80, O_EXT = 96,
       O_PII = 128, O_LEDGER = 160, O_PSP = 164, O_TIMEOUT = 168, O_CODE = 172, O_FLAGS = 174 };
enum { F_LINKED = 1, F_PENDING = 2, F_POST = 4, F_VOID = 8, F_KNOWN = 15 };
enum { A_DMNEC = 2, A_CMNED = 4, A_HISTORY = 8 };
enum { S_SINGLE = 0, S_PENDING = 1, S_POSTED = 2, S_VOIDED = 3, S_EXPIRED = 4 };
enum { E_NONE = 0, E_SINGLE, E_PENDING, E_POST, E_VOID, E_EXISTS };
#define NS 1000000000ULL

/* result codes (ledger/types.py Result); ledger/native.py checks every one against the enum at import */
#define RESULT_CODES(X) \
    X(OK, 0) X(LINKED_EVENT_FAILED, 1) X(LINKED_EVENT_CHAIN_OPEN, 2) X(RESERVED_FLAG, 4) \
    X(ID_MUST_NOT_BE_ZERO, 5) X(ID_MUST_NOT_BE_INT_MAX, 6) X(FLAGS_ARE_MUTUALLY_EXCLUSIVE, 7) \
    X(LEDGER_MUST_NOT_BE_ZERO, 8) X(CODE_MUST_NOT_BE_ZERO, 9) X(DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO, 40) \
    X(DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, 41) X(CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO, 42) \
    X(CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, 43) X(ACCOUNTS_MUST_BE_DIFFERENT, 44) \
    X(PENDING_ID_MUST_BE_ZERO, 45) X(PENDING_ID_MUST_NOT_BE_ZERO, 46) X(PENDING_ID_MUST_NOT_BE_INT_MAX, 47) \
    X(PENDING_ID_MUST_BE_DIFFERENT, 48) X(TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, 49) \
    X(AMOUNT_MUST_NOT_BE_ZERO, 50) X(DEBIT_ACCOUNT_NOT_FOUND, 60) X(CREDIT_ACCOUNT_NOT_FOUND, 61) \
    X(ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER, 62) X(TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS, 63) \
    X(PENDING_TRANSFER_NOT_FOUND, 64) X(PENDING_TRANSFER_NOT_PENDING, 65) \
    X(PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID, 66) \
    X(PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID, 67) X(PENDING_TRANSFER_HAS_DIFFERENT_LEDGER, 68) \
    X(PENDING_TRANSFER_HAS_DIFFERENT_CODE, 69) X(EXCEEDS_PENDING_TRANSFER_AMOUNT, 70) \
    X(PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT, 71) X(PENDING_TRANSFER_ALREADY_POSTED, 72) \
    X(PENDING_TRANSFER_ALREADY_VOIDED, 73) X(PENDING_TRANSFER_EXPIRED, 74) \
    X(EXISTS_WITH_DIFFERENT_TRANSFER_FLAGS, 80) X(EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID, 81) \
    X(EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID, 82) X(EXISTS_WITH_DIFFERENT_AMOUNT, 83) \
    X(EXISTS_WITH_DIFFERENT_PENDING_ID, 84) X(EXISTS_WITH_DIFFERENT_TRANSFER_USER_DATA, 85) \
    X(EXISTS_WITH_DIFFERENT_TIMEOUT, 86) X(EXISTS_WITH_DIFFERENT_TRANSFER_CODE, 87) \
    X(EXISTS_WITH_DIFFERENT_TRANSFER_LEDGER, 88) X(EXISTS_WITH_DIFFERENT_EXTERNAL_REF, 89) \
    X(EXISTS_WITH_DIFFERENT_PII_COMMITMENT, 90) X(EXISTS_WITH_DIFFERENT_PSP, 91) X(TRANSFER_EXISTS, 92) \
    X(OVERFLOWS_DEBITS_PENDING, 100) X(OVERFLOWS_CREDITS_PENDING, 101) X(OVERFLOWS_DEBITS_POSTED, 102) \
    X(OVERFLOWS_CREDITS_POSTED, 103) X(OVERFLOWS_DEBITS, 104) X(OVERFLOWS_CREDITS, 105) \
    X(OVERFLOWS_TIMEOUT, 106) X(EXCEEDS_CREDITS, 107) X(EXCEEDS_DEBITS, 108)
#define AS_ENUM(name, value) RC_##name = value,
enum { RESULT_CODES(AS_ENUM) };

/* ---- little helpers ---------------------------------------------------------------------------- */
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline u128 amount_of(const uint8_t *r) { return (u128)rd64(r + O_ALO) | ((u128)rd64(r + O_AHI) << 64); }
static inline int is_zero(const uint8_t *id) { return rd64(id) == 0 && rd64(id + 8) == 0; }
static inline int is_max(const uint8_t *id) { return rd64(id) == UINT64_MAX && rd64(id + 8) == UINT64_MAX; }
static inline int id_eq(const uint8_t *a, const uint8_t *b) { return memcmp(a, b, 16) == 0; }
static inline int over2(u128 a, u128 b) { return a + b < a; }  /* a + b > U128_MAX */
static inline int over3(u128 a, u128 b, u128 c) { return over2(a, b) || over2(a + b, c); }
/* the account and transfer tables' hash: keyed once per process (keyed_hash.h; apply_init_key) */
static kh_key_t ID_KEY;
static inline uint64_t id_hash(const uint8_t *id) { return kh_id(&ID_KEY, rd64(id), rd64(id + 8)); }
static size_t table_size(size_t n) { size_t s = 16; while (s < 2 * n + 2) s <<= 1; return s; }

/* ---- state ------------------------------------------------------------------------------------ */
typedef struct { uint8_t id[16]; uint32_t ledger; uint16_t flags; int dirty; u128 dp, dpo, cp, cpo, orig[4]; } acct_t;
/* id: kept beside the balances; orig: the balances its state object held when loaded (emit() writes back the moved) */
/* a transfer known to this batch: gathered (src >= 0: index in the known list) or created here
 * (src < 0: -(record index + 1)); dead when a failed chain undid its creation */
typedef struct { const uint8_t *id, *body; uint64_t expires; int32_t src; uint8_t status, live; } xfer_t;
typedef struct { uint16_t result; uint8_t effect, hist; int32_t xsrc; uint64_t expires, pexp; const uint8_t *pbody; } out_t;
enum { U_ACCT, U_XADD, U_XSTAT };
typedef struct { int kind, idx; u128 b[4]; uint8_t status; } undo_t;

typedef struct {
    const uint8_t *recs; Py_ssize_t n; uint64_t ts0;
    acct_t *acct; size_t nacct; int32_t *aslot; size_t amask;
    xfer_t *x; size_t nx; int32_t *xslot; size_t xmask;
    out_t *out; undo_t *undo; size_t nundo; int logging;
    const char *error;  /* an invariant that failed: the block must not commit */
    PyObject *rule_cb, *acct_list;  /* the rules hook (GIL held throughout) and the gathered (id, state) pairs */
    int (*fast_hook)(void *, Py_ssize_t, const u128 *, PyObject *, Py_ssize_t, Py_ssize_t);  /* rules.c, see rule_hook */
    void *fast_self;  /* its object (the capsule's context; rule_cb keeps it alive) */
    u128 (*synced)[4];  /* per account: the balances its Python state object shows the hook */
} eng_t;

static int rule_hook(eng_t *e, Py_ssize_t i, int32_t da, int32_t ca);

static int32_t find_acct(const eng_t *e, const uint8_t *id) {
    for (size_t s = id_hash(id) & e->amask;; s = (s + 1) & e->amask) {
        int32_t k = e->aslot[s];
        if (k < 0 || id_eq(e->acct[k].id, id)) return k;
    }
}

static size_t x_slot(const eng_t *e, const uint8_t *id) {
    for (size_t s = id_hash(id) & e->xmask;; s = (s + 1) & e->xmask) {
        int32_t k = e->xslot[s];
        if (k < 0 || id_eq(e->x[k].id, id)) return s;
    }
}

static int32_t find_x(const eng_t *e, const uint8_t *id) {
    int32_t k = e->xslot[x_slot(e, id)];
    return k >= 0 && e->x[k].live ? k : -1;
}

static void log_acct(eng_t *e, int32_t a) {
    acct_t *p = &e->acct[a];
    p->dirty = 1;
    if (!e->logging) return;
    undo_t *u = &e->undo[e->nundo++];
    u->kind = U_ACCT; u->idx = a; u->b[0] = p->dp; u->b[1] = p->dpo; u->b[2] = p->cp; u->b[3] = p->cpo;
}

static void add_x(eng_t *e, const uint8_t *r, Py_ssize_t i, uint8_t status, uint64_t expires) {
    size_t s = x_slot(e, r + O_ID);
    int32_t k = e->xslot[s];
    if (k < 0) { k = (int32_t)e->nx++; e->xslot[s] = k; }  /* else: revive an entry a failed chain undid */
    xfer_t *t = &e->x[k];
    t->id = r + O_ID; t->body = r; t->expires = expires; t->src = -(int32_t)(i + 1); t->status = status; t->live = 1;
    if (e->logging) { undo_t *u = &e->undo[e->nundo++]; u->kind = U_XADD; u->idx = k; }
}

static void rollback(eng_t *e, size_t mark) {
    while (e->nundo > mark) {
        undo_t *u = &e->undo[--e->nundo];
        if (u->kind == U_ACCT) {
            acct_t *p = &e->acct[u->idx];
            p->dp = u->b[0]; p->dpo = u->b[1]; p->cp = u->b[2]; p->cpo = u->b[3];
        } else if (u->kind == U_XADD) {
            e->x[u->idx].live = 0;
        } else {
            e->x[u->idx].status = u->status;
        }
    }
}

static uint8_t hist_of(const eng_t *e, int32_t da, int32_t ca) {
    return (uint8_t)((e->acct[da].flags & A_HISTORY ? 1 : 0) | (e->acct[ca].flags & A_HISTORY ? 2 : 0));
}

/* ---- the checks and effects, mirroring ledger/apply/transfers.py ------------------------------- */
static uint16_t exists_code(const eng_t *e, int32_t k, const uint8_t *r, out_t *o) {
    const uint8_t *a = e->x[k].body;
    if (memcmp(a, r, REC) == 0) { o->effect = E_EXISTS; o->xsrc = e->x[k].src; return RC_TRANSFER_EXISTS; }
    static const struct { uint8_t off, len; uint16_t code; } fields[] = {
        {O_FLAGS, 2, RC_EXISTS_WITH_DIFFERENT_TRANSFER_FLAGS}, {O_DR, 16, RC_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID},
        {O_CR, 16, RC_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID}, {O_ALO, 16, RC_EXISTS_WITH_DIFFERENT_AMOUNT},
        {O_PID, 16, RC_EXISTS_WITH_DIFFERENT_PENDING_ID}, {O_UD, 16, RC_EXISTS_WITH_DIFFERENT_TRANSFER_USER_DATA},
        {O_TIMEOUT, 4, RC_EXISTS_WITH_DIFFERENT_TIMEOUT}, {O_CODE, 2, RC_EXISTS_WITH_DIFFERENT_TRANSFER_CODE},
        {O_LEDGER, 4, RC_EXISTS_WITH_DIFFERENT_TRANSFER_LEDGER}, {O_EXT, 32, RC_EXISTS_WITH_DIFFERENT_EXTERNAL_REF},
        {O_PII, 32, RC_EXISTS_WITH_DIFFERENT_PII_COMMITMENT}, {O_PSP, 4, RC_EXISTS_WITH_DIFFERENT_PSP},
    };
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++)
        if (memcmp(a + fields[f].off, r + fields[f].off, fields[f].len) != 0) return fields[f].code;
    o->effect = E_EXISTS; o->xsrc = e->x[k].src;  /* unreachable: the fields cover the record */
    return RC_TRANSFER_EXISTS;
}

static uint16_t check_fields(const uint8_t *r, int kinds) {
    const uint8_t *dr = r + O_DR, *cr = r + O_CR;
    if (is_zero(dr)) return RC_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO;
    if (is_max(dr)) return RC_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX;
    if (is_zero(cr)) return RC_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO;
    if (is_max(cr)) return RC_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX;
    if (id_eq(dr, cr)) return RC_ACCOUNTS_MUST_BE_DIFFERENT;
    if (!is_zero(r + O_PID)) return RC_PENDING_ID_MUST_BE_ZERO;
    if (rd32(r + O_TIMEOUT) && !kinds) return RC_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER;
    if (amount_of(r) == 0) return RC_AMOUNT_MUST_NOT_BE_ZERO;
    if (rd32(r + O_LEDGER) == 0) return RC_LEDGER_MUST_NOT_BE_ZERO;
    if (rd16(r + O_CODE) == 0) return RC_CODE_MUST_NOT_BE_ZERO;
    return RC_OK;
}

static uint16_t check_balances(const acct_t *d, const acct_t *c, u128 amt, int pending) {
    if (pending) {
        if (over2(d->dp, amt)) return RC_OVERFLOWS_DEBITS_PENDING;
        if (over2(c->cp, amt)) return RC_OVERFLOWS_CREDITS_PENDING;
    } else {
        if (over2(d->dpo, amt)) return RC_OVERFLOWS_DEBITS_POSTED;
        if (over2(c->cpo, amt)) return RC_OVERFLOWS_CREDITS_POSTED;
    }
    if (over3(d->dp, d->dpo, amt)) return RC_OVERFLOWS_DEBITS;
    if (over3(c->cp, c->cpo, amt)) return RC_OVERFLOWS_CREDITS;
    return RC_OK;
}

static uint16_t post_or_void(eng_t *e, const uint8_t *r, Py_ssize_t i, int flags, out_t *o) {
    const uint8_t *pid = r + O_PID;
    if (is_zero(pid)) return RC_PENDING_ID_MUST_NOT_BE_ZERO;
    if (is_max(pid)) return RC_PENDING_ID_MUST_NOT_BE_INT_MAX;
    if (id_eq(pid, r + O_ID)) return RC_PENDING_ID_MUST_BE_DIFFERENT;
    if (rd32(r + O_TIMEOUT)) return RC_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER;
    int32_t k = find_x(e, pid);
    if (k < 0) return RC_PENDING_TRANSFER_NOT_FOUND;
    xfer_t *pt = &e->x[k];
    const uint8_t *p = pt->body;
    if (!(rd16(p + O_FLAGS) & F_PENDING) && pt->status == S_SINGLE) return RC_PENDING_TRANSFER_NOT_PENDING;
    if (!is_zero(r + O_DR) && !id_eq(r + O_DR, p + O_DR)) return RC_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID;
    if (!is_zero(r + O_CR) && !id_eq(r + O_CR, p + O_CR)) return RC_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID;
    if (rd32(r + O_LEDGER) && rd32(r + O_LEDGER) != rd32(p + O_LEDGER)) return RC_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER;
    if (rd16(r + O_CODE) && rd16(r + O_CODE) != rd16(p + O_CODE)) return RC_PENDING_TRANSFER_HAS_DIFFERENT_CODE;
    int32_t ek = find_x(e, r + O_ID);
    if (ek >= 0) return exists_code(e, ek, r, o);
    u128 pamt = amount_of(p), amt = amount_of(r);
    int posting = (flags & F_POST) != 0;
    if (posting && amt == 0) amt = pamt;
    if (posting && amt > pamt) return RC_EXCEEDS_PENDING_TRANSFER_AMOUNT;
    if (!posting && amt != 0 && amt != pamt) return RC_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT;
    if (pt->status == S_POSTED) return RC_PENDING_TRANSFER_ALREADY_POSTED;
    if (pt->status == S_VOIDED) return RC_PENDING_TRANSFER_ALREADY_VOIDED;
    if (pt->status == S_EXPIRED || (pt->expires && pt->expires <= e->ts0)) return RC_PENDING_TRANSFER_EXPIRED;
    int32_t da = find_acct(e, p + O_DR), ca = find_acct(e, p + O_CR);
    if (da < 0 || ca < 0) { e->error = "accounts of a pending transfer vanished"; return RC_OK; }
    acct_t *d = &e->acct[da], *c = &e->acct[ca];
    if (posting && over2(d->dpo, amt)) return RC_OVERFLOWS_DEBITS_POSTED;
    if (posting && over2(c->cpo, amt)) return RC_OVERFLOWS_CREDITS_POSTED;
    if (d->dp < pamt || c->cp < pamt) { e->error = "pending balance below a pending amount"; return RC_OK; }
    log_acct(e, da); log_acct(e, ca);
    if (e->logging) { undo_t *u = &e->undo[e->nundo++]; u->kind = U_XSTAT; u->idx = k; u->status = pt->status; }
    d->dp -= pamt; c->cp -= pamt;
    if (posting) { d->dpo += amt; c->cpo += amt; }
    pt->status = posting ? S_POSTED : S_VOIDED;
    o->effect = posting ? E_POST : E_VOID; o->xsrc = pt->src; o->pexp = pt->expires; o->pbody = p;
    o->hist = hist_of(e, da, ca);
    add_x(e, r, i, S_SINGLE, 0);
    return RC_OK;
}

static uint16_t create_transfer(eng_t *e, Py_ssize_t i, out_t *o) {
    const uint8_t *r = e->recs + i * REC;
    int flags = rd16(r + O_FLAGS), kinds = flags & (F_PENDING | F_POST | F_VOID);
    if (flags & ~F_KNOWN) return RC_RESERVED_FLAG;
    if (is_zero(r + O_ID)) return RC_ID_MUST_NOT_BE_ZERO;
    if (is_max(r + O_ID)) return RC_ID_MUST_NOT_BE_INT_MAX;
    if (kinds & (kinds - 1)) return RC_FLAGS_ARE_MUTUALLY_EXCLUSIVE;
    if (kinds & (F_POST | F_VOID)) return post_or_void(e, r, i, flags, o);
    uint16_t res = check_fields(r, kinds);
    if (res != RC_OK) return res;
    int32_t da = find_acct(e, r + O_DR), ca = da >= 0 ? find_acct(e, r + O_CR) : -1;
    if (da < 0) return RC_DEBIT_ACCOUNT_NOT_FOUND;
    if (ca < 0) return RC_CREDIT_ACCOUNT_NOT_FOUND;
    acct_t *d = &e->acct[da], *c = &e->acct[ca];
    if (d->ledger != c->ledger) return RC_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER;
    if (rd32(r + O_LEDGER) != d->ledger) return RC_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS;
    int32_t ek = find_x(e, r + O_ID);
    if (ek >= 0) return exists_code(e, ek, r, o);
    u128 amt = amount_of(r);
    uint32_t timeout = rd32(r + O_TIMEOUT);
    u128 expires = timeout ? (u128)e->ts0 + (u128)timeout * NS : 0;
    res = check_balances(d, c, amt, kinds != 0);
    if (res == RC_OK && expires > UINT64_MAX) res = RC_OVERFLOWS_TIMEOUT;
    if (res != RC_OK) return res;
    if ((d->flags & A_DMNEC) && d->dp + d->dpo + amt > d->cpo) return RC_EXCEEDS_CREDITS;
    if ((c->flags & A_CMNED) && c->cp + c->cpo + amt > c->dpo) return RC_EXCEEDS_DEBITS;
    if (e->rule_cb != NULL && !rule_hook(e, i, da, ca)) return RC_OK;  /* the rules hook: see rule_hook */
    log_acct(e, da); log_acct(e, ca);
    if (kinds) { d->dp += amt; c->cp += amt; } else { d->dpo += amt; c->cpo += amt; }
    o->effect = kinds ? E_PENDING : E_SINGLE; o->expires = (uint64_t)expires; o->hist = hist_of(e, da, ca);
    add_x(e, r, i, kinds ? S_PENDING : S_SINGLE, (uint64_t)expires);
    return RC_OK;
}

static void decide(eng_t *e, Py_ssize_t i) {
    out_t *o = &e->out[i];
    memset(o, 0, sizeof *o);
    o->result = create_transfer(e, i, o);
}

/* apply_chains of ledger/apply/batches.py: a chain (LINKED on all but its last record) is all-or-nothing */
static void run_batch(eng_t *e) {
    Py_ssize_t n = e->n, i = 0;
    while (i < e->n && !e->error) {  /* e->n, not n: the rules hook may end the batch early */
        if (!(rd16(e->recs + i * REC + O_FLAGS) & F_LINKED)) { decide(e, i++); continue; }
        Py_ssize_t end = i;
        while (end < n && (rd16(e->recs + end * REC + O_FLAGS) & F_LINKED)) end++;
        if (end == n) {  /* chain never closed */
            for (Py_ssize_t j = i; j < n; j++) {
                memset(&e->out[j], 0, sizeof e->out[j]);
                e->out[j].result = j == n - 1 ? RC_LINKED_EVENT_CHAIN_OPEN : RC_LINKED_EVENT_FAILED;
            }
            return;
        }
        e->logging = 1;
        e->nundo = 0;
        Py_ssize_t failure = -1;
        for (Py_ssize_t j = i; j <= end; j++) {
            decide(e, j);
            if (e->out[j].result != RC_OK && e->out[j].effect != E_EXISTS) { failure = j; break; }
        }
        e->logging = 0;
        if (failure >= 0) {
            rollback(e, 0);
            for (Py_ssize_t j = i; j <= end; j++) {
                if (j == failure) continue;
                memset(&e->out[j], 0, sizeof e->out[j]);
                e->out[j].result = RC_LINKED_EVENT_FAILED;
            }
        }
        i = end + 1;
    }
}


/* ---- the Python side ------------------------------------------------------------------------ */
static PyObject *u128_obj(u128 v) {
    if ((v >> 64) == 0) return PyLong_FromUnsignedLongLong((unsigned long long)v);
    uint8_t b[16];
    for (int k = 0; k < 16; k++) b[k] = (uint8_t)(v >> (8 * k));
    return _PyLong_FromByteArray(b, 16, 1, 0);
}

static int slot_u128(PyObject *o, int i, u128 *v) {
    PyObject *a = slot_get(o, &SL_ACCT, i);
    uint8_t b[16];
    if (a == NULL) return 0;
    int ok = int_le16(a, b);
    Py_DECREF(a);
    if (!ok) return 0;
    *v = 0;
    for (int k = 15; k >= 0; k--) *v = (*v << 8) | b[k];
    return 1;
}

static int id_arg(PyObject *o, Py_ssize_t len, const char *what) {
    if (PyBytes_Check(o) && PyBytes_GET_SIZE(o) == len) return 1;
    PyErr_Format(PyExc_TypeError, "%s must be %zd bytes", what, len);
    return 0;
}

/* The rules hook (ledger/apply/native_transfers.py), called only while a rule set is active, with the
 * GIL held: a new transfer passed every built-in check and nothing of it is applied yet.
 * rule_cb(i, debit_state, credit_state) -> True: no rule decides it, apply it here (the callback has
 * recorded the risk features and the external-ref index); False: a rule decides it, so the batch ends
 * before record i (e->n = i) and Python applies record i on the reference path, then the rest of the
 * batch natively. The AccountState objects show the current balances (synced only when they moved). */
static int sync_acct(eng_t *e, int32_t a) {
    const acct_t *p = &e->acct[a];
    u128 *seen = e->synced[a], now[4] = {p->dp, p->dpo, p->cp, p->cpo};
    PyObject *st = PyTuple_GET_ITEM(PyList_GET_ITEM(e->acct_list, a), 1);
    for (int q = 0; q < 4; q++) {
        if (seen[q] == now[q]) continue;
        PyObject *v = u128_obj(now[q]);
        if (v == NULL || slot_set(st, &SL_ACCT, SA_DP + q, v) < 0) { Py_XDECREF(v); return 0; }
        Py_DECREF(v);
        seen[q] = now[q];
    }
    return 1;
}

static int rule_hook(eng_t *e, Py_ssize_t i, int32_t da, int32_t ca) {
    if (e->logging) { e->error = "the rules hook ran inside a linked chain"; return 0; }
    if (e->fast_hook != NULL) {  /* the C rules hook (rules.c) reads the balances from here: no sync, no call
                                  * protocol; 2: it needs Python to decide, through the protocol below */
        const acct_t *d = &e->acct[da], *c = &e->acct[ca];
        const u128 bal[8] = {d->dp, d->dpo, d->cp, d->cpo, c->dp, c->dpo, c->cp, c->cpo};
        int got = e->fast_hook(e->fast_self, i, bal, e->acct_list, da, ca); /* (the objects: only if read) */
        if (got < 0) { e->error = "rules hook"; return 0; }
        if (got < 2) { if (!got) e->n = i; return got; }
    }
    if (!sync_acct(e, da) || !sync_acct(e, ca)) { e->error = "rules hook"; return 0; }
    PyObject *idx = PyLong_FromSsize_t(i), *got = NULL;
    if (idx != NULL) {
        PyObject *a[3] = {idx, PyTuple_GET_ITEM(PyList_GET_ITEM(e->acct_list, da), 1),
                          PyTuple_GET_ITEM(PyList_GET_ITEM(e->acct_list, ca), 1)};
        got = PyObject_Vectorcall(e->rule_cb, a, 3, NULL);
        Py_DECREF(idx);
    }
    int accept = got == NULL ? -1 : PyObject_IsTrue(got);
    Py_XDECREF(got);
    if (accept < 0) { e->error = "rules hook"; return 0; }
    if (!accept) e->n = i;
    return accept;
}

/* account k (its id set) into the account table: the slots it probed (1: its first), 0 if the id is there */
static size_t acct_insert(eng_t *e, int32_t k) {
    size_t s = id_hash(e->acct[k].id) & e->amask, probes = 1;
    for (; e->aslot[s] >= 0; s = (s + 1) & e->amask, probes++)
        if (id_eq(e->acct[e->aslot[s]].id, e->acct[k].id)) return 0;
    e->aslot[s] = k;
    e->nacct++;
    return probes;
}

/* phase 1: the gathered accounts [(id, AccountState)] and transfers [(id, TransferRef, record)] */
static int load_state(eng_t *e, PyObject *accounts, PyObject *known) {
    Py_ssize_t na = PyList_GET_SIZE(accounts), nk = PyList_GET_SIZE(known);
    for (Py_ssize_t k = 0; k < na; k++) {
        PyObject *t = PyList_GET_ITEM(accounts, k), *a;
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 || !id_arg(PyTuple_GET_ITEM(t, 0), 16, "an account id"))
            return PyErr_Occurred() ? 0 : (PyErr_SetString(PyExc_TypeError, "accounts: (id, state) pairs"), 0);
        a = PyTuple_GET_ITEM(t, 1);
        acct_t *p = &e->acct[k];
        uint64_t ledger, flags;
        memcpy(p->id, PyBytes_AS_STRING(PyTuple_GET_ITEM(t, 0)), 16);
        if (!slot_u64(a, &SL_ACCT, SA_LEDGER, &ledger) || !slot_u64(a, &SL_ACCT, SA_FLAGS, &flags) ||
            !slot_u128(a, SA_DP, &p->dp) || !slot_u128(a, SA_DPO, &p->dpo) || !slot_u128(a, SA_CP, &p->cp) ||
            !slot_u128(a, SA_CPO, &p->cpo))
            return 0;
        p->ledger = (uint32_t)ledger; p->flags = (uint16_t)flags; p->dirty = 0;
        p->orig[0] = p->dp; p->orig[1] = p->dpo; p->orig[2] = p->cp; p->orig[3] = p->cpo;
        if (acct_insert(e, (int32_t)k) == 0) { PyErr_SetString(PyExc_ValueError, "duplicate account"); return 0; }
    }
    for (Py_ssize_t k = 0; k < nk; k++) {
        PyObject *t = PyList_GET_ITEM(known, k);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3 || !id_arg(PyTuple_GET_ITEM(t, 0), 16, "a transfer id") ||
            !id_arg(PyTuple_GET_ITEM(t, 2), REC, "a transfer record"))
            return PyErr_Occurred() ? 0 : (PyErr_SetString(PyExc_TypeError, "known: (id, ref, record)"), 0);
        const uint8_t *id = (const uint8_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(t, 0));
        uint64_t status, expires;
        if (!slot_u64(PyTuple_GET_ITEM(t, 1), &SL_REF, SR_STATUS, &status) ||
            !slot_u64(PyTuple_GET_ITEM(t, 1), &SL_REF, SR_EXPIRES, &expires))
            return 0;
        size_t s = x_slot(e, id);
        if (e->xslot[s] >= 0) { PyErr_SetString(PyExc_ValueError, "duplicate known transfer"); return 0; }
        xfer_t *x = &e->x[e->nx];
        x->id = id; x->body = (const uint8_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(t, 2));
        x->status = (uint8_t)status; x->expires = expires; x->src = (int32_t)k; x->live = 1;
        e->xslot[s] = (int32_t)e->nx++;
    }
    return 1;
}

typedef struct {
    PyObject *event_t, *ref_t, *kind, *results, *sigs, *events, *transfers, *bodies, *puts, *dels, *known, *empty, *nobytes;
    PyObject *height_obj;  /* the block height as an int, shared by every ref the batch creates */
    unsigned long long height;
} sink_t;

static PyObject *expiry_key(uint64_t expires, const uint8_t *id) {
    uint8_t k[24];
    for (int b = 0; b < 8; b++) k[b] = (uint8_t)(expires >> (56 - 8 * b));
    memcpy(k + 8, id, 16);
    return PyBytes_FromStringAndSize((const char *)k, 24);
}

static PyObject *id_obj(const uint8_t *id) { return PyBytes_FromStringAndSize((const char *)id, 16); }

static PyObject *hist_tuple(const out_t *o, const uint8_t *body) {
    if (o->hist == 3) return Py_BuildValue("(NN)", id_obj(body + O_DR), id_obj(body + O_CR));
    if (o->hist) return Py_BuildValue("(N)", id_obj(body + (o->hist == 1 ? O_DR : O_CR)));
    return PyTuple_New(0);  /* the shared empty tuple */
}

/* The TransferRef object an earlier outcome refers to (gathered, or created by an earlier record). */
static PyObject *ref_of(const sink_t *k, PyObject **created, int32_t src) {
    return src >= 0 ? PyTuple_GET_ITEM(PyList_GET_ITEM(k->known, src), 1) : created[-(src + 1)];
}

static PyObject *make_ref(const sink_t *k, int status, uint64_t expires) {
    PyObject *h = Py_NewRef(k->height_obj), *st = PyLong_FromLong(status);
    PyObject *ex = PyLong_FromUnsignedLongLong(expires), *zero = PyLong_FromLong(0), *ref = NULL;
    if (h && st && ex && zero) {
        PyObject *a[5] = {zero, h, zero, st, ex};
        ref = slot_new(&SL_REF, k->ref_t, a, 5);  /* the dataclass __init__ without its frame (slots.h) */
        if (ref == NULL && !PyErr_Occurred()) ref = PyObject_Vectorcall(k->ref_t, a, 5, NULL);
    }
    Py_XDECREF(h); Py_XDECREF(st); Py_XDECREF(ex); Py_XDECREF(zero);
    return ref;
}

static PyObject *make_event(const sink_t *k, PyObject *res, PyObject *body, PyObject *aux, PyObject *hist,
                            PyObject *ref, PyObject *tid) {
    PyObject *a[7] = {k->kind, res, body, aux, hist, ref, tid};
    if (SL_EVENT.construct && (PyTypeObject *)k->event_t == SL_EVENT.type) {  /* every field, defaults too */
        PyObject *v[SE_N] = {k->kind, res, body, aux, hist, ref ? ref : Py_None, tid ? tid : k->nobytes,
                             Py_None, Py_None, Py_None, Py_None, Py_None};
        return slot_new(&SL_EVENT, k->event_t, v, SE_N);
    }
    return PyObject_Vectorcall(k->event_t, a, ref ? 7 : 5, NULL);
}

/* phase 3 for one record: the Event, and the transfer, body and expiry entries it adds */
static PyObject *emit_one(const eng_t *e, const sink_t *k, PyObject **created, Py_ssize_t i, PyObject *body) {
    const out_t *o = &e->out[i];
    const uint8_t *r = e->recs + i * REC;
    PyObject *aux = k->sigs == Py_None ? PyBytes_FromStringAndSize("", 0) : Py_NewRef(PyList_GET_ITEM(k->sigs, i));
    PyObject *res = PyList_GET_ITEM(k->results, o->result), *ev = NULL, *tid = NULL, *ref = NULL, *hist = NULL;
    if (aux == NULL) return NULL;
    if (o->effect == E_NONE || o->effect == E_EXISTS) {
        ev = make_event(k, res, body, aux, k->empty, NULL, NULL);
        if (ev && o->effect == E_EXISTS && slot_set(ev, &SL_EVENT, SE_EXISTING, ref_of(k, created, o->xsrc)) < 0)
            Py_CLEAR(ev);
        Py_DECREF(aux);
        return ev;
    }
    int pending = o->effect == E_PENDING;
    ref = make_ref(k, pending ? S_PENDING : S_SINGLE, pending ? o->expires : 0);
    tid = id_obj(r + O_ID);
    hist = hist_tuple(o, o->pbody ? o->pbody : r);
    if (ref == NULL || tid == NULL || hist == NULL) goto fail;
    if (PyDict_SetItem(k->transfers, tid, ref) < 0 || PyDict_SetItem(k->bodies, tid, body) < 0) goto fail;
    created[i] = Py_NewRef(ref);
    if (pending && o->expires) {
        PyObject *key = expiry_key(o->expires, r + O_ID);
        if (key == NULL || PyList_Append(k->puts, key) < 0) { Py_XDECREF(key); goto fail; }
        Py_DECREF(key);
    }
    if (o->effect == E_POST || o->effect == E_VOID) {
        PyObject *pref = ref_of(k, created, o->xsrc), *pid = id_obj(o->pbody + O_ID);
        PyObject *st = PyLong_FromLong(o->effect == E_POST ? S_POSTED : S_VOIDED);
        int bad = pid == NULL || st == NULL || slot_set(pref, &SL_REF, SR_STATUS, st) < 0 ||
                  PyDict_SetItem(k->transfers, pid, pref) < 0;
        if (!bad && o->pexp) {
            PyObject *key = expiry_key(o->pexp, o->pbody + O_ID);
            bad = key == NULL || PyList_Append(k->dels, key) < 0;
            Py_XDECREF(key);
        }
        Py_XDECREF(pid); Py_XDECREF(st);
        if (bad) goto fail;
    }
    ev = make_event(k, res, body, aux, hist, ref, tid);
fail:
    Py_DECREF(aux); Py_XDECREF(ref); Py_XDECREF(tid); Py_XDECREF(hist);
    return ev;
}

static int emit(const eng_t *e, const sink_t *k, PyObject *accounts) {
    PyObject **created = PyMem_Calloc((size_t)(e->n ? e->n : 1), sizeof(PyObject *));
    int ok = created != NULL;
    for (Py_ssize_t i = 0; ok && i < e->n; i++) {
        PyObject *body = PyBytes_FromStringAndSize((const char *)e->recs + i * REC, REC);
        PyObject *ev = body ? emit_one(e, k, created, i, body) : NULL;
        ok = ev != NULL && PyList_Append(k->events, ev) == 0;
        Py_XDECREF(ev); Py_XDECREF(body);
    }
    for (Py_ssize_t i = 0; created && i < e->n; i++) Py_XDECREF(created[i]);
    PyMem_Free(created);
    for (size_t a = 0; ok && a < e->nacct; a++) {
        const acct_t *p = &e->acct[a];
        if (!p->dirty) continue;
        PyObject *st = PyTuple_GET_ITEM(PyList_GET_ITEM(accounts, (Py_ssize_t)a), 1);
        const u128 now[4] = {p->dp, p->dpo, p->cp, p->cpo}, *shown = e->synced ? e->synced[a] : p->orig;
        for (int q = 0; ok && q < 4; q++) {  /* a balance that did not move keeps its int (no new object) */
            if (now[q] == shown[q]) continue;
            PyObject *v = u128_obj(now[q]);
            ok = v != NULL && slot_set(st, &SL_ACCT, SA_DP + q, v) == 0;
            Py_XDECREF(v);
        }
    }
    return ok;
}

static const char APPLY_DOC[] =
    "apply_transfers(records, accounts, known, ts0, height, sigs, events, transfers, bodies, expiry_puts,"
    " expiry_dels, Event, TransferRef, kind, results[, rule_cb]) -> None or an invariant message";

static PyObject *py_apply_transfers(PyObject *self, PyObject *args) {
    Py_buffer recs;
    PyObject *accounts, *known;
    unsigned long long ts0;
    PyObject *rule_cb = Py_None;
    sink_t k;
    if (!slots_names() ||
        !PyArg_ParseTuple(args, "y*O!O!KKOO!O!O!O!O!OOOO!|O", &recs, &PyList_Type, &accounts, &PyList_Type, &known,
                          &ts0, &k.height, &k.sigs, &PyList_Type, &k.events, &PyDict_Type, &k.transfers,
                          &PyDict_Type, &k.bodies, &PyList_Type, &k.puts, &PyList_Type, &k.dels, &k.event_t,
                          &k.ref_t, &k.kind, &PyList_Type, &k.results, &rule_cb))
        return NULL;
    k.known = known;
    k.empty = PyTuple_New(0);
    k.nobytes = PyBytes_FromStringAndSize("", 0);
    k.height_obj = PyLong_FromUnsignedLongLong(k.height);
    eng_t e = {0};
    e.recs = recs.buf; e.n = recs.len / REC; e.ts0 = ts0;
    PyObject *result = NULL;
    Py_ssize_t na = PyList_GET_SIZE(accounts), nk = PyList_GET_SIZE(known);
    size_t asz = table_size((size_t)na), xsz = table_size((size_t)(nk + e.n));
    if (recs.len % REC || (k.sigs != Py_None && (!PyList_Check(k.sigs) || PyList_GET_SIZE(k.sigs) != e.n)) ||
        PyList_GET_SIZE(k.results) < 256) {
        PyErr_SetString(PyExc_ValueError, "records must be whole transfers, sigs one per record, results 256 long");
        goto done;
    }
    e.acct = PyMem_Calloc((size_t)na + 1, sizeof(acct_t)); e.aslot = PyMem_Malloc(asz * sizeof(int32_t));
    e.x = PyMem_Calloc((size_t)(nk + e.n) + 1, sizeof(xfer_t)); e.xslot = PyMem_Malloc(xsz * sizeof(int32_t));
    e.out = PyMem_Calloc((size_t)e.n + 1, sizeof(out_t)); e.undo = PyMem_Malloc(((size_t)e.n * 4 + 1) * sizeof(undo_t));
    if (!e.acct || !e.aslot || !e.x || !e.xslot || !e.out || !e.undo || !k.empty || !k.nobytes || !k.height_obj) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    memset(e.aslot, 0xff, asz * sizeof(int32_t)); memset(e.xslot, 0xff, xsz * sizeof(int32_t));
    e.amask = asz - 1; e.xmask = xsz - 1;
    if (!load_state(&e, accounts, known)) goto done;
    if (rule_cb != Py_None) {  /* the rules hook calls Python: the GIL stays held */
        e.rule_cb = rule_cb; e.acct_list = accounts;
        PyObject *cap = PyObject_GetAttrString(rule_cb, "fast_entry");  /* a C hook's direct entry point */
        if (cap == NULL) PyErr_Clear();
        else {
            e.fast_hook = PyCapsule_GetPointer(cap, "sovledger.rules_hook.2");
            e.fast_self = e.fast_hook ? PyCapsule_GetContext(cap) : NULL;
            Py_DECREF(cap);
            if (e.fast_hook == NULL || e.fast_self == NULL) { e.fast_hook = NULL; if (PyErr_Occurred()) goto done; }
        }
        e.synced = PyMem_Malloc(((size_t)na + 1) * sizeof *e.synced);
        if (e.synced == NULL) { PyErr_NoMemory(); goto done; }
        for (Py_ssize_t a = 0; a < na; a++) {
            const acct_t *p = &e.acct[a];
            e.synced[a][0] = p->dp; e.synced[a][1] = p->dpo; e.synced[a][2] = p->cp; e.synced[a][3] = p->cpo;
        }
        run_batch(&e);
    } else {
        Py_BEGIN_ALLOW_THREADS
        run_batch(&e);
        Py_END_ALLOW_THREADS
    }
    if (e.error) { result = PyErr_Occurred() ? NULL : PyUnicode_FromString(e.error); goto done; }
    if (emit(&e, &k, accounts)) result = Py_NewRef(Py_None);
done:
    PyMem_Free(e.acct); PyMem_Free(e.aslot); PyMem_Free(e.x); PyMem_Free(e.xslot); PyMem_Free(e.out);
    PyMem_Free(e.undo); PyMem_Free(e.synced);
    PyBuffer_Release(&recs);
    Py_XDECREF(k.empty); Py_XDECREF(k.nobytes); Py_XDECREF(k.height_obj);
    return result;
}

/* Add id to the set (open addressing over pointers to ids); 1 if it was new. */
static int set_add(const uint8_t **set, size_t mask, const uint8_t *id) {
    size_t s = id_hash(id) & mask;
    for (; set[s]; s = (s + 1) & mask)
        if (id_eq(set[s], id)) return 0;
    set[s] = id;
    return 1;
}

/* transfer_ids(records) -> (transfer ids to look up, account ids to load), each unique, in first-use order */
static PyObject *py_transfer_ids(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t n = b.len / REC;
    size_t sz = table_size((size_t)n * 2);
    const uint8_t **xset = PyMem_Calloc(sz, sizeof(uint8_t *)), **aset = PyMem_Calloc(sz, sizeof(uint8_t *));
    PyObject *xs = PyList_New(0), *as = PyList_New(0), *result = NULL;
    if (xset == NULL || aset == NULL || xs == NULL || as == NULL) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *r = (const uint8_t *)b.buf + i * REC;
        const uint8_t *ids[4] = {r + O_ID, rd16(r + O_FLAGS) & (F_POST | F_VOID) ? r + O_PID : NULL, r + O_DR, r + O_CR};
        for (int q = 0; q < 4; q++) {
            const uint8_t *id = ids[q];
            if (id == NULL || is_zero(id) || is_max(id) || !set_add(q < 2 ? xset : aset, sz - 1, id)) continue;
            PyObject *o = id_obj(id);
            if (o == NULL || PyList_Append(q < 2 ? xs : as, o) < 0) { Py_XDECREF(o); goto done; }
            Py_DECREF(o);
        }
    }
    result = PyTuple_Pack(2, xs, as);
done:
    PyMem_Free(xset); PyMem_Free(aset); Py_XDECREF(xs); Py_XDECREF(as);
    PyBuffer_Release(&b);
    return result;
}

/* find_transfers(tids, in_block, stored[, many]) -> [(id, ref or None, stored row or None)] of the ids known
 * to the block (ref) or to the store (the row stored under ``id_key(id)``), in order; unknown ids are left
 * out. ``stored`` looks one key up, or with ``many`` a list of keys at once (``ReadTxn.get_many``: one
 * store call for the batch, rows or None in key order). The loop of ledger/apply/native_transfers.py
 * over every transfer id, without a Python frame per id. */
static PyObject *store_key(PyObject *tid) {
    uint8_t k[16];
    for (int b = 0; b < 16; b++) k[b] = (uint8_t)PyBytes_AS_STRING(tid)[15 - b];  /* schema.id_key */
    return PyBytes_FromStringAndSize((const char *)k, 16);
}

/* the stored rows of the ids not in the block: one list aligned with tids (None where in the block) */
static PyObject *stored_rows(PyObject *tids, PyObject *refs, PyObject *stored, int many) {
    Py_ssize_t n = PyList_GET_SIZE(tids);
    PyObject *rows = PyList_New(n), *keys = many ? PyList_New(0) : NULL, *got = NULL;
    if (rows == NULL || (many && keys == NULL)) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyList_SET_ITEM(rows, i, Py_NewRef(Py_None));
        if (PyList_GET_ITEM(refs, i) != Py_None) continue;
        PyObject *key = store_key(PyList_GET_ITEM(tids, i)), *row;
        if (key == NULL) goto fail;
        if (many) { int bad = PyList_Append(keys, key) < 0; Py_DECREF(key); if (bad) goto fail; continue; }
        row = PyObject_CallOneArg(stored, key);
        Py_DECREF(key);
        if (row == NULL) goto fail;
        Py_SETREF(PyList_GET_ITEM(rows, i), row);
    }
    if (!many || PyList_GET_SIZE(keys) == 0) { Py_XDECREF(keys); return rows; }
    got = PyObject_CallOneArg(stored, keys);
    if (got == NULL) goto fail;
    if (!PyList_Check(got) || PyList_GET_SIZE(got) != PyList_GET_SIZE(keys)) {
        PyErr_SetString(PyExc_TypeError, "get_many must return one row or None per key");
        goto fail;
    }
    for (Py_ssize_t i = 0, j = 0; i < n; i++)
        if (PyList_GET_ITEM(refs, i) == Py_None) Py_SETREF(PyList_GET_ITEM(rows, i), Py_NewRef(PyList_GET_ITEM(got, j++)));
    Py_DECREF(keys); Py_DECREF(got);
    return rows;
fail:
    Py_XDECREF(rows); Py_XDECREF(keys); Py_XDECREF(got);
    return NULL;
}

static PyObject *py_find_transfers(PyObject *self, PyObject *args) {
    PyObject *tids, *in_block, *stored, *refs, *rows = NULL, *out = NULL;
    int many = 0;
    if (!PyArg_ParseTuple(args, "O!O!O|p", &PyList_Type, &tids, &PyDict_Type, &in_block, &stored, &many)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(tids);
    if ((refs = PyList_New(n)) == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {  /* the block first: what it holds is never looked up in the store */
        PyObject *tid = PyList_GET_ITEM(tids, i), *ref;
        PyList_SET_ITEM(refs, i, Py_NewRef(Py_None));
        if (!id_arg(tid, 16, "a transfer id")) goto done;
        if ((ref = PyDict_GetItemWithError(in_block, tid)) != NULL) Py_SETREF(PyList_GET_ITEM(refs, i), Py_NewRef(ref));
        else if (PyErr_Occurred()) goto done;
    }
    if ((rows = stored_rows(tids, refs, stored, many)) == NULL || (out = PyList_New(0)) == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ref = PyList_GET_ITEM(refs, i), *row = PyList_GET_ITEM(rows, i), *t;
        if (ref == Py_None && row == Py_None) continue;
        t = PyTuple_Pack(3, PyList_GET_ITEM(tids, i), ref, row);
        if (t == NULL || PyList_Append(out, t) < 0) { Py_XDECREF(t); Py_CLEAR(out); goto done; }
        Py_DECREF(t);
    }
done:
    Py_DECREF(refs); Py_XDECREF(rows);
    return out;
}

static PyObject *py_result_codes(PyObject *self, PyObject *unused) {
    PyObject *d = PyDict_New();
#define AS_ITEM(name, value)                                                  \
    if (d != NULL) {                                                          \
        PyObject *v = PyLong_FromLong(value);                                 \
        if (v == NULL || PyDict_SetItemString(d, #name, v) < 0) Py_CLEAR(d); \
        Py_XDECREF(v);                                                        \
    }
    RESULT_CODES(AS_ITEM)
#undef AS_ITEM
    return d;
}

/* max_probe(ids) -> the longest probe (slots read) of the 16-byte ids added, in order, to an account table
 * sized as apply_transfers sizes it for that many accounts (load <= 1/2): tests of the keyed hash */
static PyObject *py_max_probe(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    size_t n = (size_t)b.len / 16, sz = table_size(n), worst = 0;
    eng_t e = {0};
    e.acct = PyMem_Calloc(n + 1, sizeof(acct_t));
    e.aslot = PyMem_Malloc(sz * sizeof(int32_t));
    e.amask = sz - 1;
    PyObject *result = NULL;
    if (b.len % 16) PyErr_SetString(PyExc_ValueError, "ids must be whole 16-byte ids");
    else if (e.acct == NULL || e.aslot == NULL) PyErr_NoMemory();
    else {
        memset(e.aslot, 0xff, sz * sizeof(int32_t));
        for (size_t k = 0; k < n; k++) {
            memcpy(e.acct[k].id, (const uint8_t *)b.buf + 16 * k, 16);
            size_t probes = acct_insert(&e, (int32_t)k);
            if (probes == 0) { PyErr_SetString(PyExc_ValueError, "duplicate id"); break; }
            if (probes > worst) worst = probes;
        }
        if (!PyErr_Occurred()) result = PyLong_FromSize_t(worst);
    }
    PyMem_Free(e.acct); PyMem_Free(e.aslot);
    PyBuffer_Release(&b);
    return result;
}

static PyObject *py_id_hash(PyObject *self, PyObject *arg) {
    if (!id_arg(arg, 16, "an id")) return NULL;
    return PyLong_FromUnsignedLongLong(id_hash((const uint8_t *)PyBytes_AS_STRING(arg)));
}

/* the tables' key, once per process at module import (keyed_hash.h); 0 with an exception */
int apply_init_key(void) { return kh_init(&ID_KEY); }

PyMethodDef apply_methods[] = {
    {"apply_transfers", py_apply_transfers, METH_VARARGS, APPLY_DOC},
    {"transfer_ids", py_transfer_ids, METH_O, "Unique transfer ids and account ids a transfer batch refers to."},
    {"find_transfers", py_find_transfers, METH_VARARGS, "The transfer ids known to the block or the store."},
    {"max_probe", py_max_probe, METH_O, "max_probe(ids) -> the longest probe of the ids in an account table (tests)."},
    {"id_hash", py_id_hash, METH_O, "id_hash(id) -> the account and transfer tables' keyed hash of a 16-byte id (tests)."},
    {"result_codes", py_result_codes, METH_NOARGS, "The result codes compiled in, by name (checked against ledger.types.Result at import)."},
    {NULL, NULL, 0, NULL},
};
