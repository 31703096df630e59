/* sovledger native engine: the keyed hash of the C hash tables (apply.c's account and transfer tables,
 * risk_table.c's state and pair maps).
 *
 * Why keyed: the tables are open addressing over ids a PSP chooses (transfer ids, account ids, the risk
 * keys built from them). With an unkeyed hash a PSP can compute, offline, thousands of ids that share one
 * probe chain and turn a block's apply quadratic (docs/security.md, "Hash flooding"). Here every hash
 * takes a 256-bit key drawn from the OS once per process (os.urandom at module import), so nobody outside
 * the process can predict which ids collide.
 *
 * The mix (wyhash-style, our own code): the 64 x 64 -> 128-bit product of two key-masked input words,
 * folded (low half xor high half). Every input bit reaches every output bit of the fold, so the slot
 * bits (low bits, or the high 32 bits for the risk maps) depend on the whole input and key; a final
 * fold with two more key words spreads what the first left regular. Two multiplies per 16-byte id
 * (kh_id); for byte strings (kh_bytes: the risk keys of 5, 17 and 32 bytes) one per 16 bytes, one for a
 * tail, and the final fold. Measured on this machine (a C loop, hashes alone, ns per hash, independent /
 * dependent): kh_id 1.0-1.2 / 7.9 against the former id_hash's 0.7-1.1 / 6.7; kh_bytes of 17 bytes 1.4 / 9.2 against 1.6 / 10.7, of 32 bytes 1.5 / 9.3 against 2.3 /
 * 13.1; SipHash-1-3 of 16 bytes (CPython's for bytes) 10.5 / 15.1, so not that.
 *
 * Results never depend on the key: slot order is never output (tables are walked in insertion order, or
 * their contents sorted, wherever something leaves C). tests/engine/test_hash_flood.py applies the same
 * blocks under two keys and compares every LMDB table byte for byte.
 *
 * SOVLEDGER_HASH_KEY=<64 hex digits> fixes the key at import: for that test only. Production never sets
 * it (a fixed key would make collisions computable again). */
#ifndef SOVLEDGER_KEYED_HASH_H
#define SOVLEDGER_KEYED_HASH_H
#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define KH_WORDS 4
#define KH_ENV "SOVLEDGER_HASH_KEY"
typedef struct { uint64_t k[KH_WORDS]; int set; } kh_key_t; /* set: drawn (never redrawn: tables hold slots) */

static inline uint64_t kh_fold(uint64_t a, uint64_t b) {
    unsigned __int128 p = (unsigned __int128)a * b;
    return (uint64_t)p ^ (uint64_t)(p >> 64);
}

static inline uint64_t kh_rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* a 16-byte id (two little-endian words): two folds. One is not enough: for ids that differ only in the
 * top bits of a word, one fold's output moves by a key-dependent step per id, and a step with trailing
 * zero bits (1 key in 8 has three) packs them into a fraction of the slots; the second fold spreads
 * that progression over every bit */
static inline uint64_t kh_id(const kh_key_t *key, uint64_t lo, uint64_t hi) {
    return kh_fold(kh_fold(lo ^ key->k[0], hi ^ key->k[1]) ^ key->k[2], key->k[3]);
}

/* n bytes: 16-byte chunks chained through the fold, a zero-padded tail, the length mixed in first */
static inline uint64_t kh_bytes(const kh_key_t *key, const uint8_t *p, int n) {
    uint64_t s = key->k[0] ^ (uint64_t)n;
    int i = 0;
    for (; i + 16 <= n; i += 16) s = kh_fold(kh_rd64(p + i) ^ key->k[1], kh_rd64(p + i + 8) ^ s);
    if (i < n) {  /* little-endian words, as kh_rd64 */
        uint64_t w0 = 0, w1 = 0;
        int r = n - i;
        const uint8_t *t = p + i;
        if (r >= 8) { w0 = kh_rd64(t); t += 8; r -= 8; for (int j = 0; j < r; j++) w1 |= (uint64_t)t[j] << (8 * j); }
        else for (int j = 0; j < r; j++) w0 |= (uint64_t)t[j] << (8 * j);
        s = kh_fold(w0 ^ key->k[1], w1 ^ s);
    }
    return kh_fold(s ^ key->k[2], key->k[3]);
}

/* the process's key: from SOVLEDGER_HASH_KEY (tests only), else os.urandom; 0 with an exception */
static inline int kh_nibble(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static inline int kh_init(kh_key_t *key) {
    if (key->set) return 1; /* a second module init (another interpreter) keeps the key the tables use */
    const char *env = getenv(KH_ENV);
    uint8_t raw[8 * KH_WORDS];
    if (env != NULL && *env) {
        int ok = strlen(env) == 2 * sizeof raw;
        for (size_t b = 0; ok && b < sizeof raw; b++) {
            int hi = kh_nibble(env[2 * b]), lo = kh_nibble(env[2 * b + 1]);
            ok = hi >= 0 && lo >= 0;
            raw[b] = (uint8_t)(hi << 4 | lo);
        }
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "%s must be %d hex digits (a fixed hash key, for tests only)", KH_ENV,
                         (int)(2 * sizeof raw));
            return 0;
        }
    } else {
        PyObject *os = PyImport_ImportModule("os");
        PyObject *got = os != NULL ? PyObject_CallMethod(os, "urandom", "i", (int)sizeof raw) : NULL;
        Py_XDECREF(os);
        if (got == NULL) return 0;
        int ok = PyBytes_Check(got) && PyBytes_GET_SIZE(got) == (Py_ssize_t)sizeof raw;
        if (ok) memcpy(raw, PyBytes_AS_STRING(got), sizeof raw);
        Py_DECREF(got);
        if (!ok) { PyErr_SetString(PyExc_RuntimeError, "os.urandom returned no key"); return 0; }
    }
    for (int w = 0; w < KH_WORDS; w++) key->k[w] = kh_rd64(raw + 8 * w);
    key->set = 1;
    return 1;
}

#endif
