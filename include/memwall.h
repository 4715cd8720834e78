/*
 * memwall.h — the C ABI of MemWall (libmemwall.so).
 *
 * MemWall moves data across an inference host's memory hierarchy (DRAM, CXL far memory, NVMe)
 * and keeps a KV cache in those tiers. This header is what a C, C++, Python (ctypes) or Rust
 * runtime links against; it is stable within an ABI version (mw_abi_version()).
 *
 * Conventions, for every function below:
 *   - Every function returns an int status: MW_OK (0) on success, a negative MW_E_* code on
 *     failure (some return a non-negative count or flag; each says so). On failure nothing was
 *     changed unless the function says otherwise, and mw_last_error() tells, on the calling
 *     thread, what failed and what to do about it.
 *   - No Swift error, trap or C++ exception crosses this boundary. Null pointers, bad lengths,
 *     out-of-range numbers and malformed JSON are error codes (MW_E_INVALID_ARGUMENT and friends).
 *   - Handles (mw_region, mw_kv, mw_transfer) are opaque: never dereference them. Each is freed
 *     exactly once by its *_close function. A handle that was already closed, belongs to another
 *     kind, or was never returned by this library is refused with MW_E_MISUSE (handles carry a
 *     generation number, so a stale handle is never mistaken for a newer one in the same slot).
 *   - All functions are thread-safe. A handle may be used from several threads at once; closing
 *     it while another thread uses it makes that thread's later calls fail with MW_E_MISUSE.
 *   - Strings the library returns through a `char **` are NUL-terminated UTF-8 allocated by the
 *     library; free each exactly once with mw_free_string() (a second free is MW_E_MISUSE).
 *     Strings given to the library are NUL-terminated UTF-8 and are copied; the caller keeps them.
 *   - Sizes are size_t; a size that does not fit the library's limits is MW_E_INVALID_ARGUMENT.
 *   - Arrays of keys are read during the call only (copied); block buffers are the caller's
 *     memory, used in place (zero copies) until the operation is done.
 */
#ifndef MEMWALL_H
#define MEMWALL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Versions, status codes, errors
 * ------------------------------------------------------------------------------------------- */

/* The ABI this header describes. A library whose mw_abi_version() differs is incompatible. */
#define MW_ABI_VERSION 1

/* Status codes. Negative values match MemWallError.Code in the Swift API, one for one. */
#define MW_OK 0
#define MW_E_SYSTEM_CALL (-1)          /* a C library or system call failed (errno in the message) */
#define MW_E_INVALID_ARGUMENT (-2)     /* a value is not valid; the message names the valid ones */
#define MW_E_MALFORMED_INPUT (-3)      /* a file or document could not be parsed */
#define MW_E_NOT_FOUND (-4)            /* the named thing (node, block, file) does not exist */
#define MW_E_ALREADY_EXISTS (-5)       /* e.g. a region registered twice */
#define MW_E_BUSY (-6)                 /* held by someone else, or still in use */
#define MW_E_OUT_OF_BOUNDS (-7)        /* an access falls outside a region or file */
#define MW_E_MISALIGNED (-8)           /* a buffer, offset or length breaks an alignment rule */
#define MW_E_UNSUPPORTED (-9)          /* this host or build cannot do the operation */
#define MW_E_HARDWARE_REQUIRED (-10)   /* hardware was required but only emulation exists */
#define MW_E_TIMED_OUT (-11)           /* an operation did not complete in time */
#define MW_E_CANCELLED (-12)           /* the operation was cancelled by its owner */
#define MW_E_DISCONNECTED (-13)        /* the peer went away */
#define MW_E_SHORT_TRANSFER (-14)      /* fewer bytes moved than asked */
#define MW_E_NO_MEMORY_ON_NODE (-15)   /* a NUMA node has no room for the request */
#define MW_E_REMOTE_ACCESS (-16)       /* the remote side refused an access */
#define MW_E_CORRUPTED (-17)           /* data read back does not match its checksum */
#define MW_E_MISUSE (-18)              /* API used against its rules (stale handle, double close) */
#define MW_E_MISSING_DEPENDENCY (-19)  /* a needed tool or package is missing on this host */
#define MW_E_INTERNAL (-99)            /* a failure with no better code (the message says which) */

