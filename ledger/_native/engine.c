/* sovledger native engine: BLAKE3 (written from the public BLAKE3 specification), the block's
 * leaf-hash chain and the Merkle compact-range append, byte-identical to ledger/hashing.py and
 * ledger/merkle.py. The long loops run with the GIL released. See docs/ARCHITECTURE.md. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_LEN 1024
#define BLOCK_LEN 64
#define OUT_LEN 32
#define F_CHUNK_START 1u
#define F_CHUNK_END 2u
#define F_PARENT 4u
#define F_ROOT 8u
#define MAX_DEPTH 54 /* 2^54 chunks is far beyond any buffer */

static const uint32_t IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                               0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};
static const uint8_t SCHED[7][16] = {  /* PERM applied r times: round r reads m[SCHED[r][i]] */
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
    {3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
    {10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
    {12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
    {9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
    {11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13}};

static inline uint32_t rotr(uint32_t w, unsigned c) { return (w >> c) | (w << (32 - c)); }

static inline void mix(uint32_t *s, int a, int b, int c, int d, uint32_t x, uint32_t y) {
    s[a] = s[a] + s[b] + x; s[d] = rotr(s[d] ^ s[a], 16);
    s[c] = s[c] + s[d];     s[b] = rotr(s[b] ^ s[c], 12);
    s[a] = s[a] + s[b] + y; s[d] = rotr(s[d] ^ s[a], 8);
    s[c] = s[c] + s[d];     s[b] = rotr(s[b] ^ s[c], 7);
}

/* The compression function; writes the 8 output words (the chaining value) to out. */
static void compress(const uint32_t cv[8], const uint8_t block[BLOCK_LEN], uint64_t counter,
                     uint32_t block_len, uint32_t flags, uint32_t out[8]) {
    uint32_t m[16], s[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint32_t)block[4 * i] | ((uint32_t)block[4 * i + 1] << 8) |
               ((uint32_t)block[4 * i + 2] << 16) | ((uint32_t)block[4 * i + 3] << 24);
    for (int i = 0; i < 8; i++) s[i] = cv[i];
    for (int i = 0; i < 4; i++) s[8 + i] = IV[i];
    s[12] = (uint32_t)counter; s[13] = (uint32_t)(counter >> 32); s[14] = block_len; s[15] = flags;
#define ROUND(r)                                                                                   \
    mix(s, 0, 4, 8, 12, m[SCHED[r][0]], m[SCHED[r][1]]);   mix(s, 1, 5, 9, 13, m[SCHED[r][2]], m[SCHED[r][3]]);   \
    mix(s, 2, 6, 10, 14, m[SCHED[r][4]], m[SCHED[r][5]]);  mix(s, 3, 7, 11, 15, m[SCHED[r][6]], m[SCHED[r][7]]);  \
    mix(s, 0, 5, 10, 15, m[SCHED[r][8]], m[SCHED[r][9]]);  mix(s, 1, 6, 11, 12, m[SCHED[r][10]], m[SCHED[r][11]]); \
    mix(s, 2, 7, 8, 13, m[SCHED[r][12]], m[SCHED[r][13]]); mix(s, 3, 4, 9, 14, m[SCHED[r][14]], m[SCHED[r][15]]);
    ROUND(0) ROUND(1) ROUND(2) ROUND(3) ROUND(4) ROUND(5) ROUND(6)
#undef ROUND
    for (int i = 0; i < 8; i++) out[i] = s[i] ^ s[i + 8];
}

/* A whole input laid out as up to three segments (domain byte, then up to two buffers). */
typedef struct { const uint8_t *p[3]; size_t n[3]; size_t total; } segs_t;

static void seg_copy(const segs_t *g, size_t off, uint8_t *dst, size_t len) {
    for (int k = 0; k < 3 && len; k++) {
        if (off >= g->n[k]) { off -= g->n[k]; continue; }
        size_t take = g->n[k] - off < len ? g->n[k] - off : len;
        memcpy(dst, g->p[k] + off, take);
        dst += take; len -= take; off = 0;
    }
}

/* Chaining value of one chunk (bytes [start, start+len) of the input); ROOT on its last block if root. */
static void chunk_cv(const segs_t *g, size_t start, size_t len, uint64_t index, int root, uint32_t out[8]) {
    uint32_t cv[8];
    uint8_t block[BLOCK_LEN];
    memcpy(cv, IV, sizeof cv);
    size_t nblocks = len == 0 ? 1 : (len + BLOCK_LEN - 1) / BLOCK_LEN;
    for (size_t b = 0; b < nblocks; b++) {
        size_t blen = len - b * BLOCK_LEN < BLOCK_LEN ? len - b * BLOCK_LEN : BLOCK_LEN;
        memset(block, 0, sizeof block);
        seg_copy(g, start + b * BLOCK_LEN, block, blen);
        uint32_t flags = (b == 0 ? F_CHUNK_START : 0) | (b == nblocks - 1 ? F_CHUNK_END : 0);
        if (root && b == nblocks - 1) flags |= F_ROOT;
        compress(cv, block, index, (uint32_t)blen, flags, cv);
    }
    memcpy(out, cv, sizeof cv);
}

static void parent_cv(const uint32_t l[8], const uint32_t r[8], uint32_t flags, uint32_t out[8]) {
    uint8_t block[BLOCK_LEN];
    for (int i = 0; i < 8; i++) {
        for (int j = 0; j < 4; j++) {
            block[4 * i + j] = (uint8_t)(l[i] >> (8 * j));
            block[32 + 4 * i + j] = (uint8_t)(r[i] >> (8 * j));
        }
    }
    compress(IV, block, 0, BLOCK_LEN, F_PARENT | flags, out);
}

static void words_out(const uint32_t w[8], uint8_t out[OUT_LEN]) {
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(w[i] >> (8 * j));
}

/* BLAKE3 (32-byte output) of the concatenated segments. */
static void b3_segs(const segs_t *g, uint8_t out[OUT_LEN]) {
    size_t n = g->total;
    uint64_t chunks = n == 0 ? 1 : (n + CHUNK_LEN - 1) / CHUNK_LEN;
    uint32_t cv[8];
    if (chunks == 1) {
        chunk_cv(g, 0, n, 0, 1, cv);
        words_out(cv, out);
        return;
    }
    uint32_t stack[MAX_DEPTH][8];
    int depth = 0;
    for (uint64_t c = 0; c + 1 < chunks; c++) { /* every chunk but the last, merged as subtrees complete */
        chunk_cv(g, c * CHUNK_LEN, CHUNK_LEN, c, 0, cv);
        uint64_t total = c + 1;
        while ((total & 1) == 0) {
            parent_cv(stack[--depth], cv, 0, cv);
            total >>= 1;
        }
        memcpy(stack[depth++], cv, sizeof cv);
    }
    uint64_t last = chunks - 1;
    chunk_cv(g, last * CHUNK_LEN, n - last * CHUNK_LEN, last, 0, cv);
    while (depth > 0) {
        depth--;
        parent_cv(stack[depth], cv, depth == 0 ? F_ROOT : 0, cv);
    }
    words_out(cv, out);
}

static void b3_3(const uint8_t *a, size_t na, const uint8_t *b, size_t nb, const uint8_t *c, size_t nc,
                 uint8_t out[OUT_LEN]) {
    segs_t g = {{a, b, c}, {na, nb, nc}, na + nb + nc};
    b3_segs(&g, out);
}

/* BLAKE3 of a || b || c for ledger/_native/group.c (PSP group roots and auxes). */
void sovledger_b3_3(const uint8_t *a, size_t na, const uint8_t *b, size_t nb, const uint8_t *c, size_t nc,
                    uint8_t out[OUT_LEN]) {
    b3_3(a, na, b, nb, c, nc, out);
}

static const uint8_t D_LEAF = 0x00, D_NODE = 0x01, D_CHAIN = 0x02;

/* blake3(data) -> 32 bytes */
static PyObject *py_blake3(PyObject *self, PyObject *arg) {
    Py_buffer v;
    uint8_t out[OUT_LEN];
    if (PyObject_GetBuffer(arg, &v, PyBUF_SIMPLE) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    b3_3(v.buf, (size_t)v.len, NULL, 0, NULL, 0, out);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    return PyBytes_FromStringAndSize((const char *)out, OUT_LEN);
}

static int need_hash(PyObject *o, const char *what) {
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != OUT_LEN) {
        PyErr_Format(PyExc_ValueError, "%s must be 32 bytes", what);
        return 0;
    }
    return 1;
}

/* hash_and_chain(prev_link, leaves) -> (leaf hashes, link): ledger.hashing.hash_and_chain */
static PyObject *py_hash_and_chain(PyObject *self, PyObject *args) {
    PyObject *prev, *leaves_in;
    if (!PyArg_ParseTuple(args, "OO", &prev, &leaves_in) || !need_hash(prev, "prev_link")) return NULL;
    /* a private tuple holds every leaf alive while the GIL is released, whatever other threads do */
    PyObject *leaves = PySequence_Tuple(leaves_in);
    if (leaves == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(leaves);
    PyObject **items = PySequence_Fast_ITEMS(leaves);
    const uint8_t **ptr = PyMem_Malloc(sizeof(*ptr) * (size_t)(n ? n : 1));
    size_t *len = PyMem_Malloc(sizeof(*len) * (size_t)(n ? n : 1));
    uint8_t *hashes = PyMem_Malloc((size_t)OUT_LEN * (size_t)(n ? n : 1));
    PyObject *result = NULL;
    if (ptr == NULL || len == NULL || hashes == NULL) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(items[i])) { PyErr_SetString(PyExc_TypeError, "every leaf must be bytes"); goto done; }
        ptr[i] = (const uint8_t *)PyBytes_AS_STRING(items[i]);
        len[i] = (size_t)PyBytes_GET_SIZE(items[i]);
    }
    uint8_t link[OUT_LEN];
    memcpy(link, PyBytes_AS_STRING(prev), OUT_LEN);
    Py_BEGIN_ALLOW_THREADS /* bytes are immutable and the tuple owns them */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t *h = hashes + (size_t)i * OUT_LEN;
        b3_3(&D_LEAF, 1, ptr[i], len[i], NULL, 0, h);
        b3_3(&D_CHAIN, 1, link, OUT_LEN, h, OUT_LEN, link);
    }
    Py_END_ALLOW_THREADS
    PyObject *list = PyList_New(n);
    if (list == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PyBytes_FromStringAndSize((const char *)hashes + (size_t)i * OUT_LEN, OUT_LEN);
        if (h == NULL) { Py_DECREF(list); goto done; }
        PyList_SET_ITEM(list, i, h);
    }
    result = Py_BuildValue("(Ny#)", list, (const char *)link, (Py_ssize_t)OUT_LEN);
done:
    PyMem_Free(ptr); PyMem_Free(len); PyMem_Free(hashes);
    Py_DECREF(leaves);
    return result;
}

/* merkle_append(stack, size, leaf_hashes, min_level) -> (stack, size, [(level, index, hash)]):
 * ledger.merkle.CompactRange.append_many on a copy of the stack. */
static PyObject *py_merkle_append(PyObject *self, PyObject *args) {
    PyObject *stack_in, *leaves_in;
    unsigned long long size;
    int min_level;
    if (!PyArg_ParseTuple(args, "OKOi", &stack_in, &size, &leaves_in, &min_level)) return NULL;
    PyObject *stack = PySequence_Fast(stack_in, "stack must be a sequence of hashes");
    if (stack == NULL) return NULL;
    PyObject *leaves = PySequence_Fast(leaves_in, "leaf hashes must be a sequence");
    if (leaves == NULL) { Py_DECREF(stack); return NULL; }
    Py_ssize_t depth0 = PySequence_Fast_GET_SIZE(stack), n = PySequence_Fast_GET_SIZE(leaves);
    PyObject *result = NULL, *out = NULL;
    uint8_t (*st)[OUT_LEN] = PyMem_Malloc((size_t)(depth0 + 66) * OUT_LEN);
    /* every leaf completes at most 64 subtrees: (level u8, index u64, hash) records */
    size_t cap = (size_t)(n ? n : 1) * 2 + 64;
    uint8_t *recs = PyMem_Malloc(cap * (1 + 8 + OUT_LEN));
    if (st == NULL || recs == NULL) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < depth0; i++) {
        PyObject *h = PySequence_Fast_GET_ITEM(stack, i);
        if (!need_hash(h, "a compact range hash")) goto done;
        memcpy(st[i], PyBytes_AS_STRING(h), OUT_LEN);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!need_hash(PySequence_Fast_GET_ITEM(leaves, i), "a leaf hash")) goto done;
    size_t depth = (size_t)depth0, nrec = 0;
    PyObject **lv = PySequence_Fast_ITEMS(leaves);
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *lh = (const uint8_t *)PyBytes_AS_STRING(lv[i]);
        if (min_level == 0) {
            uint8_t *r = recs + nrec++ * (1 + 8 + OUT_LEN);
            r[0] = 0; memcpy(r + 1, &size, 8); memcpy(r + 9, lh, OUT_LEN);
        }
        memcpy(st[depth++], lh, OUT_LEN);
        unsigned long long idx = size;
        int level = 0;
        size++;
        while (idx & 1) {
            uint8_t h[OUT_LEN];
            b3_3(&D_NODE, 1, st[depth - 2], OUT_LEN, st[depth - 1], OUT_LEN, h);
            depth -= 2;
            memcpy(st[depth++], h, OUT_LEN);
            level++;
            idx >>= 1;
            if (level >= min_level) {
                uint8_t *r = recs + nrec++ * (1 + 8 + OUT_LEN);
                r[0] = (uint8_t)level; memcpy(r + 1, &idx, 8); memcpy(r + 9, h, OUT_LEN);
            }
        }
    }
    PyObject *new_stack = PyList_New((Py_ssize_t)depth);
    if (new_stack == NULL) goto done;
    for (size_t i = 0; i < depth; i++) {
        PyObject *h = PyBytes_FromStringAndSize((const char *)st[i], OUT_LEN);
        if (h == NULL) { Py_DECREF(new_stack); goto done; }
        PyList_SET_ITEM(new_stack, (Py_ssize_t)i, h);
    }
    out = PyList_New((Py_ssize_t)nrec);
    if (out == NULL) { Py_DECREF(new_stack); goto done; }
    for (size_t i = 0; i < nrec; i++) {
        const uint8_t *r = recs + i * (1 + 8 + OUT_LEN);
        unsigned long long ix;
        memcpy(&ix, r + 1, 8);
        PyObject *t = Py_BuildValue("(iKy#)", (int)r[0], ix, (const char *)r + 9, (Py_ssize_t)OUT_LEN);
        if (t == NULL) { Py_DECREF(new_stack); Py_CLEAR(out); goto done; }
        PyList_SET_ITEM(out, (Py_ssize_t)i, t);
    }
    result = Py_BuildValue("(NKN)", new_stack, size, out);
done:
    PyMem_Free(st); PyMem_Free(recs);
    Py_DECREF(stack); Py_DECREF(leaves);
    return result;
}

