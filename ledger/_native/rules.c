/* sovledger rules hook in C: the compiled rule program and the block's risk states
 * (ledger/rules/lowering.py builds the program; ledger/apply/native_transfers.py creates one Hook per
 * call of the C transfer engine and hands it to apply.c as the rules hook).
 *
 * hook(i, debit_state, credit_state) -> bool, the protocol of apply.c's rule_hook:
 *   1. evaluate the lowered rules in precedence order over record i (fields computed lazily, once);
 *      the first rule whose conjuncts are all true decides: (rule, False) is appended to `decided`
 *      and the hook returns False (the reference path applies the record with that verdict);
 *   2. a rule the program cannot decide (a conjunct outside the lowered shapes, an int64 overflow in
 *      a sum, a Python error while reading an input): the risk states are flushed to the block and
 *      the Python compiled form decides the whole record (`fallback(i, dra, cra)` -> verdict), so
 *      every such case gets exactly the verdict it got before;
 *   3. no rule matched: record what effects.after_success records outside a chain (risk windows of
 *      payer, payee and PSP, the new payer-payee pair, the external-ref index) and return True.
 * Risk states touched in this call live in a C table seeded on first touch from the block
 * (`risk[key]`, else `state(key)`, the same lookups as the Python hook); `flush()` writes the changed
 * ones back into `risk` (in place when the block already had the list, else a new list inserted in
 * first-touch order), so everything after the call sees exactly the state the Python hook left.
 * The fields and the program itself: rules_eval.c. */
#include "rules.h"

PyObject *S_DP, *S_DPO, *S_CP, *S_CPO, *S_FLAGS, *S_CODE, *S_LEDGER, *S_RECORD;

/* ---- risk state table ------------------------------------------------------------------------- */
static size_t key_hash(const uint8_t *k, int n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < n; i++) h = (h ^ k[i]) * 0x100000001b3ULL;
    return (size_t)(h ^ (h >> 31));
}

/* the entry of key, seeded on first touch as SideState.state reads: the block's list, the committed
 * cache (copied), else state(key) (None: no history) */
static rent_t *entry(HookObject *h, const uint8_t *key, int klen) {
    size_t s = key_hash(key, klen) & h->mask;
    for (; h->slots[s] >= 0; s = (s + 1) & h->mask) {
        rent_t *e = &h->ents[h->slots[s]];
        if (e->klen == klen && memcmp(e->key, key, (size_t)klen) == 0) return e;
    }
    if (h->nents == h->cap) { PyErr_SetString(PyExc_RuntimeError, "risk state table full"); return NULL; }
    rent_t *e = &h->ents[h->nents];
    memset(e, 0, sizeof *e);
    PyObject *k = PyBytes_FromStringAndSize((const char *)key, klen), *got = NULL;
    if (k == NULL) return NULL;
    PyObject *lst = PyDict_GetItemWithError(h->risk, k), *base = NULL;
    int ok = 0;
    if (lst != NULL) {
        ok = risk_read_list(lst, e->st) == 0;
        if (ok) { e->list = Py_NewRef(lst); e->has = 1; }
    } else if (!PyErr_Occurred() && (base = PyDict_GetItemWithError(h->committed_risk, k)) != NULL) {
        ok = risk_read_list(base, e->st) == 0;
        e->has = 1;
    } else if (!PyErr_Occurred() && (got = PyObject_CallOneArg(h->state_fn, k)) != NULL) {
        if (got == Py_None) { memset(e->st, 0, sizeof e->st); ok = 1; }
        else { ok = risk_read_list(got, e->st) == 0; e->has = 1; }
    }
    Py_DECREF(k);
    Py_XDECREF(got);
    if (!ok) { Py_CLEAR(e->list); return NULL; }
    memcpy(e->key, key, (size_t)klen);
    e->klen = (uint8_t)klen;
    h->slots[s] = (int32_t)h->nents++;
    return e;
}

static void key_of(const uint8_t *r, int which, uint8_t *key, int *klen) {
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

rent_t *rules_ctx_entry(ctx_t *c, int which) {
    if (c->ent[which] == NULL) {
        uint8_t key[17];
        int klen;
        key_of(c->r, which, key, &klen);
        c->ent[which] = entry(c->h, key, klen);
    }
    return c->ent[which];
}

static PyObject *state_list(const uint64_t st[RISK_STATE_LEN], PyObject *into) {
    PyObject *list = into ? into : PyList_New(RISK_STATE_LEN);
    if (list == NULL) return NULL;
    for (int i = 0; i < RISK_STATE_LEN; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st[i]);
        if (v == NULL) { if (!into) Py_DECREF(list); return NULL; }
        PyList_SetItem(list, i, v); /* steals v, releases the old item */
    }
    return list;
}

