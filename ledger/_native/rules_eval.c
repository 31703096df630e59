/* sovledger C rules hook, evaluation: the transfer, account, block and risk fields of the field table
 * (ledger/rules/compiler.py FIELDS, saturated exactly as there) and the lowered program
 * (ledger/rules/lowering.py) evaluated with CEL's int64 semantics. See rules.c for the protocol. */
#include "rules.h"

#include <stdlib.h>

/* ---- fields ----------------------------------------------------------------------------------- */
static int attr_u128(PyObject *o, PyObject *name, u128 *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    int ok = -1;
    if (PyLong_Check(v)) {
        uint64_t x = PyLong_AsUnsignedLongLong(v);
        if (!(x == (uint64_t)-1 && PyErr_Occurred())) { *out = x; ok = 0; }
        else if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            uint8_t b[16];
            PyErr_Clear();
            if (_PyLong_AsByteArray((PyLongObject *)v, b, 16, 1, 0) == 0) { *out = le128(b); ok = 0; }
        }
    } else {
        PyErr_SetString(PyExc_TypeError, "an account field is not an int");
    }
    Py_DECREF(v);
    return ok;
}

/* the payer's (0) or payee's (1) AccountState, read from apply.c's list on first use */
static PyObject *account(ctx_t *c, int which) {
    PyObject **a = which ? &c->cra : &c->dra;
    if (*a == NULL) *a = PyTuple_GET_ITEM(PyList_GET_ITEM(c->accts, which ? c->ca : c->da), 1); /* (borrowed) */
    return *a;
}

static int account_field(ctx_t *c, int which, int f, int64_t *out) {
    static PyObject **names[8];
    names[0] = &S_DP; names[1] = &S_DPO; names[2] = &S_CP; names[3] = &S_CPO;
    names[5] = &S_FLAGS; names[6] = &S_CODE; names[7] = &S_LEDGER;
    const u128 *bal = c->bal ? c->bal + 4 * which : NULL;
    u128 x, y, z;
    if (f == 4) { /* balance: credits_posted - debits_posted - debits_pending, saturated to int64 */
        if (bal != NULL) { x = bal[3]; y = bal[1]; z = bal[0]; }
        else if (attr_u128(account(c, which), S_CPO, &x) < 0 || attr_u128(account(c, which), S_DPO, &y) < 0 ||
                 attr_u128(account(c, which), S_DP, &z) < 0)
            return -1;
        u128 neg; /* the magnitude of a negative result */
        if (x >= y && x - y >= z) { *out = sat_u128(x - y - z); return 0; }
        if (x >= y) neg = z - (x - y);
        else if (__builtin_add_overflow((u128)(y - x), z, &neg)) neg = (u128)1 << 64;
        *out = neg >= ((u128)1 << 63) ? INT64_MIN : -(int64_t)neg;
        return 0;
    }
    if (f == 8) { /* user_data: the record's bytes 16..32, little endian */
        PyObject *rec = PyObject_GetAttr(account(c, which), S_RECORD);
        if (rec == NULL) return -1;
        int ok = PyBytes_Check(rec) && PyBytes_GET_SIZE(rec) >= 32;
        if (ok) *out = sat_u128(le128((const uint8_t *)PyBytes_AS_STRING(rec) + 16));
        else PyErr_SetString(PyExc_TypeError, "an account record is bytes");
        Py_DECREF(rec);
        return ok ? 0 : -1;
    }
    if (bal != NULL && f < 4) x = bal[f];
    else if (attr_u128(account(c, which), *names[f], &x) < 0) return -1;
    *out = sat_u128(x);
    return 0;
}

/* whether the payer paid this payee before: a pair the Python paths added in this block (SideState.pairs,
 * only when it has any), else the risk table (new in this block, or committed: a store lookup, cached) */
