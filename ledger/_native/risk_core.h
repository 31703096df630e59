/* sovledger risk window arithmetic over a plain uint64_t[17] state (ledger/risk.py: per window bucket,
 * prev_count, prev_sum, cur_count, cur_sum; then ewma, n). Shared by risk.c (the Python-list entry
 * points) and rules.c (the block's risk states kept in C). Counters saturate at 2^64 - 1. */
#ifndef SOVLEDGER_RISK_CORE_H
#define SOVLEDGER_RISK_CORE_H
#include <stdint.h>

#define RISK_STATE_LEN 17
#define RISK_TOP UINT64_MAX

static const uint64_t RISK_WINDOWS[3] = {60ULL * 1000000000ULL, 3600ULL * 1000000000ULL, 86400ULL * 1000000000ULL};

static inline uint64_t risk_sat_add(uint64_t a, uint64_t b) {
    uint64_t s = a + b;
    return s < a || s == RISK_TOP ? RISK_TOP : s;
}

/* a block time as the windows see it: per window its bucket and the time left in it (the block's
 * timestamp is one per block, so the C hook computes this once per block, not per read) */
typedef struct {
    uint64_t bucket[3], remaining[3];
} risk_clock_t;

static inline void risk_clock(risk_clock_t *k, uint64_t ts) {
    for (int w = 0; w < 3; w++) {
        k->bucket[w] = ts / RISK_WINDOWS[w];
        k->remaining[w] = RISK_WINDOWS[w] - (ts - k->bucket[w] * RISK_WINDOWS[w]);
    }
}

/* one successful event of amount (already saturated to 2^64 - 1) at the block time k, in place */
static inline void risk_record_at(uint64_t st[RISK_STATE_LEN], const risk_clock_t *k, uint64_t amount) {
    for (int w = 0; w < 3; w++) {
        uint64_t *s = st + 5 * w;
        uint64_t bucket = k->bucket[w];
        if (bucket != s[0]) {
            if (s[0] != RISK_TOP && bucket == s[0] + 1) {
                s[1] = s[3];
                s[2] = s[4];
            } else {
                s[1] = s[2] = 0;
            }
            s[0] = bucket;
            s[3] = s[4] = 0;
        }
        s[3] = risk_sat_add(s[3], 1);
        s[4] = risk_sat_add(s[4], amount);
    }
    uint64_t ewma = st[15], n = st[16];
    if (n == 0) {
        st[15] = amount;
    } else {
        __int128 diff = (__int128)amount - (__int128)ewma;
        __int128 next = (__int128)ewma + (diff >> 3); /* arithmetic shift: floor, as Python's >> */
        st[15] = next < 0 ? 0 : (uint64_t)next;
    }
    st[16] = risk_sat_add(n, 1);
}

static inline void risk_record(uint64_t st[RISK_STATE_LEN], uint64_t ts, uint64_t amount) {
    risk_clock_t k;
    risk_clock(&k, ts);
    risk_record_at(st, &k, amount);
}

/* floor(x * remaining / size of window w): in 64 bits when the product fits (divisions by constants) */
static inline unsigned __int128 risk_scaled(uint64_t x, uint64_t remaining, int w) {
    uint64_t p;
    if (__builtin_mul_overflow(x, remaining, &p)) return (unsigned __int128)x * remaining / RISK_WINDOWS[w];
    switch (w) {
    case 0: return p / (60ULL * 1000000000ULL);
    case 1: return p / (3600ULL * 1000000000ULL);
    default: return p / (86400ULL * 1000000000ULL);
    }
}

/* window_features(st, ts)[slot] at the block time k: slot 0-2 the count of the 1m/1h/24h window, 3-5 its sum */
static inline unsigned __int128 risk_window_at(const uint64_t st[RISK_STATE_LEN], const risk_clock_t *k, int slot) {
    int w = slot % 3;
    const uint64_t *s = st + 5 * w;
    int at = 1 + (slot >= 3); /* prev value; the current one is at + 2 */
    uint64_t bucket = k->bucket[w];
    if (bucket == s[0]) return risk_scaled(s[at], k->remaining[w], w) + s[at + 2];
    if (s[0] != RISK_TOP && bucket == s[0] + 1) return risk_scaled(s[at + 2], k->remaining[w], w);
    return 0;
}

static inline unsigned __int128 risk_window(const uint64_t st[RISK_STATE_LEN], uint64_t ts, int slot) {
    risk_clock_t k;
    risk_clock(&k, ts);
    return risk_window_at(st, &k, slot);
}
/* A Python list of RISK_STATE_LEN ints into st (both includers have Python.h first). */
static inline int risk_read_list(PyObject *list, uint64_t st[RISK_STATE_LEN]) {
    if (!PyList_CheckExact(list) || PyList_GET_SIZE(list) != RISK_STATE_LEN) {
        PyErr_SetString(PyExc_TypeError, "a risk state is a list of 17 ints");
        return -1;
    }
    for (int i = 0; i < RISK_STATE_LEN; i++) {
        st[i] = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(list, i));
        if (st[i] == (uint64_t)-1 && PyErr_Occurred()) return -1;
    }
    return 0;
}
#endif