/* write the changed states back into the block's risk dict */
static int flush(HookObject *h) {
    for (size_t q = 0; q < h->norder; q++) {
        rent_t *e = &h->ents[h->order[q]];
        if (!e->changed) continue;
        if (e->list != NULL) {
            if (state_list(e->st, e->list) == NULL) return -1;
        } else {
            PyObject *list = state_list(e->st, NULL);
            PyObject *k = list ? PyBytes_FromStringAndSize((const char *)e->key, e->klen) : NULL;
            int bad = k == NULL || PyDict_SetItem(h->risk, k, list) < 0;
            Py_XDECREF(k);
            if (bad) { Py_XDECREF(list); return -1; }
            e->list = list;
        }
        e->changed = 0;
    }
    return 0;
}

/* ---- after no rule matched: what effects.after_success records outside a chain ------------------ */
static int record_one(HookObject *h, ctx_t *c, int which, uint64_t amount) {
    rent_t *e = rules_ctx_entry(c, which);
    if (e == NULL) return -1;
    if (!e->dirty) {
        e->dirty = 1;
        h->order[h->norder++] = (int32_t)(e - h->ents);
    }
    e->has = 1;
    e->changed = 1;
    risk_record(e->st, h->ts, amount);
    return 0;
}

static int after_success(HookObject *h, ctx_t *c) {
    const uint8_t *r = c->r;
    uint64_t amount = rd64(r + O_AHI) ? RISK_TOP : rd64(r + O_ALO);
    if ((h->track_out && record_one(h, c, 0, amount) < 0) || (h->track_in && record_one(h, c, 1, amount) < 0) ||
        (h->track_psp && record_one(h, c, 2, amount) < 0))
        return -1;
    if (h->track_pairs) {
        if (rules_seen(c) < 0) return -1;
        if (!c->in_pairs && !c->seen && PySet_Add(h->pairs, c->pk) < 0) return -1;
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

/* apply.c's direct entry (the capsule `fast_entry`), with the engine's balances: 1 applied here, 0 decided
 * by a rule (appended to `decided`), 2 the Python form must decide (apply.c then syncs the account objects
 * and calls the hook through the call protocol, which evaluates again and hands over), -1 an error */
static int hook_fast(void *self, Py_ssize_t i, const u128 *bal, PyObject *dra, PyObject *cra) {
    HookObject *h = (HookObject *)self;
    if (i < 0 || i >= h->n) { PyErr_SetString(PyExc_IndexError, "record index out of range"); return -1; }
    ctx_t c;
    memset(&c, 0, sizeof c);
    c.h = h; c.r = (const uint8_t *)h->recs.buf + i * REC; c.dra = dra; c.cra = cra; c.bal = bal;
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
    Py_XDECREF(c.pk);
    return out;
}

static PyObject *hook_fast_entry(PyObject *self, void *unused) {
    (void)unused;
    PyObject *cap = PyCapsule_New((void *)hook_fast, "sovledger.rules_hook", NULL);
    if (cap != NULL && PyCapsule_SetContext(cap, self) < 0) Py_CLEAR(cap); /* hook_fast's first argument */
    return cap;
}

/* the hook's answer for record i: True applied here, False decided by a rule, NULL an error */
static PyObject *hook_record(HookObject *h, Py_ssize_t i, PyObject *dra, PyObject *cra) {
    if (i < 0 || i >= h->n) { PyErr_SetString(PyExc_IndexError, "record index out of range"); return NULL; }
    ctx_t c;
    memset(&c, 0, sizeof c);
    c.h = h; c.r = (const uint8_t *)h->recs.buf + i * REC; c.dra = dra; c.cra = cra;
    PyObject *result = NULL;
    int64_t verdict = h->active ? rules_evaluate(&c) : EV_NO_MATCH;
    if (verdict >= 0) {
        PyObject *v = Py_BuildValue("(nO)", (Py_ssize_t)verdict, Py_False);
        if (v != NULL && PyList_Append(h->decided, v) == 0) result = Py_NewRef(Py_False);
        Py_XDECREF(v);
        goto done;
    }
    if (verdict == EV_BAIL) {
        int got = flush(h) < 0 ? -1 : take_fallback(h, i, dra, cra);
        if (got <= 0) { result = got < 0 ? NULL : Py_NewRef(Py_False); goto done; }
    }
    if (after_success(h, &c) == 0) result = Py_NewRef(Py_True);
done:
    Py_XDECREF(c.pk);
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
    memset(&c, 0, sizeof c);
    c.h = h; c.r = (const uint8_t *)h->recs.buf + i * REC; c.dra = dra; c.cra = cra;
    int64_t v = rules_evaluate(&c);
    Py_XDECREF(c.pk);
    if (v == EV_BAIL) Py_RETURN_NONE;
    return PyLong_FromLongLong(v);
}

static PyObject *hook_flush(PyObject *self, PyObject *unused) {
    (void)unused;
    if (flush((HookObject *)self) < 0) return NULL;
    Py_RETURN_NONE;
}

static void hook_dealloc(PyObject *self) {
    HookObject *h = (HookObject *)self;
    if (h->has_recs) PyBuffer_Release(&h->recs);
    for (size_t q = 0; h->ents != NULL && q < h->nents; q++) Py_XDECREF(h->ents[q].list);
    PyMem_Free(h->ents);
    PyMem_Free(h->slots);
    PyMem_Free(h->order);
    PyMem_Free(h->prog);
    Py_XDECREF(h->risk); Py_XDECREF(h->committed_risk); Py_XDECREF(h->state_fn); Py_XDECREF(h->pairs); Py_XDECREF(h->pairs_committed);
    Py_XDECREF(h->get_pair); Py_XDECREF(h->extrefs); Py_XDECREF(h->decided); Py_XDECREF(h->fallback);
    Py_TYPE(self)->tp_free(self);
}

static const char HOOK_DOC[] =
    "Hook(program, records, ts, height, active, tracks, risk, committed_risk, state, pairs, pairs_committed, get_pair, extrefs,"
    " decided, fallback): the rules hook of one C transfer-engine call (ledger/_native/rules.c).\n"
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
    if (!PyArg_ParseTuple(args, "y*y*KOpiO!O!OO!O!OO!O!O", &prog, &h->recs, &ts, &height, &active, &tracks,
                          &PyDict_Type, &h->risk, &PyDict_Type, &h->committed_risk, &h->state_fn, &PySet_Type, &h->pairs, &PyDict_Type,
                          &h->pairs_committed, &h->get_pair, &PyDict_Type, &h->extrefs, &PyList_Type, &h->decided,
                          &h->fallback)) {
        h->risk = h->committed_risk = h->state_fn = h->pairs = h->pairs_committed = h->get_pair = h->extrefs = h->decided = NULL;
        h->fallback = NULL;
        goto fail;
    }
    h->has_recs = 1;
    Py_INCREF(h->risk); Py_INCREF(h->committed_risk); Py_INCREF(h->state_fn); Py_INCREF(h->pairs); Py_INCREF(h->pairs_committed);
    Py_INCREF(h->get_pair); Py_INCREF(h->extrefs); Py_INCREF(h->decided); Py_INCREF(h->fallback);
    h->nprog = prog.len / (Py_ssize_t)sizeof(int64_t);
    h->prog = PyMem_Malloc((size_t)prog.len + 8);
    if (h->prog != NULL) memcpy(h->prog, prog.buf, (size_t)prog.len);
    int shape_ok = prog.len % (Py_ssize_t)sizeof(int64_t) == 0 && h->prog != NULL &&
                   rules_check_program(h->prog, h->nprog);
    PyBuffer_Release(&prog);
    if (!shape_ok) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "malformed rule program"); goto fail; }
    if (h->recs.len % REC) { PyErr_SetString(PyExc_ValueError, "records must be whole transfers"); goto fail; }
    h->n = h->recs.len / REC;
    h->ts = ts;
    h->height = PyLong_AsLongLong(height);
    h->height_ok = !(h->height == -1 && PyErr_Occurred());
    if (!h->height_ok) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) goto fail;
        PyErr_Clear();
    }
    h->active = active;
    h->track_out = tracks & 1; h->track_in = tracks >> 1 & 1; h->track_psp = tracks >> 2 & 1;
    h->track_pairs = tracks >> 3 & 1;
    h->cap = 3 * (size_t)h->n + 1; /* a record touches at most three keys */
    size_t size = 16;
    while (size < 2 * h->cap) size <<= 1;
    h->mask = size - 1;
    h->ents = PyMem_Malloc(h->cap * sizeof(rent_t));
    h->slots = PyMem_Malloc(size * sizeof(int32_t));
    h->order = PyMem_Malloc(h->cap * sizeof(int32_t));
    if (h->ents == NULL || h->slots == NULL || h->order == NULL) { PyErr_NoMemory(); goto fail; }
    memset(h->slots, 0xff, size * sizeof(int32_t));
    return (PyObject *)h;
fail:
    Py_DECREF(h);
    return NULL;
}

static PyMethodDef HOOK_METHODS[] = {
    {"flush", hook_flush, METH_NOARGS, "Write the risk states changed in this call back into the block's dict."},
    {"evaluate", hook_evaluate, METH_VARARGS,
     "evaluate(i, debit_state, credit_state) -> rule index, -1 or None (the Python form decides)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef HOOK_GETSET[] = {
    {"fast_entry", hook_fast_entry, NULL,
     "A capsule of the C entry point apply.c calls with the engine's balances (sovledger.rules_hook).", NULL},
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
    if (PyType_Ready(&HookType) < 0) return -1;
    if (PyModule_AddIntConstant(module, "FIELD_COUNT", F_COUNT) < 0) return -1;
    return PyModule_AddObjectRef(module, "Hook", (PyObject *)&HookType);
}