/* ---- eight leaf hashes at once (AVX2) ----------------------------------------------------------
 * A block's leaf hashes are independent of each other (only the chain link is sequential), and a
 * batch's leaves usually have one length. Eight leaves of equal length that fit one chunk are
 * hashed together, word i of lane j being word i of leaf j's state: the same compression as
 * compress() above on eight states, no shuffles. Chosen at run time (__builtin_cpu_supports); the
 * scalar path gives the same bytes (tests/engine/test_native_glue.py). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LANES 8
#define V __m256i
__attribute__((target("avx2"))) static inline V rot16(V x) {
    return _mm256_shuffle_epi8(x, _mm256_set_epi8(13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2,
                                                  13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2));
}
__attribute__((target("avx2"))) static inline V rot8(V x) {
    return _mm256_shuffle_epi8(x, _mm256_set_epi8(12, 15, 14, 13, 8, 11, 10, 9, 4, 7, 6, 5, 0, 3, 2, 1,
                                                  12, 15, 14, 13, 8, 11, 10, 9, 4, 7, 6, 5, 0, 3, 2, 1));
}
#define ROTV(x, c) _mm256_or_si256(_mm256_srli_epi32((x), (c)), _mm256_slli_epi32((x), 32 - (c)))
#define MIXV(a, b, c, d, x, y)                                                              \
    s[a] = _mm256_add_epi32(_mm256_add_epi32(s[a], s[b]), (x)); s[d] = rot16(_mm256_xor_si256(s[d], s[a])); \
    s[c] = _mm256_add_epi32(s[c], s[d]); s[b] = ROTV(_mm256_xor_si256(s[b], s[c]), 12);       \
    s[a] = _mm256_add_epi32(_mm256_add_epi32(s[a], s[b]), (y)); s[d] = rot8(_mm256_xor_si256(s[d], s[a]));  \
    s[c] = _mm256_add_epi32(s[c], s[d]); s[b] = ROTV(_mm256_xor_si256(s[b], s[c]), 7);

/* BLAKE3 of domain ‖ in[j] for eight inputs of len bytes each, 1 + len <= CHUNK_LEN (one chunk, root);
 * out[j] may be anywhere (stride: out_stride hashes) */
