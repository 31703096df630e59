/* sovledger native engine, block sealing: leaf numbering and leaf bytes (ledger/apply/seal.py
 * _Leaves), and the store values of a block's changed accounts and transfer refs
 * (ledger/schema.py AccountState.encode, TransferRef.encode), byte-identical to the Python reference.
 * These read the block's Python objects, so they hold the GIL; they replace per-event Python loops. */
#include "slots.h"
#include <stdlib.h>
#include <string.h>

slots_t SL_ACCT, SL_REF, SL_EVENT;

static const char *const ACCT_NAMES[SA_N] = {"debits_pending", "debits_posted", "credits_pending", "credits_posted",
                                             "ledger", "flags", "record", "ts"};
static const char *const REF_NAMES[SR_N] = {"leaf_index", "block", "timestamp_ns", "status", "expires_at_ns"};
static const char *const EVENT_NAMES[SE_N] = {"kind", "result", "body", "aux", "touched", "ref", "ref_id", "existing",
                                              "account", "follow", "exception", "ruleset"};

static int intern_all(slots_t *s, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (s->name[i] == NULL && (s->name[i] = PyUnicode_InternFromString(names[i])) == NULL) return 0;
    return 1;
}

int slots_names(void) {
    return intern_all(&SL_ACCT, ACCT_NAMES, SA_N) && intern_all(&SL_REF, REF_NAMES, SR_N) &&
           intern_all(&SL_EVENT, EVENT_NAMES, SE_N);
}

/* Bind one class: the offset of every named slot; left unbound (generic access) if any name is not a
 * plain object slot or the class overrides __setattr__ (see slots.h). */
static int bind_one(slots_t *s, PyObject *type, int n, int construct) {
    if (!PyType_Check(type)) { PyErr_SetString(PyExc_TypeError, "bind_types takes classes"); return 0; }
    Py_CLEAR(s->type);
    if (((PyTypeObject *)type)->tp_setattro != PyObject_GenericSetAttr) return 1;
    Py_ssize_t off[SLOTS_MAX];
    for (int i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttr(type, s->name[i]);
        if (d == NULL) { PyErr_Clear(); return 1; }
        int plain = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
                    !(((PyMemberDescrObject *)d)->d_member->flags & READONLY);
        if (plain) off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!plain) return 1;
    }
    memcpy(s->off, off, sizeof off);
    s->construct = construct;
    s->type = (PyTypeObject *)Py_NewRef(type);
    return 1;
}

/* bind_types(AccountState, TransferRef, Event, construct_ref, construct_event) -> which were bound */
static PyObject *py_bind_types(PyObject *self, PyObject *args) {
    PyObject *acct, *ref, *event;
    int cref, cev;
    if (!slots_names() || !PyArg_ParseTuple(args, "OOOpp", &acct, &ref, &event, &cref, &cev)) return NULL;
    if (!bind_one(&SL_ACCT, acct, SA_N, 0) || !bind_one(&SL_REF, ref, SR_N, cref) ||
        !bind_one(&SL_EVENT, event, SE_N, cev))
        return NULL;
    return Py_BuildValue("(OOO)", SL_ACCT.type ? Py_True : Py_False, SL_REF.type ? Py_True : Py_False,
                         SL_EVENT.type ? Py_True : Py_False);
}

static void put_le(uint8_t *p, uint64_t v, int n) { for (int k = 0; k < n; k++) p[k] = (uint8_t)(v >> (8 * k)); }
static void put_be(uint8_t *p, uint64_t v) { for (int k = 0; k < 8; k++) p[k] = (uint8_t)(v >> (56 - 8 * k)); }

static int is_none_slot(PyObject *o, const slots_t *sl, int i, int *none) {
    PyObject *a = slot_get(o, sl, i);
    if (a == NULL) return 0;
    *none = a == Py_None;
    Py_DECREF(a);
    return 1;
}

static int append_pair(PyObject *list, PyObject *a, PyObject *b) {
    PyObject *t = (a && b) ? PyTuple_Pack(2, a, b) : NULL;
    int ok = t != NULL && PyList_Append(list, t) == 0;
    Py_XDECREF(t); Py_XDECREF(a); Py_XDECREF(b);
    return ok;
}

static PyObject *concat2(PyObject *a, PyObject *b) {
    if (!PyBytes_Check(a)) { PyErr_SetString(PyExc_TypeError, "a touched account id must be bytes"); return NULL; }
    Py_ssize_t na = PyBytes_GET_SIZE(a), nb = PyBytes_GET_SIZE(b);
    PyObject *o = PyBytes_FromStringAndSize(NULL, na + nb);
    if (o == NULL) return NULL;
    memcpy(PyBytes_AS_STRING(o), PyBytes_AS_STRING(a), (size_t)na);
    memcpy(PyBytes_AS_STRING(o) + na, PyBytes_AS_STRING(b), (size_t)nb);
    return o;
}

