/* The host-wide KV pool through the C ABI, as a C runtime uses it: create, store, look up, load,
 * read in place, a second attachment, stat as JSON, and the misuse a C caller can commit.
 * Prints "ok N - what" / "not ok N - what: why"; exit status = failed checks. */
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { BLOCK = 16384, BLOCKS = 8 };

static void fill(unsigned char *p, int i) {
    for (int j = 0; j < BLOCK; j++) p[j] = (unsigned char)(i * 13 + j * 5 + (j >> 8));
}

static int same(const unsigned char *p, int i) {
    for (int j = 0; j < BLOCK; j++)
        if (p[j] != (unsigned char)(i * 13 + j * 5 + (j >> 8))) return 0;
    return 1;
}

int main(void) {
    char name[64];
    snprintf(name, sizeof name, "ctest-%d", (int)getpid());
    mw_pool *pool = NULL;
    int rc = mw_pool_create(name, 4u << 20, BLOCK, MW_NODE_ANY, 8, &pool);
    check(rc == MW_OK && pool != NULL, "mw_pool_create", mw_last_error());
    if (rc != MW_OK) return finish();

    size_t block_bytes = 0, capacity = 0;
    check(mw_pool_geometry(pool, &block_bytes, &capacity) == MW_OK && block_bytes == BLOCK && capacity > 100,
          "mw_pool_geometry gives the block size and a capacity", mw_last_error());

    unsigned char *data = aligned_alloc(4096, (size_t)BLOCKS * BLOCK);
    void *blocks[BLOCKS];
    uint64_t keys[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = data + (size_t)i * BLOCK;
        keys[i] = 0xC0DE0000u + (uint64_t)i;
        fill(blocks[i], i);
    }
    size_t stored = 0, hits = 0, loaded = 0;
    check(mw_pool_store(pool, keys, BLOCKS, blocks, NULL, &stored) == MW_OK && stored == BLOCKS, "mw_pool_store writes every block", mw_last_error());
    check(mw_pool_store(pool, keys, BLOCKS, blocks, NULL, &stored) == MW_OK && stored == 0, "a block is stored once", mw_last_error());
    check(mw_pool_lookup(pool, keys, BLOCKS, &hits) == MW_OK && hits == BLOCKS, "mw_pool_lookup finds the chain", mw_last_error());

    mw_pool *other = NULL;
    check(mw_pool_attach(name, &other) == MW_OK, "mw_pool_attach by name", mw_last_error());
    memset(data, 0, (size_t)BLOCKS * BLOCK);
    check(mw_pool_load(other, keys, BLOCKS, blocks, &loaded) == MW_OK && loaded == BLOCKS, "mw_pool_load from the second attachment", mw_last_error());
    int intact = 1;
    for (int i = 0; i < BLOCKS; i++) intact &= same(blocks[i], i);
    check(intact, "every block came back intact", NULL);

    mw_pool_view *view = NULL;
    const void *bytes = NULL;
    size_t length = 0;
    check(mw_pool_view_open(other, keys[2], &view) == MW_OK, "mw_pool_view_open", mw_last_error());
    check(mw_pool_view_bytes(view, &bytes, &length) == MW_OK && length == BLOCK && same(bytes, 2),
          "the view is the block in place", mw_last_error());
    check(mw_pool_view_verify(view) == MW_OK, "mw_pool_view_verify", mw_last_error());
    char *json = NULL;
    check(mw_pool_stat_json(name, 0, &json) == MW_OK && json && strstr(json, "\"references\" : 1") && strstr(json, "\"blocks\" : 8"),
          "mw_pool_stat_json counts the view's reference", json ? json : mw_last_error());
    mw_free_string(json);
    check(mw_pool_view_close(view) == MW_OK, "mw_pool_view_close", mw_last_error());
    check_fails(mw_pool_view_close(view), MW_E_MISUSE, "mw_pool_view", "a view is closed once");

    uint64_t absent = 42;
    check_fails(mw_pool_view_open(pool, absent, &view), MW_E_NOT_FOUND, "not in KV pool", "a view of an absent block is NOT_FOUND");
    check_fails(mw_pool_load(pool, &absent, 1, blocks, &loaded), MW_E_NOT_FOUND, "not in KV pool", "a load of an absent block is NOT_FOUND");
    void *bad[1] = { (void *)(uintptr_t)4096 };
    check_fails(mw_pool_store(pool, keys, 1, bad, NULL, NULL), MW_E_OUT_OF_BOUNDS, "mapped", "an unmapped block pointer is refused");
    check_fails(mw_pool_store(pool, keys, 0, blocks, NULL, NULL), MW_E_INVALID_ARGUMENT, "key_count", "no keys is refused");
    mw_pool *again = NULL;
    check_fails(mw_pool_create(name, 4u << 20, BLOCK, MW_NODE_ANY, 8, &again), MW_E_ALREADY_EXISTS, "exists already", "an existing name is refused");
    check_fails(mw_pool_create("../x", 4u << 20, BLOCK, MW_NODE_ANY, 8, &again), MW_E_INVALID_ARGUMENT, "pool name", "a bad name is refused");
    check_fails(mw_pool_attach("ctest-absent-pool", &again), MW_E_NOT_FOUND, "no KV pool", "attaching to no pool is NOT_FOUND");
    check_fails(mw_pool_create_on_device("ctest-dax", "/dev/dax0.0", 0, BLOCK, 8, 0, &again), MW_E_ALREADY_EXISTS, "allow-write",
                "a DAX device is written only with consent");
    check_fails(mw_pool_create_on_device("ctest-dax", "/dev/null", 0, BLOCK, 8, 1, &again), MW_E_INVALID_ARGUMENT, "DAX device",
                "only a DAX device is accepted");
    check_fails(mw_pool_destroy(name, 0), MW_E_BUSY, "attached", "destroying an attached pool is BUSY");

    check(mw_pool_close(other) == MW_OK && mw_pool_close(pool) == MW_OK, "mw_pool_close", mw_last_error());
    check_fails(mw_pool_lookup(pool, keys, 1, &hits), MW_E_MISUSE, "mw_pool", "a closed pool handle is refused");
    check(mw_pool_destroy(name, 0) == MW_OK, "mw_pool_destroy once nobody is attached", mw_last_error());
    check_fails(mw_pool_destroy(name, 0), MW_E_NOT_FOUND, "no KV pool", "a destroyed pool is gone");
    free(data);
    return finish();
}
