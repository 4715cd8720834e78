/* The KV cache through the C ABI, as a C runtime uses it: open from JSON, register memory,
 * store, look up, load back (also from the NVMe tier after demotion), asynchronous transfers
 * with the eventfd, stats and events, and the misuse a C caller can commit. Prints
 * "ok N - what" / "not ok N - what: why"; exit status = failed checks. Usage: kv_test SCRATCH_DIR */
#include "check.h"

#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { BLOCK = 65536, BLOCKS = 24 };

/* Block i of the test's data: bytes that depend on i, so a block read back into the wrong
 * place or not at all is seen. */
static void fill(unsigned char *p, int i) {
    for (int j = 0; j < BLOCK; j++) p[j] = (unsigned char)(i * 31 + j * 7 + (j >> 9));
}

static int same(const unsigned char *p, int i) {
    for (int j = 0; j < BLOCK; j++)
        if (p[j] != (unsigned char)(i * 31 + j * 7 + (j >> 9))) return 0;
    return 1;
}

/* One of several threads using one cache at once: each stores and loads its own chain of 4
 * blocks, 20 times, in its own part of the region; 0 when every block it could load came back intact. */
struct worker { mw_kv *kv; unsigned char *base; int id; };

static void *worker_run(void *arg) {
    struct worker *w = arg;
    uint32_t tokens[64];
    for (int i = 0; i < 64; i++) tokens[i] = (uint32_t)(w->id * 1000 + i);
    void *blocks[4];
    for (int i = 0; i < 4; i++) blocks[i] = w->base + (size_t)i * BLOCK;
    int verified = 0;
    for (int round = 0; round < 20; round++) {
        uint64_t keys[4];
        size_t n = 0;
        if (mw_chain_keys(tokens, 64, 16, (uint64_t)round, NULL, 0, keys, 4, &n) != MW_OK) return (void *)1;
        for (int i = 0; i < 4; i++) fill(blocks[i], w->id * 100 + round * 4 + i);
        if (mw_kv_store(w->kv, keys, 4, blocks, NULL, MW_WRITE_BACK) != MW_OK) return (void *)2;
        memset(w->base, 0, 4 * (size_t)BLOCK);
        /* lookup does not lock: the other threads' stores may evict this chain before it is
           loaded (72 slots, 320 blocks stored in all). That is a per-block MW_E_NOT_FOUND, never
           wrong bytes; only rounds whose chain is still there are compared. */
        size_t hits = 0;
        if (mw_kv_lookup(w->kv, keys, 4, &hits, NULL) != MW_OK) return (void *)3;
        if (hits != 4) continue;
        int rc = mw_kv_load(w->kv, keys, 4, blocks, MW_LOAD_WAIT, 0);
        if (rc == MW_E_NOT_FOUND) continue;
        if (rc != MW_OK) return (void *)4;
        for (int i = 0; i < 4; i++)
            if (!same(blocks[i], w->id * 100 + round * 4 + i)) return (void *)5;
        verified++;
    }
    return verified > 0 ? NULL : (void *)6;
}

