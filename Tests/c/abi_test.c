/* The C ABI as a C program uses it: built by the tests against include/memwall.h and the
 * built libmemwall, then run. Each check prints "ok N - what" or "not ok N - what: why"; the
 * exit status is the number of failed checks (0: all passed). Usage: abi_test SCRATCH_DIR */
#include "check.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One of several threads: allocates and closes regions, and fails a call with a message of its
 * own; returns 0 when every call did what it should and its last error is still its own. */
static void *region_churn(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    for (int i = 0; i < 500; i++) {
        mw_region *r = NULL;
        if (mw_region_alloc(MW_NODE_ANY, 4096 * (1 + id), 0, &r) != MW_OK) return (void *)1;
        void *p = NULL;
        size_t n = 0;
        if (mw_region_ptr(r, &p, &n) != MW_OK || n != 4096 * (1 + id)) return (void *)2;
        if (mw_region_close(r) != MW_OK) return (void *)3;
        if (mw_region_close(r) != MW_E_MISUSE) return (void *)4;
    }
    char node_text[32];
    snprintf(node_text, sizeof node_text, "NUMA node %d ", (int)(1000 + id));
    if (mw_region_alloc((int)(1000 + id), 4096, 0, &(mw_region *){NULL}) != MW_E_NOT_FOUND) return (void *)5;
    for (int i = 0; i < 100; i++) {
        mw_region *r = NULL;
        mw_region_alloc(MW_NODE_ANY, 4096, 0, &r);
        mw_region_close(r);
    }
    return strstr(mw_last_error(), node_text) != NULL ? NULL : (void *)6;
}