__attribute__((target("avx2"))) static void hash8(uint8_t domain, const uint8_t *const in[LANES], size_t len,
                                                  uint8_t (*out)[OUT_LEN], size_t out_stride) {
    size_t total = 1 + len, nblocks = (total + BLOCK_LEN - 1) / BLOCK_LEN;
    V cv[8], s[16], m[16];
    uint32_t w[16][LANES] __attribute__((aligned(32)));
    for (int i = 0; i < 8; i++) cv[i] = _mm256_set1_epi32((int)IV[i]);
    for (size_t b = 0; b < nblocks; b++) {
        size_t blen = total - b * BLOCK_LEN < BLOCK_LEN ? total - b * BLOCK_LEN : BLOCK_LEN;
        for (int j = 0; j < LANES; j++) {
            uint8_t block[BLOCK_LEN] = {0};
            if (b == 0) { block[0] = domain; memcpy(block + 1, in[j], blen - 1); }
            else memcpy(block, in[j] + b * BLOCK_LEN - 1, blen);
            for (int i = 0; i < 16; i++)
                w[i][j] = (uint32_t)block[4 * i] | ((uint32_t)block[4 * i + 1] << 8) |
                          ((uint32_t)block[4 * i + 2] << 16) | ((uint32_t)block[4 * i + 3] << 24);
        }
        for (int i = 0; i < 16; i++) m[i] = _mm256_load_si256((const V *)w[i]);
        uint32_t flags = (b == 0 ? F_CHUNK_START : 0) | (b == nblocks - 1 ? F_CHUNK_END | F_ROOT : 0);
        for (int i = 0; i < 8; i++) s[i] = cv[i];
        for (int i = 0; i < 4; i++) s[8 + i] = _mm256_set1_epi32((int)IV[i]);
        s[12] = _mm256_setzero_si256(); s[13] = _mm256_setzero_si256();  /* chunk counter 0 */
        s[14] = _mm256_set1_epi32((int)blen); s[15] = _mm256_set1_epi32((int)flags);
        for (int r = 0; r < 7; r++) {
            const uint8_t *q = SCHED[r];
            MIXV(0, 4, 8, 12, m[q[0]], m[q[1]]) MIXV(1, 5, 9, 13, m[q[2]], m[q[3]])
            MIXV(2, 6, 10, 14, m[q[4]], m[q[5]]) MIXV(3, 7, 11, 15, m[q[6]], m[q[7]])
            MIXV(0, 5, 10, 15, m[q[8]], m[q[9]]) MIXV(1, 6, 11, 12, m[q[10]], m[q[11]])
            MIXV(2, 7, 8, 13, m[q[12]], m[q[13]]) MIXV(3, 4, 9, 14, m[q[14]], m[q[15]])
        }
        for (int i = 0; i < 8; i++) cv[i] = _mm256_xor_si256(s[i], s[i + 8]);
    }
    for (int i = 0; i < 8; i++) _mm256_store_si256((V *)w[i], cv[i]);
    for (int j = 0; j < LANES; j++)
        for (int i = 0; i < 8; i++)
            for (int k = 0; k < 4; k++) out[j * out_stride][4 * i + k] = (uint8_t)(w[i][j] >> (8 * k));
}
#undef MIXV
#undef ROTV
#undef V
static int have_avx2(void) {
    static int known = -1;
    if (known < 0) { __builtin_cpu_init(); known = __builtin_cpu_supports("avx2") ? 1 : 0; }
    return known;
}
#else
#define LANES 8
static int have_avx2(void) { return 0; }
static void hash8(uint8_t domain, const uint8_t *const in[LANES], size_t len, uint8_t (*out)[OUT_LEN], size_t out_stride) {
    (void)domain; (void)in; (void)len; (void)out; (void)out_stride;
}
#endif

