#define _GNU_SOURCE
#include "CMemWallShim.h"
#include <errno.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

long memwall_process_vm(int pid, int write, const struct iovec *local, unsigned long localCount,
                        const struct iovec *remote, unsigned long remoteCount) {
    return write ? (long)process_vm_writev(pid, local, localCount, remote, remoteCount, 0)
                 : (long)process_vm_readv(pid, local, localCount, remote, remoteCount, 0);
}

int memwall_pidfd_open(int pid) {
#ifdef SYS_pidfd_open
    /* Descriptors from pidfd_open are close-on-exec already. */
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

int memwall_allow_ptrace_from_same_user(void) {
#if defined(PR_SET_PTRACER) && defined(PR_SET_PTRACER_ANY)
    return prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
#else
    errno = EINVAL;
    return -1;
#endif
}

#include <fcntl.h>
#include <sys/mman.h>

int memwall_shared_memory_create(const char *name, uint64_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int memwall_shared_memory_is_sealed(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) return errno == EINVAL ? 0 : -1;
    return (seals & F_SEAL_SHRINK) ? 1 : 0;
}

int memwall_pidfd_getfd(int pidfd, int fd) {
#ifdef SYS_pidfd_getfd
    return (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
#else
    (void)pidfd; (void)fd;
    errno = ENOSYS;
    return -1;
#endif
}
