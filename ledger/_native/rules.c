/* sovledger rules hook in C: the compiled rule program and the block's risk states
 * (ledger/rules/lowering.py builds the program; ledger/apply/native_transfers.py creates one Hook per
 * call of the C transfer engine and hands it to apply.c as the rules hook).
 *
 * hook(i, debit_state, credit_state) -> bool, the protocol of apply.c's rule_hook:
 *   1. evaluate the lowered rules in precedence order over record i (fields computed lazily, once);
 *      the first rule whose conjuncts are all true decides: (rule, False) is appended to `decided`
 *      and the hook returns False (the reference path applies the record with that verdict);
 *   2. a rule the program cannot decide (a conjunct outside the lowered shapes, an int64 overflow in
 *      a sum, a Python error while reading an input): the Python compiled form decides the whole record (`fallback(i, dra, cra)` -> verdict), so
 *      every such case gets exactly the verdict it got before;
 *   3. no rule matched: record what effects.after_success records outside a chain (risk windows of
 *      payer, payee and PSP, the new payer-payee pair, the external-ref index) and return True.
 * Risk states and pairs live in the RiskTable (risk_table.c) across blocks: a key's state is read from
 * the block's Python dict `risk` (SideState.risk: keys a Python path changed in this block; looked at
 * only when it has any), else the table (the block's changes, the committed states, the store). A
 * recorded state goes back where it came from: into that Python list in place, else into the table,
 * so a key's in-block state is in exactly one of the two. Pairs likewise: the Python set `pairs`
 * (only when it has any), else the table, which keeps the block's new and touched pairs. A pair is
 * looked up in the store only when a rule reads risk.new_payee; a successful transfer whose pair no
 * rule read marks it touched without a lookup (seal puts those with no-overwrite).
 * The fields and the program itself: rules_eval.c. */
#include "rules.h"

PyObject *S_DP, *S_DPO, *S_CP, *S_CPO, *S_FLAGS, *S_CODE, *S_LEDGER, *S_RECORD;

/* ---- the transfer's risk states ----------------------------------------------------------------- */
static void key_of(const uint8_t *r, int which, uint8_t *key, uint8_t *klen) {
    if (which == 2) {
        key[0] = 'p';
        uint32_t psp = rd32(r + O_PSP);
        for (int b = 0; b < 4; b++) key[1 + b] = (uint8_t)(psp >> (24 - 8 * b));
        *klen = 5;
    } else {
        key[0] = which == 0 ? 'o' : 'i';
        memcpy(key + 1, r + (which == 0 ? O_DR : O_CR), 16);
        *klen = 17;
    }
}

/* the hash of record i's key `which`: the payer's and payee's from the ring prefetch_ahead filled, the
 * PSP's from a small cache by PSP id (a block has few PSPs), else computed */
static uint64_t key_hash(HookObject *h, Py_ssize_t i, int which, const uint8_t *key, int klen) {
    if (which == 2) {
        uint32_t psp = rd32((const uint8_t *)h->recs.buf + i * REC + O_PSP);
        pspc_t *p = &h->pspc[psp & (HOOK_PSPS - 1)];
        if (!p->valid || p->psp != psp) { p->psp = psp; p->h = rt_hash(key, klen); p->valid = 1; }
        return p->h;
    }
    const hring_t *g = &h->ring[i & (HOOK_RING - 1)];
    return g->i == i ? g->h[which] : rt_hash(key, klen);
}

/* key's state as the block sees it: the Python dict's list (only when the dict has any), else the table */
static int load(ctx_t *c, rent_t *e, int which) {
    HookObject *h = c->h;
    if (PyDict_GET_SIZE(h->risk) > 0) {
        PyObject *k = PyBytes_FromStringAndSize((const char *)e->key, e->klen);
        if (k == NULL) return -1;
        PyObject *lst = PyDict_GetItemWithError(h->risk, k);
        Py_DECREF(k);
        if (lst != NULL) {
            if (risk_read_list(lst, e->buf) < 0) return -1;
            e->list = Py_NewRef(lst);
            e->st = e->buf;
            e->has = 1;
            return 0;
        }
        if (PyErr_Occurred()) return -1;
    }
    if (rt_entry_fast(h->table, e->key, e->klen, key_hash(h, c->i, which, e->key, e->klen), &e->idx) < 0) return -1;
    e->has = h->table->states.ents[e->idx].has;
    return 0;
}