/* The ABI version of the loaded library (MW_ABI_VERSION it was built with). Never fails. */
int mw_abi_version(void);

/* The library's release, e.g. "0.1.0" (static storage, never NULL). */
const char *mw_version(void);

/* The stable name of a status, e.g. "invalid-argument" for MW_E_INVALID_ARGUMENT, "ok" for 0,
 * "unknown" for anything else (static storage, never NULL). */
const char *mw_status_name(int status);

/* The message of the last failed call on the calling thread: what failed (the function, the
 * argument, the errno) and what the caller can do. "" when no call on this thread failed yet.
 * Only meaningful right after a call returned a negative status: successful calls leave it as
 * it was. The pointer stays valid until the next failing call on the same thread; copy it to
 * keep it. Messages longer than 4095 bytes are cut at a character boundary. */
const char *mw_last_error(void);

/* Frees a string this library returned. NULL is a no-op (returns MW_OK). A pointer this library
 * did not return, or one already freed, is MW_E_MISUSE and is left alone. */
int mw_free_string(char *string);

/* ---------------------------------------------------------------------------------------------
 * Host reports (the JSON documents of `memwall capabilities --json` and `memwall topo --json`)
 * ------------------------------------------------------------------------------------------- */

/* Probes this host as `memwall capabilities --json --dir DIRECTORY` does (schema
 * "memwall.capabilities/1"): libnuma, io_uring (a ring is set up and a buffer registered),
 * O_DIRECT in `directory` (NULL: the current directory; a private scratch file is written,
 * read back and removed), RDMA ports, hwloc. *json_out receives the document (no trailing
 * newline); free it with mw_free_string. Takes tens of milliseconds. */
int mw_capabilities_json(const char *directory, char **json_out);

/* The topology as `memwall topo --json` prints it (schema "memwall.topology/1", see
 * docs/topology-json.md). `source` is NULL or "" for the live machine, or "xml:PATH" (an hwloc
 * XML export), "fsroot:DIR" (a sysfs snapshot), "synthetic:DESCRIPTION" (e.g.
 * "synthetic:pack:2 numa:2 core:4 pu:1"). *json_out as for mw_capabilities_json. */
int mw_topology_json(const char *source, char **json_out);

/* ---------------------------------------------------------------------------------------------
 * Memory regions: allocated on a NUMA node / tier, or the caller's own memory
 * ------------------------------------------------------------------------------------------- */

typedef struct mw_region mw_region;

#define MW_NODE_ANY (-1)   /* wherever the kernel puts the pages (page-aligned host memory) */
#define MW_NODE_FAR (-2)   /* the far-memory node: a CPU-less (CXL) node, else the emulated pool */

#define MW_REGION_HUGE_PAGES 0x1u   /* ask for transparent huge pages (advice only) */

/* Allocates `bytes` (rounded up to whole pages; page-aligned, so usable with O_DIRECT) on NUMA
 * node `node` (>= 0), or MW_NODE_ANY / MW_NODE_FAR. The pages are faulted in on that node
 * before this returns. Unknown flags are MW_E_INVALID_ARGUMENT; an unknown node is
 * MW_E_NOT_FOUND naming the valid nodes; too little free memory is MW_E_NO_MEMORY_ON_NODE.
 * The memory is freed by mw_region_close (later, if a transfer in flight still uses it). */
int mw_region_alloc(int node, size_t bytes, uint32_t flags, mw_region **region_out);

/* Wraps `bytes` of the caller's memory at `pointer` in a region handle, so it can be registered
 * with a KV cache. The caller keeps ownership: the memory must stay valid until the handle is
 * closed (and, when registered, until mw_kv_deregister or mw_kv_close). The range must be
 * mapped (checked with mincore; an unmapped page is MW_E_OUT_OF_BOUNDS). For an NVMe tier the
 * blocks must be 4096-byte aligned. */
int mw_region_adopt(void *pointer, size_t bytes, mw_region **region_out);

