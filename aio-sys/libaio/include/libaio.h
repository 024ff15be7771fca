/*
 * libaio.h — the libaio 0.3.x C API, for the aio-libaio library
 * (a Rust implementation of libaio.so.1, part of the aio project).
 *
 * Types, field names and inline helpers are those that programs written
 * for libaio use, so their sources compile against this header unchanged;
 * the layouts are checked against the aio-abi crate by the crate's tests.
 *
 * Conventions of every function declared here: the result is >= 0 on
 * success and a negative errno value on failure; errno is not modified.
 *
 * Only 64-bit targets are supported (the library is built for x86-64,
 * arm64 and riscv64); big-endian 64-bit layouts are given for completeness.
 */
#ifndef __LIBAIO_H
#define __LIBAIO_H

#include <sys/types.h>
#include <string.h>
#include <signal.h>

#ifdef __cplusplus
extern "C" {
#endif

struct timespec;
struct sockaddr;
struct iovec;

#if !defined(__LP64__) && !defined(_LP64)
#error "this libaio.h supports 64-bit targets only"
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define __AIO_BIG_ENDIAN 1
#else
#define __AIO_BIG_ENDIAN 0
#endif

/* A context: the address of its completion ring. */
typedef struct io_context *io_context_t;

/* Request opcodes (iocb.aio_lio_opcode); values are the kernel's IOCB_CMD_*. */
typedef enum io_iocb_cmd {
	IO_CMD_PREAD   = 0,
	IO_CMD_PWRITE  = 1,
	IO_CMD_FSYNC   = 2,
	IO_CMD_FDSYNC  = 3,
	IO_CMD_POLL    = 5,
	IO_CMD_NOOP    = 6,
	IO_CMD_PREADV  = 7,
	IO_CMD_PWRITEV = 8,
} io_iocb_cmd_t;

/* IO_CMD_POLL: the poll(2) event mask; the result is the ready mask. */
struct io_iocb_poll {
#if __AIO_BIG_ENDIAN
	int __pad1;
	int events;
#else
	int events;
	int __pad1;
#endif
};

/* Socket requests (no longer implemented by Linux; kept for the union). */
struct io_iocb_sockaddr {
	struct sockaddr *addr;
	unsigned long len;
};

/* Reads, writes, fsync; u.c.flags and u.c.resfd are IOCB_FLAG_* and the
 * eventfd to signal (see io_set_eventfd). __pad3 must stay 0. */
struct io_iocb_common {
	void *buf;
	unsigned long nbytes;
	long long offset;
	long long __pad3;
	unsigned flags;
	unsigned resfd;
};

/* Vectored reads and writes: an iovec array and its length. */
struct io_iocb_vector {
	const struct iovec *vec;
	unsigned long nr;
	long long offset;
};

/* One request: 64 bytes, the kernel's struct iocb. */
struct iocb {
	void *data;              /* returned in io_event.data */
#if __AIO_BIG_ENDIAN
	unsigned aio_rw_flags;   /* RWF_* flags */
	unsigned key;            /* written 0 by the kernel */
#else
	unsigned key;            /* written 0 by the kernel */
	unsigned aio_rw_flags;   /* RWF_* flags */
#endif
	short aio_lio_opcode;    /* IO_CMD_* */
	short aio_reqprio;
	int aio_fildes;
	union {
		struct io_iocb_common c;
		struct io_iocb_vector v;
		struct io_iocb_poll poll;
		struct io_iocb_sockaddr saddr;
	} u;
};

/* One completion: 32 bytes, the kernel's struct io_event. res is the byte
 * count, the poll mask or a negative errno (cast it to long). */
struct io_event {
	void *data;
	struct iocb *obj;
	unsigned long res;
	unsigned long res2;
};

/* The sigset argument of the io_pgetevents system call. */
struct io_sigset {
	unsigned long ss;
	unsigned long ss_len;
};

/* The same, as 32-bit processes pass it to a 64-bit kernel. */
struct io_sigset_compat {
	unsigned long ss;
	unsigned long ss_len;
};

/* Completion callback, stored in iocb.data by io_set_callback and called by
 * io_queue_run. */
typedef void (*io_callback_t)(io_context_t ctx, struct iocb *iocb, long res, long res2);

/* Contexts. */
extern int io_setup(int maxevents, io_context_t *ctxp);
extern int io_destroy(io_context_t ctx);
extern int io_queue_init(int maxevents, io_context_t *ctxp);
extern int io_queue_release(io_context_t ctx);
extern int io_queue_run(io_context_t ctx);
/* Exported by libaio.so.1 (not declared by every libaio.h): validates the
 * context and returns 0. */
extern int io_queue_wait(io_context_t ctx, struct timespec *timeout);

/* Requests and completions. */
extern int io_submit(io_context_t ctx, long nr, struct iocb *ios[]);
extern int io_cancel(io_context_t ctx, struct iocb *iocb, struct io_event *evt);
extern int io_getevents(io_context_t ctx, long min_nr, long nr,
			struct io_event *events, struct timespec *timeout);
extern int io_pgetevents(io_context_t ctx, long min_nr, long nr,
			 struct io_event *events, struct timespec *timeout,
			 sigset_t *sigmask);

/* Fills a whole iocb: zero, then the fields every request has. */
static inline void __aio_prep(struct iocb *iocb, int fd, io_iocb_cmd_t cmd)
{
	memset(iocb, 0, sizeof(*iocb));
	iocb->aio_fildes = fd;
	iocb->aio_lio_opcode = (short)cmd;
	iocb->aio_reqprio = 0;
}

static inline void __aio_prep_rw(struct iocb *iocb, int fd, io_iocb_cmd_t cmd,
				 void *buf, unsigned long nbytes, long long offset)
{
	__aio_prep(iocb, fd, cmd);
	iocb->u.c.buf = buf;
	iocb->u.c.nbytes = nbytes;
	iocb->u.c.offset = offset;
}

static inline void io_set_callback(struct iocb *iocb, io_callback_t cb)
{
	iocb->data = (void *)cb;
}

static inline void io_prep_pread(struct iocb *iocb, int fd, void *buf, size_t count, long long offset)
{
	__aio_prep_rw(iocb, fd, IO_CMD_PREAD, buf, count, offset);
}

static inline void io_prep_pwrite(struct iocb *iocb, int fd, void *buf, size_t count, long long offset)
{
	__aio_prep_rw(iocb, fd, IO_CMD_PWRITE, buf, count, offset);
}

static inline void io_prep_preadv(struct iocb *iocb, int fd, const struct iovec *iov, int iovcnt, long long offset)
{
	__aio_prep_rw(iocb, fd, IO_CMD_PREADV, (void *)iov, (unsigned long)iovcnt, offset);
}

static inline void io_prep_pwritev(struct iocb *iocb, int fd, const struct iovec *iov, int iovcnt, long long offset)
{
	__aio_prep_rw(iocb, fd, IO_CMD_PWRITEV, (void *)iov, (unsigned long)iovcnt, offset);
}

static inline void io_prep_preadv2(struct iocb *iocb, int fd, const struct iovec *iov, int iovcnt, long long offset, int flags)
{
	io_prep_preadv(iocb, fd, iov, iovcnt, offset);
	iocb->aio_rw_flags = (unsigned)flags;
}

static inline void io_prep_pwritev2(struct iocb *iocb, int fd, const struct iovec *iov, int iovcnt, long long offset, int flags)
{
	io_prep_pwritev(iocb, fd, iov, iovcnt, offset);
	iocb->aio_rw_flags = (unsigned)flags;
}

static inline void io_prep_poll(struct iocb *iocb, int fd, int events)
{
	__aio_prep(iocb, fd, IO_CMD_POLL);
	iocb->u.poll.events = events;
}

static inline void io_prep_fsync(struct iocb *iocb, int fd)
{
	__aio_prep(iocb, fd, IO_CMD_FSYNC);
}

static inline void io_prep_fdsync(struct iocb *iocb, int fd)
{
	__aio_prep(iocb, fd, IO_CMD_FDSYNC);
}

/* Prepare, set the callback and submit, in one call. */
static inline int io_poll(io_context_t ctx, struct iocb *iocb, io_callback_t cb, int fd, int events)
{
	io_prep_poll(iocb, fd, events);
	io_set_callback(iocb, cb);
	return io_submit(ctx, 1, &iocb);
}

static inline int io_fsync(io_context_t ctx, struct iocb *iocb, io_callback_t cb, int fd)
{
	io_prep_fsync(iocb, fd);
	io_set_callback(iocb, cb);
	return io_submit(ctx, 1, &iocb);
}

static inline int io_fdsync(io_context_t ctx, struct iocb *iocb, io_callback_t cb, int fd)
{
	io_prep_fdsync(iocb, fd);
	io_set_callback(iocb, cb);
	return io_submit(ctx, 1, &iocb);
}

/* Signal the eventfd `eventfd` (+1) when the request completes
 * (IOCB_FLAG_RESFD). Call after the io_prep_* function. */
static inline void io_set_eventfd(struct iocb *iocb, int eventfd)
{
	iocb->u.c.flags |= 1u /* IOCB_FLAG_RESFD */;
	iocb->u.c.resfd = (unsigned)eventfd;
}

#undef __AIO_BIG_ENDIAN

#ifdef __cplusplus
}
#endif

#endif /* __LIBAIO_H */
