#ifndef CMEMWALLPOOL_H
#define CMEMWALLPOOL_H
/* The shared segment of a KV pool (Sources/KVPool): plain C layouts that several
   processes map at once, and the atomic operations every process uses on them.

   Nothing in the segment is a Swift object. Every word another process may
   change while we read it is read and written only through the functions below
   (GCC/Clang __atomic builtins on plain integers, which is what C11 atomics
   compile to), so the memory order of each access is explicit. The layout is
   fixed: x86-64 / aarch64 little-endian, 64-bit words, offsets pinned with
   _Static_assert. Everything a process reads from the segment is input from a
   peer: the Swift side validates the header once, keeps the layout it derived in
   its own memory, and bounds-checks every index read from a shared word. */
#include <stdint.h>
#include <stddef.h>

#pragma clang assume_nonnull begin

/* "MWPOOL01" as a little-endian word. */
#define MEMWALL_POOL_MAGIC 0x31304C4F4F50574DULL
#define MEMWALL_POOL_VERSION 1u
/* Header states: the creator writes READY last (release); destroy writes DESTROYED. */
#define MEMWALL_POOL_INITIALIZING 0ULL
#define MEMWALL_POOL_READY 0x5944414552ULL
#define MEMWALL_POOL_DESTROYED 0x44594F5254534544ULL
/* "no slot" / "no process" in 32-bit index fields. */
#define MEMWALL_POOL_NONE 0xFFFFFFFFu
/* Byte offset of memwall_pool_header.state (destroy writes it with pwrite). */
#define MEMWALL_POOL_STATE_OFFSET 256
/* Per-process statistics words (memwall_pool_process.counters, memwall_pool_header.retired). */
#define MEMWALL_POOL_COUNTERS 8

/* Slot state word: generation << 16 | owner << 8 | kind. */
#define MEMWALL_POOL_SLOT_FREE 0u
#define MEMWALL_POOL_SLOT_RESERVED 1u      /* owner is writing it; never served */
#define MEMWALL_POOL_SLOT_PUBLISHED 2u     /* readable; immutable until evicted */
#define MEMWALL_POOL_SLOT_EVICTING 3u      /* being taken away (under the pool lock) */

/* The first page of the segment. */
typedef struct memwall_pool_header {
    /* --- immutable after creation; covered by layout_checksum --- */
    uint64_t magic;                 /* 0 */
    uint32_t version;               /* 8 */
    uint32_t header_bytes;          /* 12: sizeof(memwall_pool_header) */
    uint64_t segment_bytes;         /* 16 */
    uint64_t block_bytes;           /* 24 */
    uint32_t slot_count;            /* 32 */
    uint32_t process_slots;         /* 36 */
    uint32_t bucket_count;          /* 40: a power of two */
    int32_t node;                   /* 44: NUMA node the pages are bound to, -1: none */
    uint64_t process_table_offset;  /* 48 */
    uint64_t holds_offset;          /* 56 */
    uint64_t slot_table_offset;     /* 64 */
    uint64_t bucket_offset;         /* 72 */
    uint64_t data_offset;           /* 80 */
    uint64_t pid_namespace;         /* 88: inode of the creator's /proc/self/ns/pid */
    uint64_t created_unix_ns;       /* 96 */
    uint32_t flags;                 /* 104: bit 0 emulated node, bit 1 device-DAX */
    uint32_t creator_pid;           /* 108 */
    char device[64];                /* 112: the DAX device, NUL-terminated, or empty */
    uint64_t layout_checksum;       /* 176: memwall_checksum of bytes 0..<176 */
    uint8_t pad0[72];               /* 184 */
    /* --- mutable; each group on its own cache line --- */
    uint64_t state;                 /* 256: INITIALIZING, READY, DESTROYED */
    uint8_t pad1[56];
    uint8_t lock[64];               /* 320: a robust, process-shared pthread mutex */
    uint64_t index_version;         /* 384: odd while a writer changes buckets */
    uint64_t next_epoch;            /* 392: attach counter */
    uint32_t free_head;             /* 400: free-slot stack (under the lock) */
    uint32_t free_count;            /* 404 */
    uint64_t clock_hand;            /* 408: eviction clock (under the lock) */
    uint64_t reclaimed_processes;   /* 416 */
    uint64_t reclaimed_references;  /* 424 */
    uint64_t reclaimed_reservations;/* 432 */
    uint64_t repairs;               /* 440: lock owners found dead, structures rebuilt */
    uint64_t retired[MEMWALL_POOL_COUNTERS]; /* 448: counters of processes that left */
} memwall_pool_header;

/* One attached process (128 bytes). */
typedef struct memwall_pool_process {
    uint64_t state;                 /* 0 free; epoch << 8 | 1 attached */
    uint64_t pid;
    uint64_t start_time;            /* /proc/PID/stat field 22: ticks after boot */
    uint64_t epoch;
    uint64_t attached_unix_ns;
    uint8_t pad[24];
    uint64_t counters[MEMWALL_POOL_COUNTERS]; /* 64: written by this process only */
} memwall_pool_process;

/* One block slot's metadata (64 bytes). */
typedef struct memwall_pool_slot {
    uint64_t state;                 /* generation << 16 | owner << 8 | kind */
    uint64_t key;
    uint64_t parent_key;
    uint64_t checksum;              /* of the payload; written before publication */
    uint32_t parent_slot;           /* NONE, or the slot of the cached parent */
    uint32_t children;              /* cached blocks whose parent_slot is this one */
    uint32_t next_free;             /* free stack link */
    uint32_t used;                  /* clock reference bit */
    uint64_t stored_unix_ns;
    uint32_t stored_by_pid;
    uint32_t pad;
} memwall_pool_slot;