/* One event's leaf: header ‖ body ‖ aux length ‖ aux (docs/formats.md), its history keys, its ref/account times. */
static int leaf_of(PyObject *ev, int version, uint64_t index, uint64_t ts, PyObject *leaves, PyObject *history) {
    uint64_t kind, result;
    PyObject *body = NULL, *aux = NULL, *touched = NULL, *leaf = NULL, *key = NULL;
    int ok = 0;
    if (!slot_u64(ev, &SL_EVENT, SE_KIND, &kind) || !slot_u64(ev, &SL_EVENT, SE_RESULT, &result)) return 0;
    body = slot_get(ev, &SL_EVENT, SE_BODY); aux = slot_get(ev, &SL_EVENT, SE_AUX);
    touched = slot_get(ev, &SL_EVENT, SE_TOUCHED);
    if (!body || !aux || !touched || !PyBytes_Check(body) || !PyBytes_Check(aux) || !PyTuple_Check(touched)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "an event needs bytes body/aux and a touched tuple");
        goto done;
    }
    Py_ssize_t nb = PyBytes_GET_SIZE(body), na = PyBytes_GET_SIZE(aux);
    leaf = PyBytes_FromStringAndSize(NULL, 24 + nb + 2 + na);
    uint8_t kb[8];
    put_be(kb, index);
    key = PyBytes_FromStringAndSize((const char *)kb, 8);
    if (leaf == NULL || key == NULL) goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(leaf);
    p[0] = (uint8_t)version; p[1] = (uint8_t)kind; put_le(p + 2, result, 2); put_le(p + 4, index, 8);
    put_le(p + 12, ts, 8); put_le(p + 20, (uint64_t)nb, 4);
    memcpy(p + 24, PyBytes_AS_STRING(body), (size_t)nb);
    put_le(p + 24 + nb, (uint64_t)na, 2);
    memcpy(p + 26 + nb, PyBytes_AS_STRING(aux), (size_t)na);
    for (Py_ssize_t t = 0; t < PyTuple_GET_SIZE(touched); t++) {
        PyObject *hk = concat2(PyTuple_GET_ITEM(touched, t), key);
        if (hk == NULL || !append_pair(history, hk, PyBytes_FromStringAndSize("", 0))) goto done;
    }
    ok = append_pair(leaves, Py_NewRef(key), Py_NewRef(leaf));
done:
    Py_XDECREF(body); Py_XDECREF(aux); Py_XDECREF(touched); Py_XDECREF(leaf); Py_XDECREF(key);
    return ok;
}

/* number_leaves(events, index, ts, height, version) -> (leaves, history, log_indexes, blocks, index, ts), or
 * None when an event needs the Python numbering (a follow-up leaf, an exception record, a rule set) */
static PyObject *py_number_leaves(PyObject *self, PyObject *args) {
    PyObject *events;
    unsigned long long index, ts, height;
    int version;
    if (!slots_names() || !PyArg_ParseTuple(args, "O!KKKi", &PyList_Type, &events, &index, &ts, &height, &version))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(events);
    PyObject *leaves = PyList_New(0), *history = PyList_New(0), *logs = PyList_New(n), *blocks = PyList_New(n);
    PyObject *hobj = PyLong_FromUnsignedLongLong(height);  /* every new leaf's block */
    if (!leaves || !history || !logs || !blocks || !hobj) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ev = PyList_GET_ITEM(events, i), *existing = slot_get(ev, &SL_EVENT, SE_EXISTING);
        if (existing == NULL) goto fail;
        if (existing != Py_None) {  /* an exact retry: the original entry, no new leaf */
            PyObject *li = slot_get(existing, &SL_REF, SR_LEAF), *bl = slot_get(existing, &SL_REF, SR_BLOCK);
            Py_DECREF(existing);
            if (li == NULL || bl == NULL) { Py_XDECREF(li); Py_XDECREF(bl); goto fail; }
            PyList_SET_ITEM(logs, i, li); PyList_SET_ITEM(blocks, i, bl);
            continue;
        }
        Py_DECREF(existing);
        int f, x, r;
        if (!is_none_slot(ev, &SL_EVENT, SE_FOLLOW, &f) || !is_none_slot(ev, &SL_EVENT, SE_EXCEPTION, &x) ||
            !is_none_slot(ev, &SL_EVENT, SE_RULESET, &r))
            goto fail;
        if (!(f && x && r)) {
            Py_DECREF(leaves); Py_DECREF(history); Py_DECREF(logs); Py_DECREF(blocks); Py_DECREF(hobj);
            Py_RETURN_NONE;
        }
        if (!leaf_of(ev, version, index, ts, leaves, history)) goto fail;
        PyObject *ref = slot_get(ev, &SL_EVENT, SE_REF), *acct = ref ? slot_get(ev, &SL_EVENT, SE_ACCOUNT) : NULL;
        PyObject *li = PyLong_FromUnsignedLongLong(index);  /* the ref's leaf index and the outcome's: one int */
        int ok = ref != NULL && acct != NULL && li != NULL;
        if (ok && ref != Py_None) ok = slot_set(ref, &SL_REF, SR_LEAF, li) == 0 && slot_set_u64(ref, &SL_REF, SR_TS, ts);
        if (ok && acct != Py_None) ok = slot_set_u64(acct, &SL_ACCT, SA_TS, ts);
        Py_XDECREF(ref); Py_XDECREF(acct);
        if (!ok) { Py_XDECREF(li); goto fail; }
        PyList_SET_ITEM(logs, i, li);
        PyList_SET_ITEM(blocks, i, Py_NewRef(hobj));
        index++; ts++;
    }
    Py_DECREF(hobj);
    return Py_BuildValue("(NNNNKK)", leaves, history, logs, blocks, index, ts);