rent_t *rules_ctx_entry(ctx_t *c, int which) {
    rent_t *e = &c->ent[which];
    if (!e->loaded) {
        e->list = NULL;
        key_of(c->r, which, e->key, &e->klen);
        if (load(c, e, which) < 0) return NULL;
        e->loaded = 1;
    }
    if (e->list == NULL) e->st = c->h->table->states.ents[e->idx].st; /* (another key's insert may move them) */
    return e;
}

/* ---- cache prefetch: the table's slots of record i + 4's keys, the entries of record i + 2's -------- */
/* (PREFETCH, risk_table.h: without its empty asm GCC 12 left the entries unprefetched) */

/* stage 0: the key's first slot; stage 1: the entry of the first slot (of a few) whose tag is the key's */
static void prefetch_state(const tmap_t *m, uint64_t hash, int stage) {
    size_t s = rt_pos(hash, m->mask);
    if (stage == 0) {
        PREFETCH(&m->slots[s]);
        return;
    }
    for (int probe = 0; probe < 4; probe++, s = (s + 1) & m->mask) {
        uint64_t v = m->slots[s];
        if (v == RT_EMPTY) return;
        if ((v ^ hash) >> 32) continue; /* another key's slot */
        const char *e = (const char *)&m->ents[(uint32_t)v]; /* 160 bytes: 3 or 4 cache lines */
        PREFETCH(e);
        PREFETCH(e + 64);
        PREFETCH(e + 128);
        PREFETCH(e + sizeof(tent_t) - 1);
        return;
    }
}

static void prefetch_pair(const pmap_t *m, uint64_t hash, int stage) {
    size_t s = rt_pos(hash, m->mask);
    if (stage == 0) {
        PREFETCH(&m->slots[s]);
        return;
    }
    for (int probe = 0; probe < 4; probe++, s = (s + 1) & m->mask) {
        uint64_t v = m->slots[s];
        if (v == RT_EMPTY) return;
        if ((v ^ hash) >> 32) continue;
        PREFETCH(m->keys[(uint32_t)v]);
        PREFETCH(m->keys[(uint32_t)v] + PAIR_KEY_LEN - 1); /* (a key may straddle two lines) */
        PREFETCH(&m->state[(uint32_t)v]);
        return;
    }
}

/* for writing (the empty asm as in PREFETCH) */
#define PREFETCH_W(p)                                                                                        \
    do {                                                                                                    \
        const void *p_ = (p);                                                                               \
        __asm__ volatile("" : : "r"(p_));                                                                   \
        __builtin_prefetch(p_, 1);                                                                          \
    } while (0)

/* the lines the block writes next, in order: the committed values rt_change saves (about two per record:
 * those of record i + 2) and the pair key rt_touch appends */
static void prefetch_writes(const RiskTableObject *t) {
    if (t->nsaved + 6 <= t->capsaved) {
        const char *s = (const char *)&t->saved[t->nsaved + 4], *end = (const char *)&t->saved[t->nsaved + 6];
        for (; s < end; s += 64) PREFETCH_W(s);
        PREFETCH_W(end - 1);
    }
    if (t->pairs.n + 2 < t->pairs.cap) PREFETCH_W(t->pairs.keys[t->pairs.n + 2]);
}

