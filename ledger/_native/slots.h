/* sovledger native engine: direct access to the __slots__ of the ledger's value classes
 * (ledger/schema.py AccountState and TransferRef, ledger/apply/scratch.py Event) and fast int
 * conversions, shared by apply.c and seal.c.
 *
 * Why: the transfer path reads and writes about forty attributes per transfer (balances, refs,
 * event fields). PyObject_GetAttr/SetAttr walk the type's MRO dict and call the member descriptor
 * each time; a __slots__ member is a fixed offset in the object, so reading it is one load.
 * ledger/apply/native_transfers.py binds the three classes once (bind_types); an object of exactly
 * a bound type is read and written at its slot offsets, anything else (a subclass, a stand-in in a
 * test, an unbound type) goes through the generic attribute protocol, so results never depend on
 * the binding. A class is bound only if every named attribute is a plain object slot and the class
 * has the generic __setattr__ (checked in seal.c bind_types). Creating an Event or a TransferRef
 * directly (alloc + every slot set) skips the dataclass __init__, which only assigns the fields;
 * native_transfers.py binds a class for that only when its dataclass fields are exactly these and
 * it has no __post_init__. */
#ifndef SOVLEDGER_SLOTS_H
#define SOVLEDGER_SLOTS_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define SLOTS_MAX 12
typedef struct {
    PyTypeObject *type;  /* NULL: not bound, every access is generic */
    int construct;       /* objects may be created by alloc + setting every slot */
    Py_ssize_t off[SLOTS_MAX];
    PyObject *name[SLOTS_MAX];  /* interned attribute names (the generic path) */
} slots_t;

/* AccountState, TransferRef, Event (defined in seal.c) */
extern slots_t SL_ACCT, SL_REF, SL_EVENT;
enum { SA_DP, SA_DPO, SA_CP, SA_CPO, SA_LEDGER, SA_FLAGS, SA_RECORD, SA_TS, SA_N };
enum { SR_LEAF, SR_BLOCK, SR_TS, SR_STATUS, SR_EXPIRES, SR_N };
enum { SE_KIND, SE_RESULT, SE_BODY, SE_AUX, SE_TOUCHED, SE_REF, SE_REF_ID, SE_EXISTING, SE_ACCOUNT, SE_FOLLOW,
       SE_EXCEPTION, SE_RULESET, SE_N };

int slots_names(void);  /* intern the attribute names (idempotent); 0 with an exception on failure */

static inline PyObject **slot_ptr(PyObject *o, const slots_t *s, int i) {
    return (PyObject **)((char *)o + s->off[i]);
}

/* attribute i of o: a new reference, or NULL with an exception */
static inline PyObject *slot_get(PyObject *o, const slots_t *s, int i) {
    if (Py_TYPE(o) == s->type) {
        PyObject *v = *slot_ptr(o, s, i);
        if (v != NULL) return Py_NewRef(v);
    }
    return PyObject_GetAttr(o, s->name[i]);
}

/* set attribute i of o to v (v is not stolen); 0 on success, -1 with an exception */
static inline int slot_set(PyObject *o, const slots_t *s, int i, PyObject *v) {
    if (Py_TYPE(o) == s->type) {
        PyObject **p = slot_ptr(o, s, i), *old = *p;
        *p = Py_NewRef(v);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(o, s->name[i], v);
}

/* an object of a constructible bound type with every slot set from vals (references are not stolen),
 * or NULL without an exception when the type cannot be constructed that way */
static inline PyObject *slot_new(const slots_t *s, PyObject *type, PyObject *const *vals, int n) {
    if ((PyTypeObject *)type != s->type || !s->construct) return NULL;
    PyObject *o = s->type->tp_alloc(s->type, 0);
    if (o == NULL) return NULL;
    for (int i = 0; i < n; i++) *slot_ptr(o, s, i) = Py_NewRef(vals[i]);
    return o;
}

/* an int as u64 (0 with an exception if it is not an int in range) */
static inline int int_u64(PyObject *o, uint64_t *v) {
    *v = PyLong_AsUnsignedLongLong(o);
    return !(*v == (uint64_t)-1 && PyErr_Occurred());
}

static inline int slot_u64(PyObject *o, const slots_t *s, int i, uint64_t *v) {
    PyObject *a = slot_get(o, s, i);
    if (a == NULL) return 0;
    int ok = int_u64(a, v);
    Py_DECREF(a);
    return ok;
}

static inline int slot_set_u64(PyObject *o, const slots_t *s, int i, uint64_t v) {
    PyObject *x = PyLong_FromUnsignedLongLong(v);
    int ok = x != NULL && slot_set(o, s, i, x) == 0;
    Py_XDECREF(x);
    return ok;
}

/* an int as 16 little-endian bytes: one machine conversion below 2^64, the byte array above */
static inline int int_le16(PyObject *o, uint8_t out[16]) {
    if (!PyLong_Check(o)) { PyErr_SetString(PyExc_TypeError, "a balance must be an int"); return 0; }
    unsigned long long x = PyLong_AsUnsignedLongLong(o);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return 0;
        PyErr_Clear();  /* above 2^64 (or negative: the byte array raises for that) */
        return _PyLong_AsByteArray((PyLongObject *)o, out, 16, 1, 0) == 0;
    }
    for (int k = 0; k < 8; k++) out[k] = (uint8_t)(x >> (8 * k));
    memset(out + 8, 0, 8);
    return 1;
}

#endif