fail:
    Py_XDECREF(leaves); Py_XDECREF(history); Py_XDECREF(logs); Py_XDECREF(blocks); Py_XDECREF(hobj);
    return NULL;
}

/* a balance slot as a little-endian u128 */
static int get_u128(PyObject *o, int i, uint8_t out[16], PyObject **keep) {
    PyObject *a = slot_get(o, &SL_ACCT, i);
    if (a == NULL) return 0;
    *keep = a;  /* the caller compares it with the saved balance, then drops it */
    return int_le16(a, out);
}

/* changed_accounts(accounts, saved) -> [(id, AccountState.encode())] of accounts created or changed, by id */
/* A dict's items in ascending key order, references held: 16-byte keys sorted by memcmp in C (the order
 * Python gives bytes of equal length), any other keys by Python's sort. NULL with an exception on failure. */
typedef struct { uint8_t k[16]; PyObject *key, *val; } item_t;

static int item_cmp(const void *a, const void *b) { return memcmp(((const item_t *)a)->k, ((const item_t *)b)->k, 16); }

static void items_free(item_t *it, Py_ssize_t n) {
    for (Py_ssize_t i = 0; it != NULL && i < n; i++) { Py_DECREF(it[i].key); Py_DECREF(it[i].val); }
    PyMem_Free(it);
}

/* Sort by the 16-byte keys in memcmp order. Few items: qsort. More: an LSD radix sort, one stable
 * counting pass per key byte from the last to the first, skipping a byte every key shares (keys
 * that are small integers differ in few bytes): O(n) per pass instead of qsort's calls of a compare
 * function, ~log2(n) per item. 0 when out of memory. */
static int sort_items(item_t *it, Py_ssize_t n) {
    if (n < 64) { qsort(it, (size_t)n, sizeof *it, item_cmp); return 1; }
    item_t *tmp = PyMem_Malloc(sizeof(item_t) * (size_t)n), *src = it, *dst = tmp;
    if (tmp == NULL) return 0;
    for (int b = 15; b >= 0; b--) {
        size_t count[256] = {0}, at = 0;
        for (Py_ssize_t i = 0; i < n; i++) count[src[i].k[b]]++;
        if (count[src[0].k[b]] == (size_t)n) continue;  /* every key has this byte */
        for (int v = 0; v < 256; v++) { size_t c = count[v]; count[v] = at; at += c; }
        for (Py_ssize_t i = 0; i < n; i++) dst[count[src[i].k[b]]++] = src[i];
        item_t *t = src; src = dst; dst = t;
    }
    if (src != it) memcpy(it, src, sizeof(item_t) * (size_t)n);
    PyMem_Free(tmp);
    return 1;
}