/* Every leaf hash (BLAKE3 of D_LEAF ‖ leaf) into h: eight at a time where eight consecutive leaves have
 * one length that fits a chunk and the CPU has AVX2, one at a time otherwise. GIL not needed. */
static void leaf_hashes(const uint8_t *const *ptr, const size_t *len, Py_ssize_t n, int wide, uint8_t (*h)[OUT_LEN]) {
    Py_ssize_t i = 0;
    while (i < n) {
        int run = wide && i + LANES <= n && 1 + len[i] <= CHUNK_LEN;
        for (int j = 1; run && j < LANES; j++) run = len[i + j] == len[i];
        if (run) { hash8(D_LEAF, ptr + i, len[i], h + i, 1); i += LANES; continue; }
        b3_3(&D_LEAF, 1, ptr[i], len[i], NULL, 0, h[i]);
        i++;
    }
}

/* The level-1 Merkle nodes whose two leaves are both in this block, eight at a time (AVX2): the leaf
 * whose global index (first + i) is odd closes the pair (i - 1, i); its node hash goes to pair[i]. The
 * pairs are adjacent in h, so each node's input is h[i - 1] ‖ h[i], 64 contiguous bytes. Returns how
 * many leaves, from the first such i on, have their pair hash precomputed (whole groups of eight). */