int rules_seen(ctx_t *c) {
    if (c->seen_known) return 0;
    HookObject *h = c->h;
    const uint8_t *pk = c->r + O_DR; /* debit id (16..32) || credit id (32..48): the pair key */
    if (PySet_GET_SIZE(h->pairs) > 0) {
        if (c->pk == NULL && (c->pk = PyBytes_FromStringAndSize((const char *)pk, 32)) == NULL) return -1;
        int in = PySet_Contains(h->pairs, c->pk);
        if (in < 0) return -1;
        if (in) { c->in_pairs = c->seen = c->seen_known = 1; return 0; }
    }
    if (rt_seen_h(h->table, pk, rules_pair_hash(h, c->i, pk), &c->seen, &c->pair_idx) < 0) return -1;
    c->seen_known = 1;
    return 0;
}

/* a successful transfer's pair no rule read: in the Python set already (SideState.pairs), else touched in
 * the table, no store lookup */
int rules_touch(ctx_t *c) {
    HookObject *h = c->h;
    const uint8_t *pk = c->r + O_DR;
    if (PySet_GET_SIZE(h->pairs) > 0) {
        if (c->pk == NULL && (c->pk = PyBytes_FromStringAndSize((const char *)pk, 32)) == NULL) return -1;
        int in = PySet_Contains(h->pairs, c->pk);
        if (in != 0) return in < 0 ? -1 : 0;
    }
    return rt_touch(h->table, pk, rules_pair_hash(h, c->i, pk));
}

/* deviation_bps(out state, amount) -> (ewma, bps, n), saturated as the field table does */
static void deviation(const rent_t *e, u128 amount, int64_t *ewma_f, int64_t *dev_f, int64_t *n_f) {
    uint64_t ewma = e->st[15], n = e->st[16];
    *ewma_f = sat_u128(ewma);
    *n_f = sat_u128(n);
    *dev_f = 0;
    if (!e->has || n == 0 || ewma == 0) {
        if (!e->has) *ewma_f = *n_f = 0;
        return;
    }
    if (amount >= ewma) { /* floor((amount - ewma) * 10000 / ewma) without overflowing */
        u128 d = amount - ewma, q = d / ewma, rem = d % ewma;
        if (q > (u128)(I64_MAX / 10000)) { *dev_f = I64_MAX; return; }
        u128 v = q * 10000 + rem * 10000 / ewma;
        *dev_f = sat_u128(v);
    } else { /* negative: floor of -(d * 10000 / ewma) */
        u128 d = ewma - amount, num = d * 10000;
        u128 q = num / ewma + (num % ewma != 0);
        *dev_f = -(int64_t)q;
    }
}

/* the static fields (ids below F_HEIGHT): read from the record once, before any rule */
static void statics(ctx_t *c) {
    const uint8_t *r = c->r;
    int64_t *v = c->v;
    uint16_t flags = rd16(r + O_FLAGS);
    v[F_AMOUNT] = rd64(r + O_AHI) || rd64(r + O_ALO) > (uint64_t)I64_MAX ? I64_MAX : (int64_t)rd64(r + O_ALO);
    v[F_LEDGER] = rd32(r + O_LEDGER);
    v[F_CODE] = rd16(r + O_CODE);
    v[F_PSP_ID] = v[F_PSP] = rd32(r + O_PSP);
    v[F_FLAGS] = flags;
    v[F_PENDING] = (flags & 2) != 0;
    v[F_TIMEOUT] = rd32(r + O_TIMEOUT);
    v[F_USER_DATA] = sat_u128(le128(r + O_UD));
    v[F_TS] = sat_u128(c->h->ts);
    c->have |= (1ULL << F_HEIGHT) - 1;
}

static int field_slow(ctx_t *c, int f, int64_t *out);

static inline int field(ctx_t *c, int f, int64_t *out) {
    if (c->have >> f & 1) { *out = c->v[f]; return 0; }
    return field_slow(c, f, out);
}