static item_t *sorted_items(PyObject *d, Py_ssize_t *n, int sort) {
    Py_ssize_t pos = 0, size = PyDict_GET_SIZE(d), i = 0, plain = 1;
    item_t *it = PyMem_Malloc(sizeof(item_t) * (size_t)(size ? size : 1));
    PyObject *k, *v;
    if (it == NULL) { PyErr_NoMemory(); return NULL; }
    while (i < size && PyDict_Next(d, &pos, &k, &v)) {
        if (PyBytes_Check(k) && PyBytes_GET_SIZE(k) == 16) memcpy(it[i].k, PyBytes_AS_STRING(k), 16);
        else plain = 0;
        it[i].key = Py_NewRef(k); it[i].val = Py_NewRef(v); i++;
    }
    *n = i;
    if (plain && !sort) return it;
    if (plain) return sort_items(it, i) ? it : (items_free(it, i), PyErr_NoMemory(), NULL);
    PyObject *keys = PyDict_Keys(d);  /* unusual keys: Python's order */
    int ok = keys != NULL && PyList_Sort(keys) == 0 && PyList_GET_SIZE(keys) == i;
    for (Py_ssize_t j = 0; ok && j < i; j++) {
        PyObject *val = PyDict_GetItemWithError(d, PyList_GET_ITEM(keys, j));
        ok = val != NULL;
        if (ok) { Py_SETREF(it[j].key, Py_NewRef(PyList_GET_ITEM(keys, j))); Py_SETREF(it[j].val, Py_NewRef(val)); }
    }
    Py_XDECREF(keys);
    if (!ok) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "the accounts changed while being encoded");
        items_free(it, i);
        return NULL;
    }
    return it;
}

static PyObject *py_changed_accounts(PyObject *self, PyObject *args) {
    PyObject *accounts, *saved;
    Py_ssize_t n = 0;
    if (!slots_names() || !PyArg_ParseTuple(args, "O!O!", &PyDict_Type, &accounts, &PyDict_Type, &saved)) return NULL;
    item_t *items = sorted_items(accounts, &n, 1);
    PyObject *out = items ? PyList_New(0) : NULL;
    if (out == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *aid = items[i].key, *a = items[i].val;
        PyObject *was = PyDict_GetItemWithError(saved, aid), *bal[4] = {NULL, NULL, NULL, NULL};
        if (PyErr_Occurred()) goto fail;
        uint8_t v[136];
        int ok = 1, same = was != NULL && PyTuple_Check(was) && PyTuple_GET_SIZE(was) == 4;
        for (int q = 0; q < 4 && ok; q++) {
            ok = get_u128(a, SA_DP + q, v + 64 + 16 * q, &bal[q]);
            if (ok && same) {
                int eq = PyObject_RichCompareBool(bal[q], PyTuple_GET_ITEM(was, q), Py_EQ);
                ok = eq >= 0;
                same = eq == 1;
            }
        }
        for (int q = 0; q < 4; q++) Py_XDECREF(bal[q]);
        if (!ok) goto fail;
        if (same) continue;
        uint64_t ts;
        PyObject *rec = slot_get(a, &SL_ACCT, SA_RECORD);
        ok = rec != NULL && PyBytes_Check(rec) && PyBytes_GET_SIZE(rec) == 64 && slot_u64(a, &SL_ACCT, SA_TS, &ts);
        if (ok) { memcpy(v, PyBytes_AS_STRING(rec), 64); put_le(v + 128, ts, 8); }
        Py_XDECREF(rec);
        if (!ok) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "an account record is 64 bytes"); goto fail; }
        if (!append_pair(out, Py_NewRef(aid), PyBytes_FromStringAndSize((const char *)v, 136))) goto fail;
    }
    items_free(items, n);
    return out;
fail:
    items_free(items, n); Py_XDECREF(out);
    return NULL;
}

/* transfer_rows(transfers) -> [(id_key(id), TransferRef.encode())] sorted by key */
static PyObject *py_transfer_rows(PyObject *self, PyObject *arg) {
    if (!slots_names()) return NULL;
    if (!PyDict_Check(arg)) { PyErr_SetString(PyExc_TypeError, "transfers must be a dict"); return NULL; }
    Py_ssize_t n = 0;
    item_t *items = sorted_items(arg, &n, 0);  /* sorted below by key (the reversed id) */
    PyObject *out = items ? PyList_New(n) : NULL;
    if (out == NULL) { items_free(items, n); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *tid = items[i].key;
        if (!PyBytes_Check(tid) || PyBytes_GET_SIZE(tid) != 16) {
            PyErr_SetString(PyExc_TypeError, "a transfer id is 16 bytes");
            goto fail;
        }
        for (int b = 0; b < 16; b++) items[i].k[b] = (uint8_t)PyBytes_AS_STRING(tid)[15 - b];
    }
    if (!sort_items(items, n)) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ref = items[i].val;
        uint64_t li, bl, ts, st, ex;
        if (!slot_u64(ref, &SL_REF, SR_LEAF, &li) || !slot_u64(ref, &SL_REF, SR_BLOCK, &bl) ||
            !slot_u64(ref, &SL_REF, SR_TS, &ts) || !slot_u64(ref, &SL_REF, SR_STATUS, &st) ||
            !slot_u64(ref, &SL_REF, SR_EXPIRES, &ex))
            goto fail;
        uint8_t v[33];
        put_le(v, li, 8); put_le(v + 8, bl, 8); put_le(v + 16, ts, 8); v[24] = (uint8_t)st; put_le(v + 25, ex, 8);
        if (st > 255) { PyErr_SetString(PyExc_OverflowError, "a transfer status is one byte"); goto fail; }
        PyObject *key = PyBytes_FromStringAndSize((const char *)items[i].k, 16);
        PyObject *val = PyBytes_FromStringAndSize((const char *)v, 33);
        PyObject *row = key && val ? PyTuple_Pack(2, key, val) : NULL;
        Py_XDECREF(key); Py_XDECREF(val);
        if (row == NULL) goto fail;
        PyList_SET_ITEM(out, i, row);
    }
    items_free(items, n);
    return out;