int main(int argc, char **argv) {
    const char *scratch = argc > 1 ? argv[1] : ".";

    check(mw_abi_version() == MW_ABI_VERSION, "mw_abi_version matches the header", NULL);
    check(strcmp(mw_status_name(MW_E_MISUSE), "misuse") == 0 && strcmp(mw_status_name(12345), "unknown") == 0,
          "mw_status_name gives the Swift code names", mw_status_name(MW_E_MISUSE));

    /* Host reports: the CLI's JSON documents. */
    char *json = NULL;
    int rc = mw_capabilities_json(scratch, &json);
    check(rc == MW_OK && json != NULL && strstr(json, "\"schema\" : \"memwall.capabilities/1\"") != NULL,
          "mw_capabilities_json returns the memwall.capabilities/1 document", rc ? mw_last_error() : json);
    check(mw_free_string(json) == MW_OK, "mw_free_string frees it", mw_last_error());
    check_fails(mw_free_string(json), MW_E_MISUSE, "freed already", "a second mw_free_string is misuse");
    char local[8] = "abc";
    check_fails(mw_free_string(local), MW_E_MISUSE, "not a string libmemwall returned",
                "freeing a string the library did not return is misuse");
    check(mw_free_string(NULL) == MW_OK, "mw_free_string(NULL) is a no-op", mw_last_error());
    check_fails(mw_capabilities_json("/nonexistent/memwall", &json), MW_E_NOT_FOUND, "/nonexistent/memwall",
                "capabilities in a missing directory names it");
    check_fails(mw_capabilities_json(NULL, NULL), MW_E_INVALID_ARGUMENT, "json_out is NULL",
                "a NULL output pointer is an error code");

    json = NULL;
    rc = mw_topology_json("synthetic:pack:2 numa:2 core:2 pu:1", &json);
    check(rc == MW_OK && json != NULL && strstr(json, "memwall.topology/1") != NULL,
          "mw_topology_json of a synthetic machine", rc ? mw_last_error() : json);
    mw_free_string(json);
    check_fails(mw_topology_json("floppy:/dev/fd0", &json), MW_E_INVALID_ARGUMENT, "xml:PATH",
                "an unknown topology source lists the valid ones");

    /* Regions: allocate, use, close once. */
    mw_region *region = NULL;
    rc = mw_region_alloc(MW_NODE_ANY, 10000, 0, &region);
    check(rc == MW_OK && region != NULL, "mw_region_alloc on any node", mw_last_error());
    void *base = NULL;
    size_t bytes = 0;
    rc = mw_region_ptr(region, &base, &bytes);
    check(rc == MW_OK && base != NULL && bytes == 12288 && ((uintptr_t)base & 4095) == 0,
          "the region is page-aligned and rounded up to pages", mw_last_error());
    if (base) memset(base, 0xA5, bytes);   /* the memory is really there */
    mw_region *far = NULL;
    rc = mw_region_alloc(MW_NODE_FAR, 1 << 20, MW_REGION_HUGE_PAGES, &far);
    int node = -9, emulated = -9;
    if (rc == MW_OK) rc = mw_region_node(far, &node, &emulated);
    check(rc == MW_OK && node >= 0 && (emulated == 0 || emulated == 1),
          "mw_region_alloc on the far-memory node reports its node", mw_last_error());
    check(mw_region_close(far) == MW_OK, "closing the far region", mw_last_error());
    check(mw_region_close(region) == MW_OK, "mw_region_close", mw_last_error());
    check_fails(mw_region_close(region), MW_E_MISUSE, "not an open mw_region handle",
                "a double close is MW_E_MISUSE, not a crash");
    check_fails(mw_region_ptr(region, &base, &bytes), MW_E_MISUSE, "closed already",
                "a closed handle is refused");
    check_fails(mw_region_close((mw_region *)(uintptr_t)0x5200000001000001ull), MW_E_MISUSE, "mw_region",
                "a forged handle is refused");
    check_fails(mw_region_close(NULL), MW_E_INVALID_ARGUMENT, "NULL", "a NULL handle is refused");
    check_fails(mw_region_alloc(MW_NODE_ANY, 0, 0, &region), MW_E_INVALID_ARGUMENT, "bytes",
                "a zero-byte region is refused");
    check_fails(mw_region_alloc(MW_NODE_ANY, (size_t)-1, 0, &region), MW_E_INVALID_ARGUMENT, "bytes",
                "a size_t of -1 is refused, not wrapped");
    check_fails(mw_region_alloc(4096, 4096, 0, &region), MW_E_NOT_FOUND, "valid nodes",
                "an unknown node lists the valid ones");
    check_fails(mw_region_alloc(MW_NODE_ANY, 4096, 0x80, &region), MW_E_INVALID_ARGUMENT, "flags",
                "unknown flags are refused");

    /* Caller memory. */
    size_t own_bytes = 1 << 16;
    void *own = aligned_alloc(4096, own_bytes);
    rc = mw_region_adopt(own, own_bytes, &region);
    base = NULL;
    if (rc == MW_OK) rc = mw_region_ptr(region, &base, &bytes);
    check(rc == MW_OK && base == own && bytes == own_bytes, "mw_region_adopt wraps caller memory as it is",
          mw_last_error());
    check(mw_region_close(region) == MW_OK, "closing an adopted region leaves the memory to its owner",
          mw_last_error());
    memset(own, 0, own_bytes);   /* still ours */
    free(own);
    char small[64];
    check_fails(mw_region_adopt(small, (size_t)1 << 40, &region), MW_E_OUT_OF_BOUNDS, "not all mapped",
                "adopting more bytes than are mapped is refused");
    check_fails(mw_region_adopt(NULL, 4096, &region), MW_E_INVALID_ARGUMENT, "pointer is NULL",
                "adopting NULL is refused");

    /* Keys: the Swift side's chained keys. */
    uint32_t tokens[40];
    for (int i = 0; i < 40; i++) tokens[i] = (uint32_t)(1000 + i);
    uint64_t keys[3], again[3], extra = 0;
    size_t count = 0;
    check(mw_extra_key("model-a", 7, &extra) == MW_OK && extra != 0, "mw_extra_key", mw_last_error());
    rc = mw_chain_keys(tokens, 40, 16, extra, NULL, 0, keys, 3, &count);
    check(rc == MW_OK && count == 2, "mw_chain_keys: 40 tokens give 2 full blocks of 16", mw_last_error());
    rc = mw_chain_keys(tokens, 40, 16, extra, NULL, 1, again, 3, &count);
    check(rc == MW_OK && count == 3 && again[0] == keys[0] && again[1] == keys[1],
          "with the partial tail: 3 keys, the same first two", mw_last_error());
    rc = mw_chain_keys(tokens + 16, 24, 16, extra, &keys[0], 0, again, 3, &count);
    check(rc == MW_OK && count == 1 && again[0] == keys[1], "keys chain: the second block after its parent",
          mw_last_error());
    check_fails(mw_chain_keys(tokens, 40, 16, extra, NULL, 1, keys, 1, &count), MW_E_OUT_OF_BOUNDS, "holds 1",
                "too small an output array is refused");
    check(count == 3, "and says how many keys it needs", NULL);
    check_fails(mw_chain_keys(tokens, 40, 0, extra, NULL, 0, keys, 3, &count), MW_E_INVALID_ARGUMENT,
                "block_tokens", "zero tokens per block is refused");

    /* mw_last_error is per thread and survives successful calls. */
    mw_region_close(NULL);
    const char *before = mw_last_error();
    mw_abi_version();
    check(strstr(mw_last_error(), "mw_region_close") != NULL && before == mw_last_error(),
          "mw_last_error names the failed function and is kept across successful calls", mw_last_error());

    /* Handles and messages from several threads at once. */
    pthread_t threads[4];
    for (uintptr_t t = 0; t < 4; t++) pthread_create(&threads[t], NULL, region_churn, (void *)t);
    int thread_failures = 0;
    for (int t = 0; t < 4; t++) {
        void *result = NULL;
        pthread_join(threads[t], &result);
        if (result != NULL) thread_failures++;
    }
    check(thread_failures == 0, "4 threads allocate and close 2,000 regions; each keeps its own last error",
          "a thread saw a wrong status or another thread's message");

    /* Keys for the Swift test to compare with BlockKey.chained (extra key 42, tokens 1000...1039). */
    rc = mw_chain_keys(tokens, 40, 16, 42, NULL, 1, keys, 3, &count);
    if (rc == MW_OK && count == 3)
        printf("chain 42: %016" PRIx64 " %016" PRIx64 " %016" PRIx64 "\n", keys[0], keys[1], keys[2]);

    return finish();
}