static int field_slow(ctx_t *c, int f, int64_t *out) {
    const uint8_t *r = c->r;
    int64_t v = 0;
    if (f >= F_WOUT0) {
        int which = (f - F_WOUT0) / 6;
        rent_t *e = rules_ctx_entry(c, which);
        if (e == NULL) return -1;
        v = e->has ? sat_u128(risk_window_at(e->st, &c->h->clock, (f - F_WOUT0) % 6)) : 0;
    } else if (f >= F_DEBIT0) {
        int which = f >= F_CREDIT0;
        if (account_field(c, which, f - (which ? F_CREDIT0 : F_DEBIT0), &v) < 0) return -1;
    } else {
        switch (f) {
        case F_AMOUNT: v = rd64(r + O_AHI) || rd64(r + O_ALO) > (uint64_t)I64_MAX ? I64_MAX : (int64_t)rd64(r + O_ALO);
            break;
        case F_LEDGER: v = rd32(r + O_LEDGER); break;
        case F_CODE: v = rd16(r + O_CODE); break;
        case F_PSP_ID: case F_PSP: v = rd32(r + O_PSP); break;
        case F_FLAGS: v = rd16(r + O_FLAGS); break;
        case F_PENDING: v = (rd16(r + O_FLAGS) & 2) != 0; break;
        case F_TIMEOUT: v = rd32(r + O_TIMEOUT); break;
        case F_USER_DATA: v = sat_u128(le128(r + O_UD)); break;
        case F_TS: v = sat_u128(c->h->ts); break;
        case F_HEIGHT:
            if (!c->h->height_ok) { PyErr_SetString(PyExc_OverflowError, "height beyond int64"); return -1; }
            v = c->h->height;
            break;
        case F_NEW_PAYEE:
            if (rules_seen(c) < 0) return -1;
            v = !c->seen;
            break;
        default: { /* F_EWMA, F_DEV_BPS, F_HISTORY_N: the payer's state (the deviation only when read) */
            rent_t *e = rules_ctx_entry(c, 0);
            if (e == NULL) return -1;
            if (f == F_DEV_BPS) {
                deviation(e, le128(r + O_ALO), &c->v[F_EWMA], &c->v[F_DEV_BPS], &c->v[F_HISTORY_N]);
                c->have |= 1ULL << F_EWMA | 1ULL << F_DEV_BPS | 1ULL << F_HISTORY_N;
                *out = c->v[f];
                return 0;
            }
            v = e->has ? sat_u128(e->st[f == F_EWMA ? 15 : 16]) : 0; /* as deviation() gives them */
            break;
        }
        }
    }
    c->v[f] = v;
    c->have |= 1ULL << f;
    *out = v;
    return 0;
}

/* ---- the program -------------------------------------------------------------------------------
 * rule:     rule_index, complex_rest, n_conjuncts, conjunct...
 * conjunct: C_BOOL, field, negated | C_CMP, op, n_lhs, n_rhs, (sign, field or -1, literal) * (n_lhs + n_rhs) */

/* a side's value: 1, or 0 when a partial sum leaves int64 (CEL errs: unknown), -1 a Python error */
static inline int side_value(ctx_t *c, const int64_t *t, int64_t n, int64_t *out) {
    int64_t acc = 0;
    if (n == 1) { /* one field, or one literal (a leading minus only before a literal <= 2^63 - 1) */
        if (t[1] < 0) { *out = t[0] < 0 ? -t[2] : t[2]; return 1; }
        return field(c, (int)t[1], out) < 0 ? -1 : 1;
    }
    for (int64_t k = 0; k < n; k++, t += 3) {
        int64_t v = t[2];
        if (t[1] >= 0 && field(c, (int)t[1], &v) < 0) return -1;
        if (k == 0) acc = t[0] < 0 ? -v : v; /* a leading minus only before a literal <= 2^63 - 1 */
        else if (t[0] < 0 ? __builtin_sub_overflow(acc, v, &acc) : __builtin_add_overflow(acc, v, &acc)) return 0;
    }
    *out = acc;
    return 1;
}

/* 1 true, 0 false, 2 unknown, -1 a Python error; *pc advances past the conjunct */
static inline int compare(int64_t l, int64_t op, int64_t r) {
    switch (op) {
    case OP_LT: return l < r;
    case OP_LE: return l <= r;
    case OP_GT: return l > r;
    case OP_GE: return l >= r;
    case OP_EQ: return l == r;
    default: return l != r;
    }
}