fail:
    items_free(items, n); Py_DECREF(out);
    return NULL;
}

/* gather_accounts(ids, block_accounts, committed_accounts, saved, account[, unique]) -> [(id, AccountState)]:
 * Block.account (ledger/apply/scratch.py) for each distinct id, its two cache hits done here (an
 * account first used in this block: its balances saved, then it joins the block), anything else
 * through ``account`` itself; unknown ids are left out. ``unique``: the caller vouches that no id repeats
 * (transfer_ids' accounts, nothing appended), so no set of seen ids is needed. */
static PyObject *py_gather_accounts(PyObject *self, PyObject *args) {
    PyObject *ids, *block, *committed, *saved, *account_fn;
    int unique = 0;
    if (!slots_names() || !PyArg_ParseTuple(args, "O!O!O!O!O|p", &PyList_Type, &ids, &PyDict_Type, &block,
                                           &PyDict_Type, &committed, &PyDict_Type, &saved, &account_fn, &unique))
        return NULL;
    PyObject *out = PyList_New(0), *seen = unique ? NULL : PySet_New(NULL);
    if (out == NULL || (seen == NULL && !unique)) goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ids); i++) {
        PyObject *aid = PyList_GET_ITEM(ids, i), *a;
        int dup = unique ? 0 : PySet_Contains(seen, aid);
        if (dup < 0 || (!dup && !unique && PySet_Add(seen, aid) < 0)) goto fail;
        if (dup) continue;
        a = PyDict_GetItemWithError(block, aid);
        if (a != NULL) {
            Py_INCREF(a);
        } else if (!PyErr_Occurred() && (a = PyDict_GetItemWithError(committed, aid)) != NULL) {
            Py_INCREF(a);
            PyObject *b[4] = {NULL, NULL, NULL, NULL}, *t = NULL;
            int ok = 1;
            for (int q = 0; q < 4 && ok; q++) ok = (b[q] = slot_get(a, &SL_ACCT, SA_DP + q)) != NULL;
            if (ok) t = PyTuple_Pack(4, b[0], b[1], b[2], b[3]);
            for (int q = 0; q < 4; q++) Py_XDECREF(b[q]);
            ok = t != NULL && PyDict_SetItem(saved, aid, t) == 0 && PyDict_SetItem(block, aid, a) == 0;
            Py_XDECREF(t);
            if (!ok) { Py_DECREF(a); goto fail; }
        } else if (!PyErr_Occurred()) {
            a = PyObject_CallOneArg(account_fn, aid);  /* from the store (or unknown: None) */
        }
        if (a == NULL) goto fail;
        if (a != Py_None && !append_pair(out, Py_NewRef(aid), Py_NewRef(a))) { Py_DECREF(a); goto fail; }
        Py_DECREF(a);
    }
    Py_XDECREF(seen);
    return out;
fail:
    Py_XDECREF(out); Py_XDECREF(seen);
    return NULL;
}

PyMethodDef seal_methods[] = {
    {"bind_types", py_bind_types, METH_VARARGS, "Bind the slot offsets of AccountState, TransferRef, Event."},
    {"gather_accounts", py_gather_accounts, METH_VARARGS, "Block.account for each distinct id: [(id, state)]."},
    {"number_leaves", py_number_leaves, METH_VARARGS, "Number a block's events into leaves (None: use Python)."},
    {"changed_accounts", py_changed_accounts, METH_VARARGS, "Encoded states of created or changed accounts."},
    {"transfer_rows", py_transfer_rows, METH_O, "Sorted (key, value) rows of a block's transfer refs."},
    {NULL, NULL, 0, NULL},
};
