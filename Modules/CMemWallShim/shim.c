#define _GNU_SOURCE
#include "CMemWallShim.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <pthread.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

int memwall_o_direct(void) { return O_DIRECT; }

const char *memwall_errno_name(int err) { return strerrorname_np(err); }

int memwall_block_device_size(int fd, uint64_t *size) {
    return ioctl(fd, BLKGETSIZE64, size);
}

int memwall_block_device_logical_sector(int fd, int *size) {
    return ioctl(fd, BLKSSZGET, size);
}

int memwall_filesystem_magic(int fd, int64_t *magic) {
    struct statfs st;
    if (fstatfs(fd, &st) != 0) return -1;
    *magic = (int64_t)st.f_type;
    return 0;
}

int memwall_pin_current_thread(const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) { errno = EINVAL; return -1; }
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(0, sizeof(set), &set);
}

int memwall_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }

int memwall_current_cpu(void) { return sched_getcpu(); }
int memwall_thread_id(void) { return (int)syscall(SYS_gettid); }
void memwall_set_errno(int value) { errno = value; }
int memwall_get_errno(void) { return errno; }
int memwall_madv_hugepage(void) { return MADV_HUGEPAGE; }
int memwall_map_populate(void) { return MAP_POPULATE; }

#include <sys/eventfd.h>

int memwall_eventfd(void) {
    return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

int memwall_eventfd_signal(int fd) {
    return eventfd_write(fd, 1);
}

int memwall_pool_mutex_init(void *lock) {
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (rc != 0) return rc;
    if ((rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED)) == 0 &&
        (rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST)) == 0) {
        rc = pthread_mutex_init((pthread_mutex_t *)lock, &a);
    }
    pthread_mutexattr_destroy(&a);
    return rc;
}

int memwall_pool_mutex_lock(void *lock, int64_t timeout_ns) {
    /* Robust mutexes time out against CLOCK_REALTIME only. */
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    int64_t ns = (int64_t)t.tv_nsec + (timeout_ns < 0 ? 0 : timeout_ns);
    t.tv_sec += ns / 1000000000;
    t.tv_nsec = ns % 1000000000;
    return pthread_mutex_timedlock((pthread_mutex_t *)lock, &t);
}

int memwall_pool_mutex_consistent(void *lock) { return pthread_mutex_consistent((pthread_mutex_t *)lock); }

int memwall_pool_mutex_unlock(void *lock) { return pthread_mutex_unlock((pthread_mutex_t *)lock); }

size_t memwall_pool_mutex_size(void) { return sizeof(pthread_mutex_t); }
_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((memwall_pool_header *)0)->lock), "the pool lock fits its header field");