static Py_ssize_t pair_hashes(const uint8_t (*h)[OUT_LEN], Py_ssize_t n, unsigned long long first,
                              uint8_t (*pair)[OUT_LEN], Py_ssize_t *from) {
    Py_ssize_t i0 = (first & 1) ? 2 : 1, done = 0;  /* first odd global index with its left leaf here */
    *from = i0;
    for (Py_ssize_t i = i0; i + 2 * (LANES - 1) < n; i += 2 * LANES) {
        const uint8_t *in[LANES];
        for (int j = 0; j < LANES; j++) in[j] = h[i - 1 + 2 * j];
        hash8(D_NODE, in, 2 * OUT_LEN, pair + i, 2);
        done = i + 2 * LANES - i0;
    }
    return done;
}

/* seal_hashes(prev_link, leaves, stack, size) -> (link, stack, size, [(node_key, hash)]): a block's leaf
 * hashes, hash chain and Merkle compact-range append in one pass with the GIL released, for the pairs
 * (index key, leaf) the numbering produced. The same bytes as hash_and_chain followed by merkle_append
 * with min_level 1 (level-0 hashes are not stored), without one Python object per leaf hash; node
 * keys are ledger/schema.py node_key: end u64 big-endian ‖ level u8, where end = (index + 1) << level is
 * the tree size right after the leaf that completes the node, so the keys come out ascending. */