int main(int argc, char **argv) {
    const char *scratch = argc > 1 ? argv[1] : "/var/tmp";
    char config[1024];
    snprintf(config, sizeof config,
             "{\"tiers\": \"dram:4,far:4,nvme:64\", \"block_bytes\": %d, \"scratch_dir\": \"%s\", \"policy\": \"lru\"}",
             BLOCK, scratch);
    mw_kv *kv = NULL;
    int rc = mw_kv_open(config, &kv);
    check(rc == MW_OK && kv != NULL, "mw_kv_open with DRAM, far memory and NVMe tiers", mw_last_error());
    if (rc != MW_OK) {
        return finish();
    }
    size_t block_bytes = 0;
    check(mw_kv_block_bytes(kv, &block_bytes) == MW_OK && block_bytes == BLOCK, "mw_kv_block_bytes", mw_last_error());

    mw_region *region = NULL;
    rc = mw_region_alloc(MW_NODE_ANY, (size_t)BLOCK * BLOCKS, 0, &region);
    unsigned char *base = NULL;
    if (rc == MW_OK) rc = mw_region_ptr(region, (void **)&base, NULL);
    check(rc == MW_OK, "a region for 24 blocks", mw_last_error());
    check(mw_kv_register(kv, region) == MW_OK, "mw_kv_register", mw_last_error());
    check_fails(mw_kv_register(kv, region), MW_E_ALREADY_EXISTS, "already", "registering twice is refused");
    check_fails(mw_region_close(region), MW_E_BUSY, "mw_kv_deregister",
                "closing a registered region is MW_E_BUSY naming the way out");

    /* Keys of 24 blocks of 16 tokens. */
    uint32_t tokens[BLOCKS * 16];
    for (int i = 0; i < BLOCKS * 16; i++) tokens[i] = (uint32_t)(i * 13 + 5);
    uint64_t keys[BLOCKS], extra = 0;
    size_t n = 0;
    mw_extra_key("c-test", 6, &extra);
    rc = mw_chain_keys(tokens, BLOCKS * 16, 16, extra, NULL, 0, keys, BLOCKS, &n);
    check(rc == MW_OK && n == BLOCKS, "24 chained keys", mw_last_error());

    void *blocks[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = base + (size_t)i * BLOCK;
        fill(blocks[i], i);
    }
    size_t hits = 99;
    check(mw_kv_lookup(kv, keys, BLOCKS, &hits, NULL) == MW_OK && hits == 0, "nothing is cached at first",
          mw_last_error());
    rc = mw_kv_store(kv, keys, BLOCKS, blocks, NULL, MW_WRITE_BACK);
    check(rc == MW_OK, "mw_kv_store of 24 blocks into 4 DRAM + 4 far + 64 NVMe slots", mw_last_error());
    int32_t tiers[BLOCKS];
    rc = mw_kv_lookup(kv, keys, BLOCKS, &hits, tiers);
    check(rc == MW_OK && hits == BLOCKS, "all 24 are cached", mw_last_error());
    int on_nvme = 0;
    for (int i = 0; i < BLOCKS; i++) on_nvme += tiers[i] == 2;
    char why[64];
    snprintf(why, sizeof why, "%d blocks on tier 2", on_nvme);
    check(on_nvme >= BLOCKS - 8, "at least 16 of them were demoted to the NVMe tier", why);

    memset(base, 0, (size_t)BLOCK * BLOCKS);
    rc = mw_kv_load(kv, keys, BLOCKS, blocks, MW_LOAD_WAIT, 0);
    int intact = 1;
    for (int i = 0; i < BLOCKS; i++) intact &= same(blocks[i], i);
    check(rc == MW_OK && intact, "mw_kv_load brings every block back byte for byte (NVMe ones verified)",
          rc ? mw_last_error() : "bytes differ");

    /* Asynchronous load, completion seen through the eventfd. */
    int fd = -1;
    check(mw_kv_event_fd(kv, &fd) == MW_OK && fd >= 0, "mw_kv_event_fd", mw_last_error());
    memset(base, 0, (size_t)BLOCK * 4);
    mw_transfer *t = NULL;
    rc = mw_kv_load_async(kv, keys, 4, blocks, MW_LOAD_WAIT, 0, &t);
    check(rc == MW_OK && t != NULL, "mw_kv_load_async", mw_last_error());
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int ready = poll(&pfd, 1, 30000);
    uint64_t counter = 0;
    if (ready == 1) (void)!read(fd, &counter, sizeof counter);
    check(ready == 1 && counter >= 1, "the eventfd becomes readable when the transfer finishes", "poll timed out");
    check(mw_transfer_wait(t, INT64_MAX) == MW_OK && mw_transfer_poll(t) == 1,
          "mw_transfer_wait with the largest timeout waits (no wrap-around) / poll", mw_last_error());
    mw_transfer_summary summary;
    rc = mw_transfer_result(t, &summary);
    check(rc == MW_OK && summary.blocks == 4 && summary.failed == 0 && summary.bytes == 4ull * BLOCK,
          "mw_transfer_result: 4 blocks, 256 KiB, no failure", mw_last_error());
    check(same(blocks[0], 0) && same(blocks[3], 3), "the async load wrote the bytes", "bytes differ");
    check(mw_transfer_close(t) == MW_OK, "mw_transfer_close", mw_last_error());
    check_fails(mw_transfer_close(t), MW_E_MISUSE, "mw_transfer", "closing a transfer twice is MW_E_MISUSE");

    /* Per-block failures: a key never stored. */
    uint64_t unknown[2] = {keys[0], 0x1234567887654321ull};
    rc = mw_kv_load_async(kv, unknown, 2, blocks, MW_LOAD_WAIT, 0, &t);
    mw_block_failure failure;
    memset(&failure, 0, sizeof failure);
    if (rc == MW_OK) rc = mw_transfer_wait(t, -1);
    if (rc == MW_OK) rc = mw_transfer_result(t, &summary);
    if (rc == MW_OK) rc = mw_transfer_failure(t, 0, &failure);
    check(rc == MW_OK && summary.failed == 1 && failure.index == 1 && failure.key == unknown[1] &&
              failure.status == MW_E_NOT_FOUND,
          "a key not cached is a per-block MW_E_NOT_FOUND naming its index and key", mw_last_error());
    check_fails(mw_transfer_failure(t, 5, &failure), MW_E_INVALID_ARGUMENT, "failure index",
                "a failure index past the count is refused");
    mw_transfer_close(t);
    check_fails(mw_kv_load(kv, unknown, 2, blocks, MW_LOAD_WAIT, 0), MW_E_NOT_FOUND, "#1",
                "the synchronous load returns the failed block's code and names it");

    /* Bad buffers and arguments, refused before anything moves. */
    static unsigned char outside[BLOCK] __attribute__((aligned(4096)));
    void *stray[1] = {outside};
    check_fails(mw_kv_store(kv, keys, 1, stray, NULL, MW_WRITE_BACK), MW_E_INVALID_ARGUMENT,
                "not inside a region registered", "a block outside every registered region is refused");
    void *tail[1] = {base + (size_t)BLOCK * BLOCKS - 4096};
    check_fails(mw_kv_load(kv, keys, 1, tail, MW_LOAD_WAIT, 0), MW_E_OUT_OF_BOUNDS, "past the end",
                "a block running past its region's end is refused");
    void *crooked[1] = {base + 100};
    check_fails(mw_kv_load(kv, keys, 1, crooked, MW_LOAD_WAIT, 0), MW_E_MISALIGNED, "4096",
                "a block not 4096-aligned is refused");
    check_fails(mw_kv_store(kv, keys, 1, NULL, NULL, MW_WRITE_BACK), MW_E_INVALID_ARGUMENT, "blocks is NULL",
                "NULL blocks are refused");
    check_fails(mw_kv_store(kv, keys, (size_t)-1, blocks, NULL, MW_WRITE_BACK), MW_E_INVALID_ARGUMENT, "key_count",
                "a size_t of -1 keys is refused");
    check_fails(mw_kv_store(kv, keys, 1, blocks, NULL, 7), MW_E_INVALID_ARGUMENT, "write_policy",
                "an unknown write policy is refused");
    check_fails(mw_kv_load(kv, keys, 1, blocks, 9, 0), MW_E_INVALID_ARGUMENT, "load_policy",
                "an unknown load policy is refused");

    /* Stats and events. */
    char *json = NULL;
    rc = mw_kv_stats_json(kv, &json);
    check(rc == MW_OK && strstr(json, "memwall.kv-stats/1") && strstr(json, "\"demotions\""),
          "mw_kv_stats_json", rc ? mw_last_error() : json);
    mw_free_string(json);
    rc = mw_kv_events_json(kv, &json);
    check(rc == MW_OK && strstr(json, "\"BlockStored\"") && strstr(json, "\"medium\": \"nvme\""),
          "mw_kv_events_json: BlockStored events, some in the nvme medium", rc ? mw_last_error() : json);
    mw_free_string(json);

    /* Configuration errors name the key. */
    mw_kv *other = NULL;
    check_fails(mw_kv_open("{\"tiers\": \"dram:4\", \"block_bytes\": 4096, \"colour\": 1}", &other),
                MW_E_INVALID_ARGUMENT, "colour", "an unknown config key is refused");
    check_fails(mw_kv_open("{\"tiers\": \"dram:4\", \"block_bytes\": \"4096\"}", &other), MW_E_INVALID_ARGUMENT,
                "block_bytes", "a string where a number belongs is refused");
    check_fails(mw_kv_open("{\"tiers\": \"dram:4\", \"block_bytes\": 5000}", &other), MW_E_INVALID_ARGUMENT,
                "multiple of 4096", "block_bytes that is not a multiple of 4096 is refused");
    check_fails(mw_kv_open("{\"tiers\": \"dram:4\", \"block_bytes\": 1e300}", &other), MW_E_INVALID_ARGUMENT,
                "block_bytes", "an out-of-range number is refused");
    check_fails(mw_kv_open("[1, 2", &other), MW_E_MALFORMED_INPUT, "config_json", "malformed JSON is refused");
    check_fails(mw_kv_open("{\"tiers\": \"ssd:4\", \"block_bytes\": 4096}", &other), MW_E_INVALID_ARGUMENT, "tier",
                "an unknown tier kind is refused");
    check_fails(mw_kv_open(NULL, &other), MW_E_INVALID_ARGUMENT, "config_json is NULL", "NULL config is refused");

    /* Four threads on one cache at once. */
    pthread_t threads[4];
    struct worker workers[4];
    for (int t = 0; t < 4; t++) {
        workers[t] = (struct worker){kv, base + (size_t)t * 4 * BLOCK, t + 1};
        pthread_create(&threads[t], NULL, worker_run, &workers[t]);
    }
    int bad = 0;
    for (int t = 0; t < 4; t++) {
        void *result = NULL;
        pthread_join(threads[t], &result);
        if (result != NULL) bad++;
    }
    check(bad == 0, "4 threads store and load their own chains through one cache at once, every byte intact",
          mw_last_error());

    /* Closing: regions go back, the handle is dead. */
    check(mw_kv_close(kv) == MW_OK, "mw_kv_close", mw_last_error());
    check_fails(mw_kv_close(kv), MW_E_MISUSE, "not an open mw_kv handle", "a double mw_kv_close is MW_E_MISUSE");
    check_fails(mw_kv_lookup(kv, keys, 1, &hits, NULL), MW_E_MISUSE, "mw_kv", "a closed cache is refused");
    check_fails(mw_kv_lookup((mw_kv *)region, keys, 1, &hits, NULL), MW_E_MISUSE, "mw_kv",
                "a region handle passed as a cache is refused");
    check(mw_region_close(region) == MW_OK, "after the cache closed, the region closes", mw_last_error());
    close(-1);

    return finish();
}
