#ifndef CMEMWALLSHIM_H
#define CMEMWALLSHIM_H
/* What Swift's Glibc module cannot give us: constants that exist only under
   _GNU_SOURCE, ioctls built from macros, and cpu_set_t macros. Every symbol is
   prefixed memwall_ so nothing here can clash with a real library. */
#include <stdint.h>
#include <stddef.h>
#include <sys/uio.h>
#include "CMemWallCleanup.h"
#include "CMemWallPool.h"

/* open(2) flag O_DIRECT (bypass the page cache). */
int memwall_o_direct(void);
/* errno's symbolic name ("EINVAL"), or NULL when the libc does not know it. */
const char *memwall_errno_name(int err);
/* Size in bytes of a block device (BLKGETSIZE64); -1 with errno on failure. */
int memwall_block_device_size(int fd, uint64_t *size);
/* Logical sector size of a block device (BLKSSZGET); -1 with errno on failure. */
int memwall_block_device_logical_sector(int fd, int *size);
/* f_type of the filesystem holding fd (statfs), so O_DIRECT refusals can be explained. */
int memwall_filesystem_magic(int fd, int64_t *magic);
/* Pins the calling thread to the given CPUs; -1 with errno on failure. */
int memwall_pin_current_thread(const int *cpus, int count);
/// Names the calling thread (at most 15 bytes show); 0 or an errno value.
int memwall_set_thread_name(const char *name);
/* CPU the calling thread runs on now (sched_getcpu). */
int memwall_current_cpu(void);
/* Kernel thread id of the caller. */
int memwall_thread_id(void);
/* Sets errno (Swift cannot assign the thread-local macro directly). */
void memwall_set_errno(int value);
/* Reads errno. */
int memwall_get_errno(void);
/* MADV_HUGEPAGE and MAP_POPULATE-style constants Swift's Glibc hides. */
int memwall_madv_hugepage(void);
int memwall_map_populate(void);
/* A non-blocking, close-on-exec eventfd with counter 0; -1 with errno on failure. */
int memwall_eventfd(void);
/* Adds one to an eventfd counter; -1 with errno on failure. */
int memwall_eventfd_signal(int fd);
/* The KV block checksum (see checksum.c): eight Fletcher lanes over 64-bit words. */
uint64_t memwall_checksum(const void *bytes, size_t count);
/* Copies count bytes and returns their checksum, reading the source once; streaming
   uses non-temporal stores (the destination is not read again soon: a slower tier). */
uint64_t memwall_copy_checksum(void *destination, const void *source, size_t count, int streaming);
/* The same checksum on the portable path only (tests compare it with the AVX2 path). */
uint64_t memwall_checksum_portable(const void *bytes, size_t count);
/* The intra-host path of the remote transports (intrahost.c). */
/* process_vm_readv (write == 0) or process_vm_writev (write != 0) with flags 0:
   bytes moved, or -1 with errno. */
long memwall_process_vm(int pid, int write, const struct iovec *local, unsigned long localCount,
                        const struct iovec *remote, unsigned long remoteCount);
/* pidfd_open(pid, 0): a close-on-exec descriptor that stays bound to that
   process, or -1 with errno (ENOSYS before Linux 5.3). */
int memwall_pidfd_open(int pid);
/* prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY): under YAMA ptrace_scope 1, lets
   processes of the same user attach to (and process_vm_* into) this one; 0 or
   -1 with errno (EINVAL without YAMA). */
int memwall_allow_ptrace_from_same_user(void);
/* A sealed memfd of `size` bytes for memory other processes may map: created
   close-on-exec, sized, then sealed against shrinking, growing and further
   sealing, so a process that maps it can never be made to fault past its end.
   The fd, or -1 with errno. */
int memwall_shared_memory_create(const char *name, uint64_t size);
/* 1 when fd is a memfd sealed against shrinking (what a mapping of it needs),
   0 when it is not, -1 with errno when it cannot be asked. */
int memwall_shared_memory_is_sealed(int fd);
/* pidfd_getfd(pidfd, fd, 0): a close-on-exec duplicate of another process's
   descriptor (the same ptrace access as process_vm_*), or -1 with errno
   (ENOSYS before Linux 5.6). */
int memwall_pidfd_getfd(int pidfd, int fd);
#endif