static PyObject *py_seal_hashes(PyObject *self, PyObject *args) {
    PyObject *prev, *pairs_in, *stack_in;
    unsigned long long size;
    int force_scalar = 0;  /* tests: the one-at-a-time path on any CPU */
    if (!PyArg_ParseTuple(args, "OOOK|p", &prev, &pairs_in, &stack_in, &size, &force_scalar) ||
        !need_hash(prev, "prev_link"))
        return NULL;
    PyObject *pairs = PySequence_Tuple(pairs_in);  /* owns every leaf while the GIL is released */
    if (pairs == NULL) return NULL;
    PyObject *stack = PySequence_Fast(stack_in, "stack must be a sequence of hashes");
    if (stack == NULL) { Py_DECREF(pairs); return NULL; }
    Py_ssize_t n = PyTuple_GET_SIZE(pairs), depth0 = PySequence_Fast_GET_SIZE(stack);
    const uint8_t **ptr = PyMem_Malloc(sizeof(*ptr) * (size_t)(n ? n : 1));
    size_t *len = PyMem_Malloc(sizeof(*len) * (size_t)(n ? n : 1));
    uint8_t (*st)[OUT_LEN] = PyMem_Malloc((size_t)(depth0 + 66) * OUT_LEN);
    size_t cap = (size_t)(n ? n : 1) + 64;  /* n leaves complete at most n + 63 subtrees at level >= 1 */
    uint8_t *recs = PyMem_Malloc(cap * (9 + OUT_LEN));
    uint8_t (*lh)[OUT_LEN] = PyMem_Malloc((size_t)(n ? n : 1) * OUT_LEN);
    uint8_t (*pairs1)[OUT_LEN] = PyMem_Malloc((size_t)(n ? n : 1) * OUT_LEN);  /* level-1 nodes, at the right leaf */
    PyObject *result = NULL;
    int wide = have_avx2() && !force_scalar;
    if (!ptr || !len || !st || !recs || !lh || !pairs1) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyTuple_GET_ITEM(pairs, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
            PyErr_SetString(PyExc_TypeError, "every leaf must be a (key, leaf bytes) pair");
            goto done;
        }
        ptr[i] = (const uint8_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(t, 1));
        len[i] = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1));
    }
    for (Py_ssize_t i = 0; i < depth0; i++) {
        PyObject *h = PySequence_Fast_GET_ITEM(stack, i);
        if (!need_hash(h, "a compact range hash")) goto done;
        memcpy(st[i], PyBytes_AS_STRING(h), OUT_LEN);
    }
    uint8_t link[OUT_LEN];
    memcpy(link, PyBytes_AS_STRING(prev), OUT_LEN);
    size_t depth = (size_t)depth0, nrec = 0;
    Py_ssize_t from = 0, paired = 0;
    Py_BEGIN_ALLOW_THREADS
    leaf_hashes(ptr, len, n, wide, lh);
    if (wide) paired = pair_hashes((const uint8_t (*)[OUT_LEN])lh, n, size, pairs1, &from);
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(st[depth], lh[i], OUT_LEN);
        b3_3(&D_CHAIN, 1, link, OUT_LEN, st[depth], OUT_LEN, link);
        depth++;
        unsigned long long idx = size++;
        int level = 0;
        while (idx & 1) {
            uint8_t h[OUT_LEN];
            if (level == 0 && i >= from && i < from + paired) memcpy(h, pairs1[i], OUT_LEN);  /* (i - 1, i) */
            else b3_3(&D_NODE, 1, st[depth - 2], OUT_LEN, st[depth - 1], OUT_LEN, h);
            depth--;
            memcpy(st[depth - 1], h, OUT_LEN);
            level++;
            idx >>= 1;
            uint8_t *r = recs + nrec++ * (9 + OUT_LEN);  /* key: end (= size now) u64 BE ‖ level u8 */
            for (int b = 0; b < 8; b++) r[b] = (uint8_t)(size >> (56 - 8 * b));
            r[8] = (uint8_t)level;
            memcpy(r + 9, h, OUT_LEN);
        }
    }
    Py_END_ALLOW_THREADS
    PyObject *new_stack = PyList_New((Py_ssize_t)depth), *nodes = PyList_New((Py_ssize_t)nrec);
    if (new_stack == NULL || nodes == NULL) { Py_XDECREF(new_stack); Py_XDECREF(nodes); goto done; }
    for (size_t i = 0; i < depth; i++) {
        PyObject *h = PyBytes_FromStringAndSize((const char *)st[i], OUT_LEN);
        if (h == NULL) { Py_DECREF(new_stack); Py_DECREF(nodes); goto done; }
        PyList_SET_ITEM(new_stack, (Py_ssize_t)i, h);
    }
    for (size_t i = 0; i < nrec; i++) {
        const uint8_t *r = recs + i * (9 + OUT_LEN);
        PyObject *t = PyTuple_New(2), *key = PyBytes_FromStringAndSize((const char *)r, 9);
        PyObject *h = PyBytes_FromStringAndSize((const char *)r + 9, OUT_LEN);  /* no format string per node */
        if (t == NULL || key == NULL || h == NULL) {
            Py_XDECREF(t); Py_XDECREF(key); Py_XDECREF(h); Py_DECREF(new_stack); Py_DECREF(nodes);
            goto done;
        }
        PyTuple_SET_ITEM(t, 0, key); PyTuple_SET_ITEM(t, 1, h);
        PyList_SET_ITEM(nodes, (Py_ssize_t)i, t);
    }
    result = Py_BuildValue("(y#NKN)", (const char *)link, (Py_ssize_t)OUT_LEN, new_stack, size, nodes);