/* The region's first byte and length (a multiple of the page size for allocated regions).
 * Either output may be NULL. */
int mw_region_ptr(mw_region *region, void **pointer_out, size_t *bytes_out);

/* The NUMA node the pages were placed on (-1: not bound) and whether that node is the emulated
 * far-memory pool (1) or real (0). Either output may be NULL. */
int mw_region_node(mw_region *region, int *node_out, int *emulated_out);

/* Frees the handle (and allocated memory, once no transfer uses it). A region still registered
 * with an open KV cache is MW_E_BUSY: deregister it or close the cache first. */
int mw_region_close(mw_region *region);

/* ---------------------------------------------------------------------------------------------
 * Block keys: the chained keys the KV cache stores blocks under
 * ------------------------------------------------------------------------------------------- */

/* The extra key (model, adapter, multimodal input) for `length` bytes of identity: the same
 * 64-bit value the Swift API's KVCache uses when given these bytes. `bytes` may be NULL when
 * `length` is 0. */
int mw_extra_key(const void *bytes, size_t length, uint64_t *key_out);

/* Splits `token_count` tokens into blocks of `block_tokens` and writes each block's chained key
 * (BlockKey.chained in the Swift API: a block's key stands for its tokens and every token
 * before it, and for `extra_key`). `parent` is the key of the block before tokens[0], NULL when
 * the tokens start a sequence. With `include_partial` 0 a trailing partial block gets no key
 * (as vLLM's prefix cache); with 1 it does (as KVCache.admit). *key_count_out receives the
 * number of keys; `keys_out` must hold `keys_capacity` >= that many (else MW_E_OUT_OF_BOUNDS,
 * with *key_count_out set to the number needed). `tokens` may be NULL when token_count is 0. */
int mw_chain_keys(const uint32_t *tokens, size_t token_count, size_t block_tokens,
                  uint64_t extra_key, const uint64_t *parent, int include_partial,
                  uint64_t *keys_out, size_t keys_capacity, size_t *key_count_out);

/* ---------------------------------------------------------------------------------------------
 * The KV cache: blocks of block_bytes in tiers DRAM -> far memory -> NVMe
 * ------------------------------------------------------------------------------------------- */

typedef struct mw_kv mw_kv;
typedef struct mw_transfer mw_transfer;

/* Opens a cache. `config_json` is one JSON object; keys (any other key is refused):
 *   "tiers"        string, required: "dram:BLOCKS[,far:BLOCKS][,nvme:BLOCKS]" fastest first,
 *                  DRAM first, at most 4 tiers (e.g. "dram:256,far:1024,nvme:8192"); one tier
 *                  may be "pool:NAME", the host-wide KV pool NAME (mw_pool_create), attached for
 *                  this cache: blocks no faster tier holds are read from it, every stored block
 *                  is written to it too (e.g. "dram:256,pool:agents,nvme:8192")
 *   "block_bytes"  integer, required: bytes per block, a positive multiple of 4096, <= 1 GiB
 *   "nvme_path"    string: file or block device of the nvme tier; created when absent (and
 *                  removed at close); an existing one is used only with "allow_write": true.
 *                  Without it a private scratch file in "scratch_dir" backs the tier.
 *   "scratch_dir"  string, default "/var/tmp": where the scratch file goes
 *   "allow_write"  boolean, default false: consent to overwrite an existing "nvme_path"
 *   "policy"       string, default "lfuda": eviction policy (lru, lfuda, arc, s3fifo, wtinylfu,
 *                  kvaware)
 *   "block_tokens" integer, default 16: tokens per block, reported in events (1 ... 65536)
 *   "far_node"     integer: the NUMA node of the far tier (default: the CPU-less node, else an
 *                  emulated pool in DRAM, labelled so in the stats)
 *   "event_queue"  integer, default 65536: most KV events kept for mw_kv_events_json
 *                  (0 ... 1048576; older ones are dropped and counted)
 * Bad JSON, a wrong type, an unknown key or an out-of-range number is MW_E_INVALID_ARGUMENT
 * (or MW_E_MALFORMED_INPUT) naming the key and the valid values. */
int mw_kv_open(const char *config_json, mw_kv **kv_out);

