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