done:
    PyMem_Free(ptr); PyMem_Free(len); PyMem_Free(st); PyMem_Free(recs); PyMem_Free(lh); PyMem_Free(pairs1);
    Py_DECREF(pairs); Py_DECREF(stack);
    return result;
}

/* The state hash's input: 0x04 ‖ previous ‖ (id ‖ state)… as one buffer (a bytes object if as_bytes). */
static PyObject *state_input(PyObject *args, int as_bytes, uint8_t **raw, size_t *raw_len) {
    PyObject *prev, *changed_in;
    if (!PyArg_ParseTuple(args, "OO", &prev, &changed_in) || !need_hash(prev, "previous")) return NULL;
    PyObject *changed = PySequence_Fast(changed_in, "changed must be a sequence of (id, state) pairs");
    if (changed == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(changed);
    PyObject **items = PySequence_Fast_ITEMS(changed);
    size_t total = 1 + OUT_LEN;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = items[i];
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(t, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
            Py_DECREF(changed);
            PyErr_SetString(PyExc_TypeError, "every changed account must be an (id bytes, state bytes) pair");
            return NULL;
        }
        total += (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 0)) + (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1));
    }
    PyObject *out = as_bytes ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total) : NULL;
    uint8_t *buf = as_bytes ? (out ? (uint8_t *)PyBytes_AS_STRING(out) : NULL) : PyMem_Malloc(total);
    if (buf == NULL) { Py_DECREF(changed); return as_bytes ? NULL : PyErr_NoMemory(); }
    buf[0] = 0x04;
    memcpy(buf + 1, PyBytes_AS_STRING(prev), OUT_LEN);
    size_t off = 1 + OUT_LEN;
    for (Py_ssize_t i = 0; i < n; i++) {
        for (int k = 0; k < 2; k++) {
            PyObject *b = PyTuple_GET_ITEM(items[i], k);
            memcpy(buf + off, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
            off += (size_t)PyBytes_GET_SIZE(b);
        }
    }
    Py_DECREF(changed);
    if (as_bytes) return out;
    *raw = buf; *raw_len = total;
    return Py_None;  /* borrowed marker: success */
}