/* record i + 4's hashes into the ring (its slots prefetched), record i + 2's entries prefetched from it */
static void prefetch_ahead(HookObject *h, Py_ssize_t i) {
    const RiskTableObject *t = h->table;
    const tmap_t *m = &t->states;
    prefetch_writes(t);
    int out = h->track_out && m->slots != NULL, in = h->track_in && m->slots != NULL;
    int pairs = h->track_pairs && t->pairs.slots != NULL;
    if (i + 4 < h->n) {
        hring_t *g = &h->ring[(i + 4) & (HOOK_RING - 1)];
        const uint8_t *r = (const uint8_t *)h->recs.buf + (i + 4) * REC;
        uint8_t key[17], klen;
        key_of(r, 0, key, &klen);
        g->h[0] = rt_hash(key, klen);
        key_of(r, 1, key, &klen);
        g->h[1] = rt_hash(key, klen);
        g->h[2] = rt_hash(r + O_DR, PAIR_KEY_LEN);
        g->i = i + 4;
        if (out) prefetch_state(m, g->h[0], 0);
        if (in) prefetch_state(m, g->h[1], 0);
        if (pairs) prefetch_pair(&t->pairs, g->h[2], 0);
    }
    const hring_t *g = &h->ring[(i + 2) & (HOOK_RING - 1)];
    if (g->i != i + 2) return;
    if (out) prefetch_state(m, g->h[0], 1);
    if (in) prefetch_state(m, g->h[1], 1);
    if (pairs) prefetch_pair(&t->pairs, g->h[2], 1);
}

/* a fresh context for record i (nothing loaded, no field computed) */
static void ctx_init(ctx_t *c, HookObject *h, Py_ssize_t i, const u128 *bal, PyObject *dra, PyObject *cra) {
    c->h = h; c->i = i; c->r = (const uint8_t *)h->recs.buf + i * REC; c->dra = dra; c->cra = cra; c->bal = bal;
    c->accts = NULL;
    c->pk = NULL;
    c->have = 0;
    for (int w = 0; w < 3; w++) { c->ent[w].loaded = 0; c->ent[w].list = NULL; }
    c->seen_known = c->in_pairs = c->seen = 0;
    c->pair_idx = -1;
}

/* forget what the context loaded (after Python code ran that may have moved a key) */
static void ctx_release(ctx_t *c) {
    for (int w = 0; w < 3; w++) {
        Py_CLEAR(c->ent[w].list);
        c->ent[w].loaded = 0;
    }
    Py_CLEAR(c->pk);
    c->seen_known = c->in_pairs = c->seen = 0;
}

/* a state into the Python list it came from, in place */
static int write_list(const uint64_t st[RISK_STATE_LEN], PyObject *list) {
    for (int i = 0; i < RISK_STATE_LEN; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st[i]);
        if (v == NULL) return -1;
        PyList_SetItem(list, i, v); /* steals v, releases the old item */
    }
    return 0;
}

/* ---- after no rule matched: what effects.after_success records outside a chain ------------------ */
static int record_one(HookObject *h, ctx_t *c, int which, uint64_t amount) {
    rent_t *e = rules_ctx_entry(c, which);
    if (e == NULL) return -1;
    if (e->list == NULL && rt_change_fast(h->table, e->idx) < 0) return -1; /* (saves the committed value first) */
    risk_record_at(e->st, &h->clock, amount);
    e->has = 1;
    return e->list != NULL ? write_list(e->st, e->list) : 0;
}

static int after_success(HookObject *h, ctx_t *c) {
    const uint8_t *r = c->r;
    uint64_t amount = rd64(r + O_AHI) ? RISK_TOP : rd64(r + O_ALO);
    if ((h->track_out && record_one(h, c, 0, amount) < 0) || (h->track_in && record_one(h, c, 1, amount) < 0) ||
        (h->track_psp && record_one(h, c, 2, amount) < 0))
        return -1;
    if (h->track_pairs) { /* looked up only if a rule read it: else marked touched (ledger/_native/risk_table.c) */
        if (!c->seen_known) {
            if (rules_touch(c) < 0) return -1;
        } else if (!c->in_pairs) { /* unseen: new; committed: paid again (every paid pair is journaled:
                                      risk_table.c; one in the Python set is journaled from SideState.paid) */
            rt_add_pair(h->table, c->pair_idx);
        }
    }
    static const uint8_t zero[32];
    if (memcmp(r + O_EXT, zero, 32) != 0) {
        uint8_t k[36];
        uint32_t psp = rd32(r + O_PSP);
        for (int b = 0; b < 4; b++) k[b] = (uint8_t)(psp >> (24 - 8 * b));
        memcpy(k + 4, r + O_EXT, 32);
        PyObject *key = PyBytes_FromStringAndSize((const char *)k, 36);
        PyObject *tid = key ? PyBytes_FromStringAndSize((const char *)r + O_ID, 16) : NULL;
        int bad = tid == NULL || PyDict_SetItem(h->extrefs, key, tid) < 0;
        Py_XDECREF(key);
        Py_XDECREF(tid);
        if (bad) return -1;
    }
    return 0;
}