static int conjunct(ctx_t *c, const int64_t **pc) {
    const int64_t *p = *pc;
    int64_t v, l, r;
    if (p[0] == C_BOOL) {
        *pc = p + 3;
        if (field(c, (int)p[1], &v) < 0) return -1;
        return p[2] ? !v : v != 0;
    }
    int64_t op = p[1], nl = p[2], nr = p[3];
    *pc = p + 4 + 3 * (nl + nr);
    int a = side_value(c, p + 4, nl, &l);
    if (a <= 0) return a < 0 ? -1 : 2;
    int b = side_value(c, p + 4 + 3 * nl, nr, &r);
    if (b <= 0) return b < 0 ? -1 : 2;
    return compare(l, op, r);
}

/* one rule's conjuncts after its guard: its index (all true), EV_NO_MATCH (one false) or EV_BAIL */
static int64_t rule_body(ctx_t *c, const rdesc_t *d) {
    const int64_t *q = d->body;
    for (int64_t k = 0; k < d->n; k++) {
        int got = conjunct(c, &q);
        if (got < 0) { PyErr_Clear(); return EV_BAIL; }
        if (got == 2) return EV_BAIL;
        if (got == 0) return EV_NO_MATCH; /* a false conjunct decides the rule: the rest is not read */
    }
    return d->complex_rest ? EV_BAIL : d->rule;
}

/* the rules of a dispatch run whose guard literal is the record's value, in rule order */
static int64_t run_eval(ctx_t *c, const rrun_t *ru) {
    const HookObject *h = c->h;
    const rkey_t *k = h->keys + ru->first;
    int64_t v = c->v[ru->field];
    int32_t lo = 0, hi = ru->end - ru->start;
    while (lo < hi) { /* the first key with lit >= v */
        int32_t mid = (lo + hi) / 2;
        if (k[mid].lit < v) lo = mid + 1;
        else hi = mid;
    }
    for (int32_t j = lo; j < ru->end - ru->start && k[j].lit == v; j++) {
        int64_t got = rule_body(c, &h->rules[k[j].pos]);
        if (got != EV_NO_MATCH) return got;
    }
    return EV_NO_MATCH;
}

/* the deciding rule's index, EV_NO_MATCH, or EV_BAIL (the Python compiled form decides) */
int64_t rules_evaluate(ctx_t *c) {
    const HookObject *h = c->h;
    statics(c);
    for (Py_ssize_t k = 0; k < h->nrules;) {
        const rdesc_t *d = &h->rules[k];
        int64_t got;
        if (d->run >= 0) {
            const rrun_t *ru = &h->runs[d->run];
            got = run_eval(c, ru);
            k = ru->end;
        } else {
            k++;
            if (d->gfield >= 0 && !compare(c->v[d->gfield], d->gop, d->glit)) continue;
            got = rule_body(c, d);
        }
        if (got != EV_NO_MATCH) return got;
    }
    return EV_NO_MATCH;
}

/* a conjunct that compares one static field with one literal: field op lit; 0 when it is not one */
static int guard_of(const int64_t *p, int32_t *f, int8_t *op, int64_t *lit) {
    static const int8_t flip[6] = {OP_GT, OP_GE, OP_LT, OP_LE, OP_EQ, OP_NE};
    if (p[0] == C_BOOL) { /* f (f != 0) or !f (f == 0) */
        if (p[1] >= F_HEIGHT) return 0;
        *f = (int32_t)p[1]; *op = p[2] ? OP_EQ : OP_NE; *lit = 0;
        return 1;
    }
    if (p[2] != 1 || p[3] != 1) return 0;
    const int64_t *a = p + 4, *b = p + 7;
    if (a[1] >= 0 && a[1] < F_HEIGHT && b[1] == -1) {
        *f = (int32_t)a[1]; *op = (int8_t)p[1]; *lit = b[0] < 0 ? -b[2] : b[2];
        return 1;
    }
    if (b[1] >= 0 && b[1] < F_HEIGHT && a[1] == -1) {
        *f = (int32_t)b[1]; *op = flip[p[1]]; *lit = a[0] < 0 ? -a[2] : a[2];
        return 1;
    }
    return 0;
}