/* state_hash(previous, changed) -> 32 bytes: ledger.hashing.state_hash over (id, state) pairs */
static PyObject *py_state_hash(PyObject *self, PyObject *args) {
    uint8_t *buf = NULL, out[OUT_LEN];
    size_t total = 0;
    if (state_input(args, 0, &buf, &total) == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS
    b3_3(buf, total, NULL, 0, NULL, 0, out);
    Py_END_ALLOW_THREADS
    PyMem_Free(buf);
    return PyBytes_FromStringAndSize((const char *)out, OUT_LEN);
}

/* state_input(previous, changed) -> bytes: what state_hash hashes, for a SIMD BLAKE3 (ledger/native.py) */
static PyObject *py_state_input(PyObject *self, PyObject *args) { return state_input(args, 1, NULL, NULL); }

static PyMethodDef methods[] = {
    {"state_hash", py_state_hash, METH_VARARGS, "State hash chaining the changed accounts."},
    {"state_input", py_state_input, METH_VARARGS, "The bytes the state hash is computed over."},
    {"blake3", py_blake3, METH_O, "BLAKE3-256 of a bytes-like object."},
    {"hash_and_chain", py_hash_and_chain, METH_VARARGS, "Leaf hashes and the chain link after the last."},
    {"merkle_append", py_merkle_append, METH_VARARGS, "Compact-range append of leaf hashes."},
    {"seal_hashes", py_seal_hashes, METH_VARARGS, "Leaf hashes, chain and stored Merkle nodes of a block."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_engine", "sovledger native engine", -1, methods};

extern PyMethodDef apply_methods[];  /* ledger/_native/apply.c: the transfer apply engine */
extern PyMethodDef seal_methods[];   /* ledger/_native/seal.c: leaf numbering, account and ref rows */
extern PyMethodDef group_methods[];  /* ledger/_native/group.c: PSP signature checks, group auxes */

int apply_init_key(void);            /* apply.c: its hash tables' key (keyed_hash.h) */

PyMODINIT_FUNC PyInit__engine(void) {
    if (!apply_init_key()) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddFunctions(m, apply_methods) < 0 || PyModule_AddFunctions(m, seal_methods) < 0 ||
                      PyModule_AddFunctions(m, group_methods) < 0))
        Py_CLEAR(m);
    return m;
}