/* ---- the Hook type ------------------------------------------------------------------------------ */
/* the fallback's verdict: appended to `decided` (returns 0: the record is decided) or NO_MATCH (1) */
static int take_fallback(HookObject *h, Py_ssize_t i, PyObject *dra, PyObject *cra) {
    PyObject *idx = PyLong_FromSsize_t(i), *got = NULL;
    if (idx == NULL) return -1;
    PyObject *a[3] = {idx, dra, cra};
    got = PyObject_Vectorcall(h->fallback, a, 3, NULL);
    Py_DECREF(idx);
    if (got == NULL) return -1;
    Py_ssize_t rule = PyTuple_Check(got) && PyTuple_GET_SIZE(got) == 2 ? PyLong_AsSsize_t(PyTuple_GET_ITEM(got, 0)) : -3;
    int out = -1;
    if (rule == -3 && !PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a verdict is (rule, errored)");
    else if (!(rule == -1 && PyErr_Occurred())) out = rule == -1 ? 1 : PyList_Append(h->decided, got) < 0 ? -1 : 0;
    Py_DECREF(got);
    return out;
}

/* apply.c's direct entry (the capsule `fast_entry`, "sovledger.rules_hook.2"), with the engine's balances
 * and its [(id, AccountState)] list with the payer's and payee's positions (their objects are read only
 * when a rule reads a field the balances lack): 1 applied here, 0 decided by a rule (appended to
 * `decided`), 2 the Python form must decide (apply.c then syncs the account objects and calls the hook
 * through the call protocol, which evaluates again and hands over), -1 an error */
static int hook_fast(void *self, Py_ssize_t i, const u128 *bal, PyObject *accts, Py_ssize_t da, Py_ssize_t ca) {
    HookObject *h = (HookObject *)self;
    if (i < 0 || i >= h->n) { PyErr_SetString(PyExc_IndexError, "record index out of range"); return -1; }
    ctx_t c;
    ctx_init(&c, h, i, bal, NULL, NULL);
    c.accts = accts; c.da = da; c.ca = ca;
    prefetch_ahead(h, i);
    int out = -1;
    int64_t verdict = h->active ? rules_evaluate(&c) : EV_NO_MATCH;
    if (verdict >= 0) {
        PyObject *v = Py_BuildValue("(nO)", (Py_ssize_t)verdict, Py_False);
        if (v != NULL && PyList_Append(h->decided, v) == 0) out = 0;
        Py_XDECREF(v);
    } else if (verdict == EV_BAIL) {
        out = 2;
    } else if (after_success(h, &c) == 0) {
        out = 1;
    }
    ctx_release(&c);
    return out;
}

static PyObject *hook_fast_entry(PyObject *self, void *unused) {
    (void)unused;
    PyObject *cap = PyCapsule_New((void *)hook_fast, "sovledger.rules_hook.2", NULL);
    if (cap != NULL && PyCapsule_SetContext(cap, self) < 0) Py_CLEAR(cap); /* hook_fast's first argument */
    return cap;
}

/* the hook's answer for record i: True applied here, False decided by a rule, NULL an error */
static PyObject *hook_record(HookObject *h, Py_ssize_t i, PyObject *dra, PyObject *cra) {
    if (i < 0 || i >= h->n) { PyErr_SetString(PyExc_IndexError, "record index out of range"); return NULL; }
    ctx_t c;
    ctx_init(&c, h, i, NULL, dra, cra);
    PyObject *result = NULL;
    int64_t verdict = h->active ? rules_evaluate(&c) : EV_NO_MATCH;
    if (verdict >= 0) {
        PyObject *v = Py_BuildValue("(nO)", (Py_ssize_t)verdict, Py_False);
        if (v != NULL && PyList_Append(h->decided, v) == 0) result = Py_NewRef(Py_False);
        Py_XDECREF(v);
        goto done;
    }
    if (verdict == EV_BAIL) {
        int got = take_fallback(h, i, dra, cra);
        ctx_release(&c); /* the Python form ran: load the states afresh */
        if (got <= 0) { result = got < 0 ? NULL : Py_NewRef(Py_False); goto done; }
    }
    if (after_success(h, &c) == 0) result = Py_NewRef(Py_True);
done:
    ctx_release(&c);
    return result;
}

static int index_arg(PyObject *o, Py_ssize_t *i) {
    *i = PyLong_AsSsize_t(o);
    return *i == -1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *hook_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw) {
    Py_ssize_t i;
    if (PyVectorcall_NARGS(nargsf) != 3 || kw != NULL) {
        PyErr_SetString(PyExc_TypeError, "hook(i, debit_state, credit_state)");
        return NULL;
    }
    if (index_arg(args[0], &i) < 0) return NULL;
    return hook_record((HookObject *)self, i, args[1], args[2]);
}

/* evaluate(i, debit_state, credit_state) -> rule index, -1 (no match) or None (the Python form would
 * decide): the program alone, nothing recorded (for the tests) */
static PyObject *hook_evaluate(PyObject *self, PyObject *args) {
    HookObject *h = (HookObject *)self;
    Py_ssize_t i;
    PyObject *dra, *cra;
    if (!PyArg_ParseTuple(args, "nOO", &i, &dra, &cra)) return NULL;
    if (i < 0 || i >= h->n) { PyErr_SetString(PyExc_IndexError, "record index out of range"); return NULL; }
    ctx_t c;
    ctx_init(&c, h, i, NULL, dra, cra);
    int64_t v = rules_evaluate(&c);
    ctx_release(&c);
    if (v == EV_BAIL) Py_RETURN_NONE;
    return PyLong_FromLongLong(v);
}

/* layout() -> [(rule index, guard field or -1, guard operator, guard literal, run or -1)]: the program as
 * evaluated (guards and dispatch runs, for the tests) */
static PyObject *hook_layout(PyObject *self, PyObject *unused) {
    (void)unused;
    HookObject *h = (HookObject *)self;
    PyObject *out = PyList_New(h->nrules);
    for (Py_ssize_t k = 0; out != NULL && k < h->nrules; k++) {
        const rdesc_t *d = &h->rules[k];
        int32_t run = -1;
        for (Py_ssize_t j = k; j >= 0 && run < 0; j--) /* the run this rule belongs to, if any */
            if (h->rules[j].run >= 0 && h->runs[h->rules[j].run].end > k) run = h->rules[j].run;
        PyObject *t = Py_BuildValue("(LiiLi)", (long long)d->rule, (int)d->gfield, (int)d->gop,
                                    (long long)d->glit, (int)run);
        if (t == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, k, t);
    }
    return out;
}

static void hook_dealloc(PyObject *self) {
    HookObject *h = (HookObject *)self;
    if (h->has_recs) PyBuffer_Release(&h->recs);
    PyMem_Free(h->prog);
    PyMem_Free(h->rules);
    Py_XDECREF(h->risk); Py_XDECREF(h->table); Py_XDECREF(h->pairs);
    Py_XDECREF(h->extrefs); Py_XDECREF(h->decided); Py_XDECREF(h->fallback);
    Py_TYPE(self)->tp_free(self);
}

static const char HOOK_DOC[] =
    "Hook(program, records, ts, height, active, tracks, risk, table, pairs, extrefs, decided, fallback): the rules hook of one C transfer-engine call (ledger/_native/rules.c).\n"
    "tracks: bit 0 payer windows, 1 payee windows, 2 PSP windows, 3 payer-payee pairs.";

static PyObject *hook_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Py_buffer prog;
    unsigned long long ts;
    PyObject *height;
    int active, tracks;
    HookObject *h = (HookObject *)type->tp_alloc(type, 0);
    if (h == NULL) return NULL;
    h->vectorcall = hook_vectorcall;
    if (kw != NULL && PyDict_GET_SIZE(kw)) { PyErr_SetString(PyExc_TypeError, "Hook takes no keywords"); goto fail; }
    if (!PyArg_ParseTuple(args, "y*y*KOpiO!O!O!O!O!O", &prog, &h->recs, &ts, &height, &active, &tracks,
                          &PyDict_Type, &h->risk, &RiskTableType, &h->table, &PySet_Type, &h->pairs,
                          &PyDict_Type, &h->extrefs, &PyList_Type, &h->decided, &h->fallback)) {
        h->risk = h->pairs = h->extrefs = h->decided = h->fallback = NULL;
        h->table = NULL;
        goto fail;
    }
    h->has_recs = 1;
    Py_INCREF(h->risk); Py_INCREF(h->table); Py_INCREF(h->pairs);
    Py_INCREF(h->extrefs); Py_INCREF(h->decided); Py_INCREF(h->fallback);
    h->nprog = prog.len / (Py_ssize_t)sizeof(int64_t);
    h->prog = PyMem_Malloc((size_t)prog.len + 8);
    if (h->prog != NULL) memcpy(h->prog, prog.buf, (size_t)prog.len);
    int shape_ok = prog.len % (Py_ssize_t)sizeof(int64_t) == 0 && h->prog != NULL &&
                   rules_check_program(h->prog, h->nprog);
    PyBuffer_Release(&prog);
    if (!shape_ok) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "malformed rule program"); goto fail; }
    if (rules_index(h) < 0) goto fail;
    for (int k = 0; k < HOOK_RING; k++) h->ring[k].i = -1;
    if (h->recs.len % REC) { PyErr_SetString(PyExc_ValueError, "records must be whole transfers"); goto fail; }
    h->n = h->recs.len / REC;
    h->ts = ts;
    risk_clock(&h->clock, ts);
    h->height = PyLong_AsLongLong(height);
    h->height_ok = !(h->height == -1 && PyErr_Occurred());
    if (!h->height_ok) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) goto fail;
        PyErr_Clear();
    }
    h->active = active;
    h->track_out = tracks & 1; h->track_in = tracks >> 1 & 1; h->track_psp = tracks >> 2 & 1;
    h->track_pairs = tracks >> 3 & 1;
    return (PyObject *)h;