/* Closes the cache: waits for nothing, fails later calls on `kv` with MW_E_MISUSE, deregisters
 * every region (their handles stay open), removes a file it created. Transfer handles it gave
 * out stay valid until closed. */
int mw_kv_close(mw_kv *kv);

/* Bytes per block (the config's block_bytes). */
int mw_kv_block_bytes(mw_kv *kv, size_t *block_bytes_out);

/* Registers a region with every tier's transport, so blocks inside it can be stored from and
 * loaded into (zero copies between DRAM and NVMe). Registering twice is MW_E_ALREADY_EXISTS. */
int mw_kv_register(mw_kv *kv, mw_region *region);

/* Takes a registration back; a region a transfer in flight uses is MW_E_BUSY. */
int mw_kv_deregister(mw_kv *kv, mw_region *region);

/* How many leading keys are cached with their bytes (*hit_count_out), and the tier of every key
 * (tiers_out: NULL, or `key_count` entries receiving the tier index, or -1 when not cached).
 * Cheap: one lock, nothing moved. Counts as a lookup in the stats. */
int mw_kv_lookup(mw_kv *kv, const uint64_t *keys, size_t key_count,
                 size_t *hit_count_out, int32_t *tiers_out);

/* Write policies of mw_kv_store. */
#define MW_WRITE_BACK 0      /* fastest tier with room; slower tiers only on eviction */
#define MW_WRITE_THROUGH 1   /* also copied to the last (slowest) tier before the store is done */

/* Load policies of mw_kv_load: what to do with blocks another operation is still moving. */
#define MW_LOAD_WAIT 0          /* wait for them */
#define MW_LOAD_BEST_EFFORT 1   /* fail them (per block) instead of waiting */
#define MW_LOAD_TIMEOUT 2       /* wait at most timeout_ns, then fail them */

/* Stores `key_count` blocks: block i's bytes are block_bytes at blocks[i], which must lie inside a
 * region registered with this cache (else MW_E_INVALID_ARGUMENT naming the block). keys[i]'s
 * parent is keys[i-1]; keys[0]'s parent is *parent (NULL: keys[0] starts a sequence). A key
 * already cached is skipped. Returns when the bytes are in the cache; a per-block failure makes
 * the call return that block's code with the message naming it (mw_kv_store_async gives every
 * failure). */
int mw_kv_store(mw_kv *kv, const uint64_t *keys, size_t key_count, void *const *blocks,
                const uint64_t *parent, int write_policy);

/* Loads `key_count` blocks into blocks[i] (registered, as for store). A key not cached fails its
 * block with MW_E_NOT_FOUND, a checksum mismatch with MW_E_CORRUPTED naming the block; the
 * first failure is returned (other blocks are still loaded). `timeout_ns` is used with
 * MW_LOAD_TIMEOUT only (2^62 or more: no limit). */
int mw_kv_load(mw_kv *kv, const uint64_t *keys, size_t key_count, void *const *blocks,
               int load_policy, uint64_t timeout_ns);

/* Asynchronous forms: start the operation and return at once with a transfer handle. The blocks
 * must stay valid and untouched until the transfer is done. */
int mw_kv_store_async(mw_kv *kv, const uint64_t *keys, size_t key_count, void *const *blocks,
                      const uint64_t *parent, int write_policy, mw_transfer **transfer_out);
int mw_kv_load_async(mw_kv *kv, const uint64_t *keys, size_t key_count, void *const *blocks,
                     int load_policy, uint64_t timeout_ns, mw_transfer **transfer_out);

/* Starts moving the cached prefix of `keys` up to DRAM (a hint; no caller buffer involved). */
int mw_kv_prefetch(mw_kv *kv, const uint64_t *keys, size_t key_count, mw_transfer **transfer_out);

/* 1 when the transfer is done, 0 while it is in flight (one atomic load, no allocation). */
int mw_transfer_poll(mw_transfer *transfer);

/* Waits until the transfer is done: MW_OK, or MW_E_TIMED_OUT after `timeout_ns` (a negative
 * timeout, or 2^62 or more, waits without limit; 0 only looks). The transfer's own outcome
 * is read with mw_transfer_result. */