static int key_order(const void *x, const void *y) {
    const rkey_t *a = x, *b = y;
    if (a->lit != b->lit) return a->lit < b->lit ? -1 : 1;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

#define RUN_MIN 4 /* shorter runs of `field == literal` guards are checked one by one */

/* h->rules (with their guards), h->runs and h->keys of the checked program h->prog */
int rules_index(HookObject *h) {
    Py_ssize_t n = 0;
    for (const int64_t *p = h->prog, *end = p + h->nprog; p < end; n++) {
        int64_t k = p[2];
        for (p += 3; k > 0; k--) p += p[0] == C_BOOL ? 3 : 4 + 3 * (p[2] + p[3]);
    }
    size_t size = (size_t)n * (sizeof(rdesc_t) + sizeof(rrun_t) + sizeof(rkey_t)) + 1;
    char *mem = PyMem_Malloc(size);
    if (mem == NULL) { PyErr_NoMemory(); return -1; }
    h->rules = (rdesc_t *)mem;
    h->runs = (rrun_t *)(mem + (size_t)n * sizeof(rdesc_t));
    h->keys = (rkey_t *)(mem + (size_t)n * (sizeof(rdesc_t) + sizeof(rrun_t)));
    h->nrules = n;
    const int64_t *p = h->prog;
    for (Py_ssize_t i = 0; i < n; i++) {
        rdesc_t *d = &h->rules[i];
        d->rule = p[0]; d->complex_rest = p[1] != 0; d->n = p[2]; d->body = p + 3;
        d->gfield = -1; d->run = -1; d->gop = 0; d->glit = 0;
        if (d->n > 0 && guard_of(d->body, &d->gfield, &d->gop, &d->glit)) {
            d->body += d->body[0] == C_BOOL ? 3 : 10;
            d->n--;
        }
        int64_t k = p[2];
        for (p += 3; k > 0; k--) p += p[0] == C_BOOL ? 3 : 4 + 3 * (p[2] + p[3]);
    }
    int32_t nruns = 0, nkeys = 0;
    for (int32_t i = 0; i < (int32_t)n;) {
        int32_t f = h->rules[i].gfield, j = i;
        while (j < (int32_t)n && f >= 0 && h->rules[j].gfield == f && h->rules[j].gop == OP_EQ) j++;
        if (j - i < RUN_MIN) { i = j > i ? j : i + 1; continue; }
        rrun_t *ru = &h->runs[nruns];
        ru->field = f; ru->start = i; ru->end = j; ru->first = nkeys;
        for (int32_t k = i; k < j; k++) {
            h->keys[nkeys + k - i] = (rkey_t){h->rules[k].glit, k};
        }
        qsort(h->keys + nkeys, (size_t)(j - i), sizeof(rkey_t), key_order);
        h->rules[i].run = nruns++;
        nkeys += j - i;
        i = j;
    }
    return 0;
}

/* the program's shape, checked once so evaluation never reads outside it */
int rules_check_program(const int64_t *p, Py_ssize_t n) {
    const int64_t *end = p + n;
    while (p < end) {
        if (end - p < 3 || p[0] < 0 || p[2] < 0) return 0;
        int64_t k = p[2];
        p += 3;
        for (; k > 0; k--) {
            if (end - p < 3) return 0;
            if (p[0] == C_BOOL) {
                if (p[1] < 0 || p[1] >= F_COUNT) return 0;
                p += 3;
                continue;
            }
            if (p[0] != C_CMP || end - p < 4 || p[1] < OP_LT || p[1] > OP_NE || p[2] < 1 || p[3] < 1 ||
                p[2] > 64 || p[3] > 64 || end - p < 4 + 3 * (p[2] + p[3]))
                return 0;
            for (int64_t t = 0; t < p[2] + p[3]; t++) {
                const int64_t *term = p + 4 + 3 * t;
                if (term[1] < -1 || term[1] >= F_COUNT || (term[0] < 0 && term[1] >= 0 && (t == 0 || t == p[2])) || term[2] == INT64_MIN)
                    return 0;
            }
            p += 4 + 3 * (p[2] + p[3]);
        }
    }
    return 1;
}