fail:
    Py_DECREF(h);
    return NULL;
}

static PyMethodDef HOOK_METHODS[] = {
    {"evaluate", hook_evaluate, METH_VARARGS,
     "evaluate(i, debit_state, credit_state) -> rule index, -1 or None (the Python form decides)."},
    {"layout", hook_layout, METH_NOARGS,
     "layout() -> [(rule, guard field or -1, guard operator, guard literal, dispatch run or -1)] per rule."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef HOOK_GETSET[] = {
    {"fast_entry", hook_fast_entry, NULL,
     "A capsule of the C entry point apply.c calls with the engine's balances (sovledger.rules_hook.2).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ledger._native._risk.Hook",
    .tp_basicsize = sizeof(HookObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = HOOK_DOC,
    .tp_new = hook_new,
    .tp_dealloc = hook_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(HookObject, vectorcall),
    .tp_methods = HOOK_METHODS,
    .tp_getset = HOOK_GETSET,
};

int rules_add_types(PyObject *module) {
    const char *names[8] = {"debits_pending", "debits_posted", "credits_pending", "credits_posted", "flags", "code",
                            "ledger", "record"};
    PyObject **slots[8] = {&S_DP, &S_DPO, &S_CP, &S_CPO, &S_FLAGS, &S_CODE, &S_LEDGER, &S_RECORD};
    for (int k = 0; k < 8; k++)
        if (*slots[k] == NULL && (*slots[k] = PyUnicode_InternFromString(names[k])) == NULL) return -1;
    if (PyType_Ready(&HookType) < 0 || risk_table_add_type(module) < 0) return -1;
    if (PyModule_AddIntConstant(module, "FIELD_COUNT", F_COUNT) < 0) return -1;
    return PyModule_AddObjectRef(module, "Hook", (PyObject *)&HookType);
}