_Static_assert(sizeof(memwall_pool_header) == 512, "pool header layout");
_Static_assert(offsetof(memwall_pool_header, layout_checksum) == 176, "pool header layout");
_Static_assert(offsetof(memwall_pool_header, state) == MEMWALL_POOL_STATE_OFFSET, "pool header layout");
_Static_assert(offsetof(memwall_pool_header, lock) == 320, "pool header layout");
_Static_assert(offsetof(memwall_pool_header, index_version) == 384, "pool header layout");
_Static_assert(offsetof(memwall_pool_header, retired) == 448, "pool header layout");
_Static_assert(sizeof(memwall_pool_process) == 128, "pool process layout");
_Static_assert(offsetof(memwall_pool_process, counters) == 64, "pool process layout");
_Static_assert(sizeof(memwall_pool_slot) == 64, "pool slot layout");

/* --- atomics on shared words --- */
static inline uint64_t memwall_shared_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t memwall_shared_load_relaxed(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint64_t memwall_shared_load_seq(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void memwall_shared_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void memwall_shared_store_relaxed(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/* Compare-and-swap, sequentially consistent; returns 1 when `*p` was `expected` and is now `desired`. */
static inline _Bool memwall_shared_cas(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline uint64_t memwall_shared_add(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

static inline uint32_t memwall_shared_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint32_t memwall_shared_load32_seq(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void memwall_shared_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void memwall_shared_store32_relaxed(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint32_t memwall_shared_load32_relaxed(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
/* A reference taken (sequentially consistent: it must be ordered before the state check that follows). */
static inline uint32_t memwall_shared_add32_seq(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
/* A reference dropped (release: the reads it protected happen before it). */
static inline uint32_t memwall_shared_sub32(uint32_t *p, uint32_t v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELEASE); }

/* --- addresses of shared fields (so Swift never takes `&pointer.pointee.field`) --- */
static inline uint64_t *memwall_pool_header_state(memwall_pool_header *h) { return &h->state; }
static inline void *memwall_pool_header_lock(memwall_pool_header *h) { return h->lock; }
static inline uint64_t *memwall_pool_header_index_version(memwall_pool_header *h) { return &h->index_version; }
static inline uint64_t *memwall_pool_header_next_epoch(memwall_pool_header *h) { return &h->next_epoch; }
static inline uint32_t *memwall_pool_header_free_head(memwall_pool_header *h) { return &h->free_head; }
static inline uint32_t *memwall_pool_header_free_count(memwall_pool_header *h) { return &h->free_count; }
static inline uint64_t *memwall_pool_header_clock_hand(memwall_pool_header *h) { return &h->clock_hand; }
/* which: 0 processes, 1 references, 2 reservations, 3 repairs */
static inline uint64_t *memwall_pool_header_reclaimed(memwall_pool_header *h, int which) { return &h->reclaimed_processes + which; }
static inline uint64_t *memwall_pool_header_retired(memwall_pool_header *h, int which) { return &h->retired[which]; }
static inline uint64_t *memwall_pool_process_state(memwall_pool_process *p) { return &p->state; }
static inline uint64_t *memwall_pool_process_pid(memwall_pool_process *p) { return &p->pid; }
static inline uint64_t *memwall_pool_process_start_time(memwall_pool_process *p) { return &p->start_time; }
static inline uint64_t *memwall_pool_process_epoch(memwall_pool_process *p) { return &p->epoch; }
static inline uint64_t *memwall_pool_process_attached(memwall_pool_process *p) { return &p->attached_unix_ns; }
static inline uint64_t *memwall_pool_process_counter(memwall_pool_process *p, int which) { return &p->counters[which]; }
static inline uint64_t *memwall_pool_slot_state(memwall_pool_slot *s) { return &s->state; }
static inline uint64_t *memwall_pool_slot_key(memwall_pool_slot *s) { return &s->key; }
static inline uint64_t *memwall_pool_slot_parent_key(memwall_pool_slot *s) { return &s->parent_key; }
static inline uint64_t *memwall_pool_slot_checksum(memwall_pool_slot *s) { return &s->checksum; }
static inline uint32_t *memwall_pool_slot_parent(memwall_pool_slot *s) { return &s->parent_slot; }
static inline uint32_t *memwall_pool_slot_children(memwall_pool_slot *s) { return &s->children; }
static inline uint32_t *memwall_pool_slot_next_free(memwall_pool_slot *s) { return &s->next_free; }
static inline uint32_t *memwall_pool_slot_used(memwall_pool_slot *s) { return &s->used; }
static inline uint64_t *memwall_pool_slot_stored_ns(memwall_pool_slot *s) { return &s->stored_unix_ns; }
static inline uint32_t *memwall_pool_slot_stored_by(memwall_pool_slot *s) { return &s->stored_by_pid; }

/* --- the pool lock: a robust, process-shared pthread mutex in the segment --- */
/* Initializes the mutex at `lock` (64 bytes). 0, or an errno value. */
int memwall_pool_mutex_init(void *lock);
/* Locks, waiting at most `timeout_ns`. 0; EOWNERDEAD (locked: the previous owner
   died holding it, call memwall_pool_mutex_consistent after repairing);
   ETIMEDOUT; ENOTRECOVERABLE; or another errno value (a corrupted mutex). */
int memwall_pool_mutex_lock(void *lock, int64_t timeout_ns);
/* Marks a mutex taken with EOWNERDEAD usable again. 0, or an errno value. */
int memwall_pool_mutex_consistent(void *lock);
/* Unlocks. 0, or an errno value. */
int memwall_pool_mutex_unlock(void *lock);
/* sizeof(pthread_mutex_t), for the layout check. */
size_t memwall_pool_mutex_size(void);

#pragma clang assume_nonnull end
#endif
