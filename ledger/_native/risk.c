/* sovledger risk features in C: the per-transfer window update and one window value, the same
 * integer arithmetic as the Python reference in ledger/risk.py (record_py, window_one_py).
 *
 * A risk state is a Python list of 17 unsigned 64-bit ints (ledger/risk.py: per window bucket,
 * prev_count, prev_sum, cur_count, cur_sum; then ewma, n). Counters saturate at 2^64 - 1. The
 * functions read the list, compute in uint64 / unsigned __int128 and write the list back, so the
 * state keeps its Python form everywhere else (store encoding, caches, undo). A value that is not
 * an int in 0..2^64-1 raises (ValueError/OverflowError/TypeError); the ledger never stores one. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "risk_core.h"
#include "risk_table.h"

#define STATE_LEN RISK_STATE_LEN
#define TOP RISK_TOP

/* amount: any non-negative int; values above 2^64 - 1 count as 2^64 - 1 (the reference saturates). */
static int read_amount(PyObject *obj, uint64_t *out) {
    if (!PyLong_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "amount must be an int");
        return -1;
    }
    if (_PyLong_Sign(obj) < 0) {
        PyErr_SetString(PyExc_ValueError, "amount must not be negative");
        return -1;
    }
    uint64_t v = PyLong_AsUnsignedLongLong(obj);
    if (v == (uint64_t)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        v = TOP;
    }
    *out = v;
    return 0;
}

/* record(st, ts, amount): one successful event of amount at block time ts, in place. */
static PyObject *py_risk_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    uint64_t st[STATE_LEN], ts, amount;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "record(st, ts, amount)");
        return NULL;
    }
    if (risk_read_list(args[0], st) < 0) return NULL;
    ts = PyLong_AsUnsignedLongLong(args[1]);
    if (ts == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    if (read_amount(args[2], &amount) < 0) return NULL;
    risk_record(st, ts, amount);
    for (int i = 0; i < STATE_LEN; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st[i]);
        if (v == NULL) return NULL;
        PyList_SetItem(args[0], i, v); /* steals v, releases the old item */
    }
    Py_RETURN_NONE;
}

static PyObject *from_u128(unsigned __int128 v) {
    if (v <= TOP) return PyLong_FromUnsignedLongLong((uint64_t)v);
    PyObject *hi = PyLong_FromUnsignedLongLong((uint64_t)(v >> 64));
    PyObject *lo = PyLong_FromUnsignedLongLong((uint64_t)v);
    PyObject *shift = PyLong_FromLong(64);
    PyObject *out = NULL, *tmp = NULL;
    if (hi && lo && shift && (tmp = PyNumber_Lshift(hi, shift)) != NULL) out = PyNumber_Or(tmp, lo);
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(shift);
    Py_XDECREF(tmp);
    return out;
}

/* window_one(st, ts, slot): slot 0-2 the count of the 1m/1h/24h window, 3-5 its sum; st may be None. */
static PyObject *risk_window_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    uint64_t st[STATE_LEN];
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "window_one(st, ts, slot)");
        return NULL;
    }
    long slot = PyLong_AsLong(args[2]);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    if (slot < 0 || slot > 5) {
        PyErr_SetString(PyExc_ValueError, "slot must be 0..5");
        return NULL;
    }
    if (args[0] == Py_None) return PyLong_FromLong(0);
    if (risk_read_list(args[0], st) < 0) return NULL;
    uint64_t ts = PyLong_AsUnsignedLongLong(args[1]);
    if (ts == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    return from_u128(risk_window(st, ts, (int)slot));
}

/* key_hash(key): the risk table's 64-bit hash of a state or pair key (risk_table.h rt_hash; its high 32 bits
 * are a slot's tag and pick the key's first slot): for tests that need keys sharing a tag */
static PyObject *risk_key_hash(PyObject *self, PyObject *key) {
    (void)self;
    if (!PyBytes_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "key_hash(key): key is bytes");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(rt_hash((const uint8_t *)PyBytes_AS_STRING(key), (int)PyBytes_GET_SIZE(key)));
}

/* max_probe(table) -> (states, pairs): the longest probe of each of a RiskTable's maps (tests) */
static PyObject *risk_max_probe(PyObject *self, PyObject *table) {
    if (!PyObject_TypeCheck(table, &RiskTableType)) {
        PyErr_SetString(PyExc_TypeError, "max_probe(table): table is a RiskTable");
        return NULL;
    }
    size_t states, pairs;
    rt_max_probes((const RiskTableObject *)table, &states, &pairs);
    return Py_BuildValue("(nn)", (Py_ssize_t)states, (Py_ssize_t)pairs);
}

static PyMethodDef METHODS[] = {
    {"key_hash", risk_key_hash, METH_O, "key_hash(key) -> the risk table's 64-bit keyed hash of a key (tests)"},
    {"max_probe", risk_max_probe, METH_O, "max_probe(table) -> the longest probe of its state and pair maps (tests)"},
    {"record", (PyCFunction)(void (*)(void))py_risk_record, METH_FASTCALL,
     "record(st, ts, amount): add one event to a risk state, in place"},
    {"window_one", (PyCFunction)(void (*)(void))risk_window_one, METH_FASTCALL,
     "window_one(st, ts, slot): one window count (slot 0-2) or sum (3-5) before the event"},
    {"journal_state", journal_state, METH_VARARGS,
     "journal_state(rows, key) -> the packed state of key in the newest risk_log row holding it, or None"},
    {"journal_has_pair", journal_has_pair, METH_VARARGS,
     "journal_has_pair(rows, pair_key) -> whether a risk_log row holds the pair"},
    {"merge_pairs", pair_merge, METH_VARARGS,
     "merge_pairs(a, b) -> the sorted union of two sorted packed pair runs, each pair once (pair_runs.c)"},
    {"chunk_has", (PyCFunction)(void (*)(void))pair_chunk_has, METH_FASTCALL,
     "chunk_has(chunk, pk) -> whether a sorted packed chunk of pairs holds pk"},
    {"filter_hits", (PyCFunction)(void (*)(void))pair_filter_hits, METH_FASTCALL,
     "filter_hits(filters, pk) -> the indexes of the PairFilters (None: no filter) that may hold the pair"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_risk", "Risk window arithmetic (ledger/risk.py).",
                                    -1, METHODS, NULL, NULL, NULL, NULL};

int rules_add_types(PyObject *module); /* rules.c: the compiled rules hook */

PyMODINIT_FUNC PyInit__risk(void) {
    if (!kh_init(&RT_KEY)) return NULL; /* the risk maps' hash key (keyed_hash.h) */
    PyObject *m = PyModule_Create(&MODULE);
    if (m != NULL && (rules_add_types(m) < 0 || pair_runs_add_type(m) < 0)) Py_CLEAR(m);
    return m;
}
