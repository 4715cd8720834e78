/* The checksum every KV block carries, and a copy that computes it on the way.
 *
 * The sum is a Fletcher-style pair per lane over 64-bit words: eight lanes
 * (word j of every 64-byte row goes to lane j), s1 += word, s2 += s1, so a
 * changed, lost or swapped word changes the result; the sixteen lane sums are
 * then mixed into one 64-bit value with the length. It detects damage (a
 * torn write, a wrong slot, a flipped bit), not tampering. Only additions run
 * per word, so with AVX2 the copy-and-sum runs at the speed of memcpy: a block
 * is read once, not once to copy and again to check. A tail shorter than a
 * row is summed as a zero-padded row. The AVX2 and portable paths compute the
 * same value; which one runs is chosen once, by CPU feature. */
#include "CMemWallShim.h"
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

static uint64_t finish(const uint64_t s1[8], const uint64_t s2[8], size_t n) {
    uint64_t h = (uint64_t)n ^ 0x27D4EB2F165667C5ULL;
    for (int j = 0; j < 8; j++) {
        h = (h ^ s1[j]) * 0x9E3779B185EBCA87ULL;
        h = (h ^ s2[j]) * 0xC2B2AE3D27D4EB4FULL;
        h ^= h >> 29;
    }
    return h ^ (h >> 32);
}

/* Rows [from, rows) of src, optionally copied to dst, portable C. */
static void rows_portable(uint64_t s1[8], uint64_t s2[8], unsigned char *dst, const unsigned char *src,
                          size_t from, size_t rows) {
    for (size_t i = from; i < rows; i++) {
        uint64_t w[8];
        memcpy(w, src + i * 64, 64);
        if (dst) memcpy(dst + i * 64, w, 64);
        for (int j = 0; j < 8; j++) { s1[j] += w[j]; s2[j] += s1[j]; }
    }
}

/* The last partial row: copied as is, summed zero-padded. */
static void tail(uint64_t s1[8], uint64_t s2[8], unsigned char *dst, const unsigned char *src, size_t n) {
    size_t done = n / 64 * 64;
    if (done == n) return;
    uint64_t w[8] = {0};
    memcpy(w, src + done, n - done);
    if (dst) memcpy(dst + done, src + done, n - done);
    for (int j = 0; j < 8; j++) { s1[j] += w[j]; s2[j] += s1[j]; }
}

#if defined(__x86_64__)
__attribute__((target("avx2")))
static void rows_avx2(uint64_t s1[8], uint64_t s2[8], unsigned char *dst, const unsigned char *src,
                      size_t rows, int streaming) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, b0 = a0, b1 = a0;
    /* Non-temporal stores need 32-byte aligned destinations; KV slots are page aligned. */
    int stream = streaming && dst && ((uintptr_t)dst & 31) == 0;
    for (size_t i = 0; i < rows; i++) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(src + i * 64));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(src + i * 64 + 32));
        if (stream) {
            _mm256_stream_si256((__m256i *)(dst + i * 64), x0);
            _mm256_stream_si256((__m256i *)(dst + i * 64 + 32), x1);
        } else if (dst) {
            _mm256_storeu_si256((__m256i *)(dst + i * 64), x0);
            _mm256_storeu_si256((__m256i *)(dst + i * 64 + 32), x1);
        }
        a0 = _mm256_add_epi64(a0, x0); a1 = _mm256_add_epi64(a1, x1);
        b0 = _mm256_add_epi64(b0, a0); b1 = _mm256_add_epi64(b1, a1);
    }
    if (stream) _mm_sfence();   /* streamed bytes are visible before the caller reports them moved */
    _mm256_storeu_si256((__m256i *)s1, a0); _mm256_storeu_si256((__m256i *)(s1 + 4), a1);
    _mm256_storeu_si256((__m256i *)s2, b0); _mm256_storeu_si256((__m256i *)(s2 + 4), b1);
}

static int has_avx2(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx2") ? 1 : 0;
    return known;
}
#endif

static uint64_t run(void *dst, const void *src, size_t n, int streaming) {
    uint64_t s1[8] = {0}, s2[8] = {0};
    size_t rows = n / 64;
#if defined(__x86_64__)
    if (has_avx2()) rows_avx2(s1, s2, dst, src, rows, streaming);
    else rows_portable(s1, s2, dst, src, 0, rows);
#else
    (void)streaming;
    rows_portable(s1, s2, dst, src, 0, rows);
#endif
    tail(s1, s2, dst, src, n);
    return finish(s1, s2, n);
}

uint64_t memwall_checksum(const void *bytes, size_t count) {
    return run(NULL, bytes, count, 0);
}

uint64_t memwall_copy_checksum(void *destination, const void *source, size_t count, int streaming) {
    return run(destination, source, count, streaming);
}

uint64_t memwall_checksum_portable(const void *bytes, size_t count) {
    uint64_t s1[8] = {0}, s2[8] = {0};
    rows_portable(s1, s2, NULL, bytes, 0, count / 64);
    tail(s1, s2, NULL, bytes, count);
    return finish(s1, s2, count);
}