int mw_transfer_wait(mw_transfer *transfer, int64_t timeout_ns);

/* What a finished transfer did. */
typedef struct mw_transfer_summary {
    size_t blocks;   /* keys in the operation */
    size_t failed;   /* blocks that failed (0: all succeeded) */
    uint64_t bytes;  /* bytes moved for the caller */
} mw_transfer_summary;

/* The result of a finished transfer; one still in flight is MW_E_BUSY (wait first). */
int mw_transfer_result(mw_transfer *transfer, mw_transfer_summary *result_out);

/* One failed block of a finished transfer. */
typedef struct mw_block_failure {
    size_t index;          /* position in the operation's keys */
    uint64_t key;          /* the block's key */
    int status;            /* its MW_E_* code */
    char message[496];     /* what happened to it, NUL-terminated (cut at a character boundary) */
} mw_block_failure;

/* Failure number `i` (0 <= i < result.failed) of a finished transfer. */
int mw_transfer_failure(mw_transfer *transfer, size_t i, mw_block_failure *failure_out);

/* Frees the handle. One still in flight is MW_E_BUSY: its buffers are still in use, so wait
 * for it first (closing it then would hide when they become free). */
int mw_transfer_close(mw_transfer *transfer);

/* An eventfd that becomes readable when transfers of this cache finish (its counter grows by one
 * per finished transfer; read 8 bytes to reset it). For poll/epoll/asyncio's add_reader. The
 * descriptor belongs to the cache: do not close it; it stays valid until mw_kv_close. */
int mw_kv_event_fd(mw_kv *kv, int *fd_out);

/* The cache's statistics as JSON (schema "memwall.kv-stats/1"): lookups, hits per tier, misses,
 * stores, promotions, demotions, drops, occupancy and capacity per tier, bytes moved per path,
 * events dropped. Free with mw_free_string. */
int mw_kv_stats_json(mw_kv *kv, char **json_out);

/* Takes the KV events queued since the last call, as a JSON array in the shape vLLM publishes
 * KV events: {"type":"BlockStored","block_hashes":[KEY],"parent_block_hash":KEY or null,
 * "token_ids":null,"block_size":TOKENS,"lora_id":null,"medium":"dram"} and
 * {"type":"BlockRemoved","block_hashes":[KEY],"medium":"nvme"}; "medium" is the tier's name.
 * A block moved between tiers gives a BlockStored in the new tier followed by a BlockRemoved
 * from the old one (so a consumer never sees it absent). Keys are unsigned 64-bit integers.
 * When more than "event_queue" events wait, the oldest are dropped (counted in the stats as
 * eventsDropped). Free with mw_free_string. */
int mw_kv_events_json(mw_kv *kv, char **json_out);

/* ---------------------------------------------------------------------------------------------
 * The host-wide KV pool: one copy of each block for every process of the host (docs/kv-pool.md)
 * ------------------------------------------------------------------------------------------- */

typedef struct mw_pool mw_pool;
typedef struct mw_pool_view mw_pool_view;

/* Creates pool `name` (a shared segment /dev/shm/memwall-pool-NAME, or in $MEMWALL_POOL_DIR) of
 * `bytes` in all, holding as many blocks of `block_bytes` (a multiple of 4096, <= 1 GiB) as fit,
 * and attaches this process. `node` >= 0 binds the pages to that NUMA node (MW_NODE_FAR: the
 * CPU-less node, else the emulated far node; MW_NODE_ANY: not bound). `processes` is how many
 * processes may be attached at once (1 ... 254; 0: 32). An existing name is MW_E_ALREADY_EXISTS
 * (nothing is overwritten); a name that is not 1-64 letters, digits, '.', '_', '-' is
 * MW_E_INVALID_ARGUMENT. */
int mw_pool_create(const char *name, size_t bytes, size_t block_bytes, int node, uint32_t processes,
                   mw_pool **pool_out);

