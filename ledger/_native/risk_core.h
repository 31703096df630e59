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

/* one successful event of amount (already saturated to 2^64 - 1) at block time ts, in place */
static inline void risk_record(uint64_t st[RISK_STATE_LEN], uint64_t ts, uint64_t amount) {
    for (int w = 0; w < 3; w++) {
        uint64_t *s = st + 5 * w;
        uint64_t bucket = ts / RISK_WINDOWS[w];
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

/* window_features(st, ts)[slot]: slot 0-2 the count of the 1m/1h/24h window, 3-5 its sum */
static inline unsigned __int128 risk_window(const uint64_t st[RISK_STATE_LEN], uint64_t ts, int slot) {
    uint64_t size = RISK_WINDOWS[slot % 3];
    const uint64_t *s = st + 5 * (slot % 3);
    int at = 1 + (slot >= 3); /* prev value; the current one is at + 2 */
    uint64_t bucket = ts / size;
    uint64_t remaining = size - (ts - bucket * size);
    if (bucket == s[0]) return (unsigned __int128)s[at] * remaining / size + s[at + 2];
    if (s[0] != RISK_TOP && bucket == s[0] + 1) return (unsigned __int128)s[at + 2] * remaining / size;
    return 0;
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