/* Creates pool `name` on a device-DAX device (`device`: "/dev/daxN.M", e.g. a CXL memory region),
 * mapped directly, using at most `bytes` of it (0: all of it), and attaches this process; a name
 * file in the pool directory points to the device, so other processes attach by name. The
 * device's contents are destroyed: `allow_write` must be 1 (else MW_E_ALREADY_EXISTS). A path
 * that is not a DAX device is MW_E_INVALID_ARGUMENT. */
int mw_pool_create_on_device(const char *name, const char *device, size_t bytes, size_t block_bytes,
                             uint32_t processes, int allow_write, mw_pool **pool_out);

/* Attaches this process to pool `name`; first reclaims what processes that died held. A segment
 * that fails its checks is MW_E_CORRUPTED; no such pool is MW_E_NOT_FOUND. */
int mw_pool_attach(const char *name, mw_pool **pool_out);

/* Detaches and frees the handle. Views still open keep the process attached until closed. */
int mw_pool_close(mw_pool *pool);

/* Removes pool `name`: refused with MW_E_BUSY while processes are attached unless `force` is 1
 * (they then keep the unnamed segment until they detach). A file that is not a memwall pool is
 * MW_E_INVALID_ARGUMENT and left alone. */
int mw_pool_destroy(const char *name, int force);

/* Bytes per block and blocks the pool holds. Either output may be NULL. */
int mw_pool_geometry(mw_pool *pool, size_t *block_bytes_out, size_t *capacity_blocks_out);

/* How many leading keys are in the pool (*hit_count_out). Takes no lock and no reference: a
 * block found may be evicted before it is loaded (its load then fails with MW_E_NOT_FOUND). */
int mw_pool_lookup(mw_pool *pool, const uint64_t *keys, size_t key_count, size_t *hit_count_out);

/* Stores `key_count` blocks, block i from the block_bytes at blocks[i] (the caller's memory; each
 * range is checked to be mapped). keys[i]'s parent is keys[i-1], keys[0]'s is *parent (NULL: it
 * starts a chain). One copy in, checksummed on the way, then published: readers never see a
 * half-written block. Keys already in the pool (or being written by another live process) are
 * skipped. *stored_out (may be NULL) receives the blocks written. A block no slot could take
 * (everything referenced, being written, or the parent of a cached block) makes the call return
 * MW_E_OUT_OF_BOUNDS naming it. */
int mw_pool_store(mw_pool *pool, const uint64_t *keys, size_t key_count, void *const *blocks,
                  const uint64_t *parent, size_t *stored_out);

/* Copies `key_count` blocks into blocks[i] (one pass that copies and checks each block's
 * checksum). Every block is tried; *loaded_out (may be NULL) receives how many arrived intact;
 * the first failure is returned: MW_E_NOT_FOUND (not in the pool), MW_E_CORRUPTED (checksum
 * mismatch), MW_E_BUSY (its slot kept changing). */
int mw_pool_load(mw_pool *pool, const uint64_t *keys, size_t key_count, void *const *blocks,
                 size_t *loaded_out);

/* The block `key` in place, without a copy: *view_out is a handle whose bytes (mw_pool_view_bytes)
 * stay valid, and the block stays in the pool, until mw_pool_view_close. MW_E_NOT_FOUND when the
 * block is not in the pool. */
int mw_pool_view_open(mw_pool *pool, uint64_t key, mw_pool_view **view_out);

/* The view's bytes (read-only: a published block never changes) and their length. Either output
 * may be NULL. */
int mw_pool_view_bytes(mw_pool_view *view, const void **pointer_out, size_t *bytes_out);

/* Recomputes the checksum of the view's bytes in place: MW_OK when they match the checksum the
 * block was published with, MW_E_CORRUPTED otherwise. */
int mw_pool_view_verify(mw_pool_view *view);

/* Releases the view (its bytes must not be used afterwards). */
int mw_pool_view_close(mw_pool_view *view);

/* The pool's state as `memwall pool stat NAME --json` prints it (schema "memwall.pool/1"),
 * read without attaching; `pages` 1 also asks the kernel where every page is. Free with
 * mw_free_string. */
int mw_pool_stat_json(const char *name, int pages, char **json_out);

#ifdef __cplusplus
}
#endif

#endif /* MEMWALL_H */
