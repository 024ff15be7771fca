/*
 * C programs against libaio.h and libaio.so.1: the libaio API as C code sees
 * it. Usage: c_api SUBTEST DIR, where DIR is a scratch directory.
 *
 * Every libaio call is checked for libaio's convention: the result is the
 * count or -errno, and errno is left as it was (CHECK_RET).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libaio.h>

#include "check.h"

/* Exported by libaio.so.1 but not declared by the system's libaio.h. */
extern int io_queue_wait(io_context_t ctx, struct timespec *timeout);

#ifndef RWF_DSYNC
#define RWF_DSYNC 0x2
#endif
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x8
#endif

static const char *dir;

static int open_file(const char *name, int flags)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, flags | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 && !(flags & O_DIRECT)) {
		fprintf(stderr, "FAIL open %s: %s\n", path, strerror(errno));
		exit(1);
	}
	return fd;
}

static io_context_t new_ctx(int nr)
{
	io_context_t ctx = 0;
	CHECK_RET(io_setup(nr, &ctx), 0);
	CHECK(ctx != 0);
	return ctx;
}

/* Waits for exactly one event and returns it. */
static struct io_event one_event(io_context_t ctx)
{
	struct io_event ev;
	struct timespec ts = {5, 0};
	CHECK_RET(io_getevents(ctx, 1, 1, &ev, &ts), 1);
	return ev;
}

static void *unmapped_page(void)
{
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	MUST(munmap(p, 4096));
	return p;
}

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;
	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

/* Spec §10: the rows a C program can reach through the libaio API. */
static void test_errors(void)
{
	io_context_t ctx = 0;

	/* io_setup */
	io_context_t nonzero = (io_context_t)0x1000;
	CHECK_RET(io_setup(1, &nonzero), -EINVAL);
	CHECK_RET(io_setup(0, &ctx), -EINVAL);
	CHECK_RET(io_setup(-1, &ctx), -EINVAL);
	CHECK_RET(io_setup(1, NULL), -EFAULT);
	CHECK_RET(io_setup(1, (io_context_t *)unmapped_page()), -EFAULT);
	io_context_t *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ro != MAP_FAILED);
	CHECK_RET(io_setup(1, ro), -EFAULT);
	long max_nr = read_long("/proc/sys/fs/aio-max-nr");
	if (max_nr > 0 && max_nr < 0x7fffffff)
		CHECK_RET(io_setup((int)max_nr + 1, &ctx), -EAGAIN);
	CHECK_RET(io_queue_init(0, &ctx), -EINVAL);
	CHECK_RET(io_queue_init(-1, &ctx), -EINVAL);
	OK("io_setup rows");

	ctx = new_ctx(16);
	int fd = open_file("errors", O_RDWR | O_TRUNC);
	int rd = open_file("errors", O_RDONLY);
	int wr = open_file("errors", O_WRONLY);
	static char buf[4096];
	struct iocb cb, *cbs[1] = {&cb};

	/* io_submit: context and array */
	io_prep_pwrite(&cb, fd, buf, 512, 0);
	CHECK_RET(io_submit(0, 1, cbs), -EINVAL);
	CHECK_RET(io_submit((io_context_t)0x12345000, 1, cbs), -EINVAL);
	CHECK_RET(io_submit(ctx, -1, cbs), -EINVAL);
	CHECK_RET(io_submit(ctx, 1, NULL), -EFAULT);
	CHECK_RET(io_submit(ctx, 1, (struct iocb **)-1), -EFAULT);
	struct iocb *null_cb[1] = {NULL};
	CHECK_RET(io_submit(ctx, 1, null_cb), -EFAULT);
	struct iocb *gone_cb[1] = {(struct iocb *)unmapped_page()};
	CHECK_RET(io_submit(ctx, 1, gone_cb), -EFAULT);
	CHECK_RET(io_submit(ctx, 0, cbs), 0);

	/* io_submit: per-iocb checks */
	io_prep_pwrite(&cb, -1, buf, 512, 0);
	CHECK_RET(io_submit(ctx, 1, cbs), -EBADF);
	io_prep_pwrite(&cb, rd, buf, 512, 0);
	CHECK_RET(io_submit(ctx, 1, cbs), -EBADF);
	io_prep_pread(&cb, wr, buf, 512, 0);
	CHECK_RET(io_submit(ctx, 1, cbs), -EBADF);
	io_prep_pwrite(&cb, fd, buf, 512, -1);
	CHECK_RET(io_submit(ctx, 1, cbs), -EINVAL);
	io_prep_pwrite(&cb, fd, buf, 512, 0);
	cb.aio_lio_opcode = 99;
	CHECK_RET(io_submit(ctx, 1, cbs), -EINVAL);
	io_prep_pwrite(&cb, fd, buf, 512, 0);
	cb.u.c.__pad3 = 1; /* aio_reserved2 */
	CHECK_RET(io_submit(ctx, 1, cbs), -EINVAL);
	io_prep_pwrite(&cb, fd, buf, 0, 0);
	cb.u.c.nbytes = 1UL << 63;
	CHECK_RET(io_submit(ctx, 1, cbs), -EINVAL);
	io_prep_pwrite(&cb, fd, (void *)0xffff888000000000UL, 512, 0);
	CHECK_RET(io_submit(ctx, 1, cbs), -EFAULT);
	/* Bad fd and bad opcode: the fd is checked first. */
	io_prep_pwrite(&cb, -1, buf, 512, 0);
	cb.aio_lio_opcode = 99;
	CHECK_RET(io_submit(ctx, 1, cbs), -EBADF);
	OK("io_submit rows");

	/* nbytes 0: accepted, completes with 0 */
	io_prep_pwrite(&cb, fd, buf, 0, 0);
	cb.data = (void *)0x5a5a;
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	struct io_event ev = one_event(ctx);
	CHECK(ev.obj == &cb && ev.data == (void *)0x5a5a && (long)ev.res == 0);

	/* A NULL buffer: EFAULT now, or -EFAULT in the event. */
	io_prep_pread(&cb, fd, NULL, 512, 0);
	MUST(pwrite(fd, buf, 4096, 0));
	errno = 4242;
	int r = io_submit(ctx, 1, cbs);
	CHECK(errno == 4242);
	if (r == 1) {
		ev = one_event(ctx);
		CHECK((long)ev.res == -EFAULT);
	} else {
		CHECK(r == -EFAULT);
	}
	OK("io_submit completions");

	/* io_getevents */
	struct io_event evs[4];
	struct timespec zero = {0, 0};
	CHECK_RET(io_getevents(0, 0, 1, evs, &zero), -EINVAL);
	CHECK_RET(io_getevents((io_context_t)0x12345000, 0, 1, evs, &zero), -EINVAL);
	CHECK_RET(io_getevents(ctx, 2, 1, evs, &zero), -EINVAL);
	CHECK_RET(io_getevents(ctx, 0, -1, evs, &zero), -EINVAL);
	CHECK_RET(io_getevents(ctx, 0, 4, evs, &zero), 0);
	CHECK_RET(io_getevents(ctx, 1, 4, evs, &zero), 0);
	OK("io_getevents rows");

	/* io_pgetevents with an event ready: bad pointers still fail and
	 * leave the event in the ring. The eventfd says when it is posted
	 * (the kernel posts buffered writes inside io_submit, the engine
	 * a little later). */
	int efd = eventfd(0, EFD_CLOEXEC);
	MUST(efd);
	io_prep_pwrite(&cb, fd, buf, 512, 0);
	io_set_eventfd(&cb, efd);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	uint64_t posted;
	CHECK(read(efd, &posted, sizeof(posted)) == sizeof(posted) && posted == 1);
	close(efd);
	sigset_t none;
	sigemptyset(&none);
	CHECK_RET(io_pgetevents(ctx, 1, 1, NULL, &zero, &none), -EFAULT);
	CHECK_RET(io_pgetevents(ctx, 1, 1, evs, (struct timespec *)-1, &none), -EFAULT);
	CHECK_RET(io_pgetevents(ctx, 1, 1, evs, &zero, (sigset_t *)-1), -EFAULT);
	CHECK_RET(io_getevents(ctx, 1, 1, NULL, &zero), -EFAULT);
	CHECK_RET(io_pgetevents(ctx, 1, 4, evs, &zero, &none), 1);
	CHECK(evs[0].obj == &cb && (long)evs[0].res == 512);
	OK("io_pgetevents rows");

	/* io_cancel: NULL iocb; a file write (completed: not cancellable) */
	CHECK_RET(io_cancel(ctx, NULL, &ev), -EFAULT);
	io_prep_pwrite(&cb, fd, buf, 512, 0);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	CHECK_RET(io_cancel(ctx, &cb, &ev), -EINVAL);
	ev = one_event(ctx);
	CHECK((long)ev.res == 512);
	OK("io_cancel rows");

	/* io_destroy */
	io_context_t ff;
	memset(&ff, 0xff, sizeof(ff));
	CHECK_RET(io_destroy(ff), -EINVAL);
	CHECK_RET(io_destroy(0), -EINVAL);

	/* A fork child does not own its parent's context. */
	io_prep_pwrite(&cb, fd, buf, 512, 0);
	CHECK_RET(io_submit(ctx, 1, cbs), 1); /* an event waits in the ring */
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		CHECK_RET(io_submit(ctx, 1, cbs), -EINVAL);
		CHECK_RET(io_getevents(ctx, 0, 4, evs, &zero), -EINVAL);
		CHECK_RET(io_destroy(ctx), -EINVAL);
		_exit(0);
	}
	int status;
	MUST(waitpid(pid, &status, 0));
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ev = one_event(ctx); /* still the parent's */
	CHECK(ev.obj == &cb);
	OK("fork child rows");

	CHECK_RET(io_destroy(ctx), 0);
	CHECK_RET(io_destroy(ctx), -EINVAL);
	CHECK_RET(io_getevents(ctx, 0, 1, evs, &zero), -EINVAL);
	OK("io_destroy rows");

	/* More requests in flight than the ring holds: EAGAIN, then reap and
	 * resubmit. Poll requests on an empty pipe stay in flight. */
	int p[2];
	MUST(pipe(p));
	ctx = new_ctx(1);
	enum { MAXP = 4096 };
	static struct iocb polls[MAXP];
	int n = 0;
	for (;;) {
		struct iocb *one = &polls[n];
		io_prep_poll(one, p[0], POLLIN);
		errno = 4242;
		r = io_submit(ctx, 1, &one);
		CHECK(errno == 4242);
		if (r == -EAGAIN)
			break;
		CHECK(r == 1);
		CHECK(++n < MAXP);
	}
	CHECK(n >= 1);
	MUST(write(p[1], "x", 1));
	static struct io_event pevs[MAXP];
	int got = 0;
	while (got < n) {
		struct timespec ts = {5, 0};
		r = io_getevents(ctx, 1, MAXP, pevs + got, &ts);
		CHECK(r > 0);
		got += r;
	}
	CHECK(got == n);
	for (int i = 0; i < n; i++)
		CHECK(((long)pevs[i].res & POLLIN) != 0);
	struct iocb *again = &polls[0];
	io_prep_poll(again, p[0], POLLIN);
	CHECK_RET(io_submit(ctx, 1, &again), 1);
	ev = one_event(ctx);
	CHECK(ev.obj == again);
	CHECK_RET(io_queue_release(ctx), 0);
	printf("ok ring full after %d requests: EAGAIN, then reap and resubmit\n", n);

	close(p[0]);
	close(p[1]);
	close(fd);
	close(rd);
	close(wr);
}

static void fill(unsigned char *b, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(seed * 31 + i * 7 + (i >> 9));
}

/* Writes `total` bytes through `nw` iovecs, reads them back through `nr_`
 * differently cut iovecs, compares. */
static void vectored_round_trip(io_context_t ctx, int fd, size_t total, int nw, int nr_, long long off,
				int wflags, int rflags, size_t align)
{
	unsigned char *src, *dst;
	CHECK(posix_memalign((void **)&src, align, total) == 0);
	CHECK(posix_memalign((void **)&dst, align, total) == 0);
	fill(src, total, (unsigned)(total + nw));
	memset(dst, 0, total);
	struct iovec *wv = calloc((size_t)nw, sizeof(*wv));
	struct iovec *rv = calloc((size_t)nr_, sizeof(*rv));
	size_t step = total / (size_t)nw, at = 0;
	for (int i = 0; i < nw; i++) {
		wv[i].iov_base = src + at;
		wv[i].iov_len = i == nw - 1 ? total - at : step;
		at += wv[i].iov_len;
	}
	step = total / (size_t)nr_;
	at = 0;
	for (int i = 0; i < nr_; i++) {
		rv[i].iov_base = dst + at;
		rv[i].iov_len = i == nr_ - 1 ? total - at : step;
		at += rv[i].iov_len;
	}
	struct iocb cb, *cbs[1] = {&cb};
	io_prep_pwritev2(&cb, fd, wv, nw, off, wflags);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	struct io_event ev = one_event(ctx);
	CHECK(ev.obj == &cb && (long)ev.res == (long)total);
	io_prep_preadv2(&cb, fd, rv, nr_, off, rflags);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	ev = one_event(ctx);
	if (rflags & RWF_NOWAIT) {
		/* May not block: all of it from the cache, or -EAGAIN. */
		CHECK((long)ev.res == (long)total || (long)ev.res == -EAGAIN);
		if ((long)ev.res == -EAGAIN)
			goto out;
	} else {
		CHECK((long)ev.res == (long)total);
	}
	CHECK(memcmp(src, dst, total) == 0);
out:
	free(wv);
	free(rv);
	free(src);
	free(dst);
}

static void test_vectored(void)
{
	io_context_t ctx = new_ctx(64);
	int fd = open_file("vectored", O_RDWR | O_TRUNC);
	vectored_round_trip(ctx, fd, 4096, 1, 1, 0, 0, 0, 64);
	vectored_round_trip(ctx, fd, 10000, 3, 7, 12345, 0, 0, 64);
	vectored_round_trip(ctx, fd, 65536, 16, 5, 1 << 20, RWF_DSYNC, 0, 64);
	vectored_round_trip(ctx, fd, 1024 * 100, 1024, 1000, 0, 0, RWF_NOWAIT, 64);
	OK("vectored round trips (1..1024 segments, RWF_DSYNC, RWF_NOWAIT)");

	/* io_prep_preadv/pwritev (no flags) and the UIO_MAXIOV limit */
	static char a[100], b[200], c[300];
	struct iovec v[3] = {{a, sizeof(a)}, {b, sizeof(b)}, {c, sizeof(c)}};
	memset(a, 'a', sizeof(a));
	memset(b, 'b', sizeof(b));
	memset(c, 'c', sizeof(c));
	struct iocb cb, *cbs[1] = {&cb};
	io_prep_pwritev(&cb, fd, v, 3, 0);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	CHECK((long)one_event(ctx).res == 600);
	memset(a, 0, sizeof(a));
	memset(c, 0, sizeof(c));
	io_prep_preadv(&cb, fd, v, 3, 0);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	CHECK((long)one_event(ctx).res == 600);
	CHECK(a[0] == 'a' && a[99] == 'a' && c[0] == 'c' && c[299] == 'c');
	static struct iovec many[1025];
	for (int i = 0; i < 1025; i++) {
		many[i].iov_base = a;
		many[i].iov_len = 1;
	}
	io_prep_preadv(&cb, fd, many, 1025, 0);
	CHECK_RET(io_submit(ctx, 1, cbs), -EINVAL);
	OK("io_prep_preadv/io_prep_pwritev, UIO_MAXIOV");

	/* O_DIRECT: truly asynchronous on ext4/xfs/btrfs block devices. */
	int dfd = open_file("vectored-direct", O_RDWR | O_TRUNC | O_DIRECT);
	if (dfd >= 0) {
		vectored_round_trip(ctx, dfd, 4096 * 64, 8, 64, 4096 * 3, 0, 0, 4096);
		vectored_round_trip(ctx, dfd, 4096 * 256, 256, 2, 0, 0, 0, 4096);
		close(dfd);
		OK("O_DIRECT vectored round trips");
	} else {
		printf("skip O_DIRECT: %s\n", strerror(errno));
	}

	/* Many requests in one io_submit, reaped with min_nr = nr. */
	enum { N = 48 };
	static struct iocb many_cb[N];
	struct iocb *list[N];
	static char bufs[N][512];
	for (int i = 0; i < N; i++) {
		memset(bufs[i], i, sizeof(bufs[i]));
		io_prep_pwrite(&many_cb[i], fd, bufs[i], 512, (long long)i * 512);
		many_cb[i].data = (void *)(uintptr_t)(i + 1);
		list[i] = &many_cb[i];
	}
	CHECK_RET(io_submit(ctx, N, list), N);
	struct io_event evs[N];
	struct timespec ts = {5, 0};
	CHECK_RET(io_getevents(ctx, N, N, evs, &ts), N);
	unsigned long seen = 0;
	for (int i = 0; i < N; i++) {
		uintptr_t d = (uintptr_t)evs[i].data;
		CHECK(d >= 1 && d <= N && (long)evs[i].res == 512);
		CHECK(evs[i].obj == &many_cb[d - 1]);
		seen ^= 1UL << (d - 1);
	}
	CHECK(seen == (1UL << N) - 1);
	OK("batch of 48 requests");

	CHECK_RET(io_destroy(ctx), 0);
	close(fd);
}

static void test_eventfd(void)
{
	io_context_t ctx = new_ctx(32);
	int fd = open_file("eventfd", O_RDWR | O_TRUNC);
	int efd = eventfd(0, EFD_CLOEXEC);
	MUST(efd);
	enum { N = 8 };
	static struct iocb cbs[N + 2];
	struct iocb *list[N + 2];
	static char buf[N][4096];
	for (int i = 0; i < N; i++) {
		io_prep_pwrite(&cbs[i], fd, buf[i], sizeof(buf[i]), (long long)i * 4096);
		io_set_eventfd(&cbs[i], efd);
		CHECK(cbs[i].u.c.flags == 1 && cbs[i].u.c.resfd == (unsigned)efd);
		list[i] = &cbs[i];
	}
	io_prep_fsync(&cbs[N], fd);
	io_set_eventfd(&cbs[N], efd);
	list[N] = &cbs[N];
	io_prep_fdsync(&cbs[N + 1], fd);
	io_set_eventfd(&cbs[N + 1], efd);
	list[N + 1] = &cbs[N + 1];
	CHECK_RET(io_submit(ctx, N + 2, list), N + 2);
	uint64_t total = 0;
	while (total < N + 2) {
		struct pollfd pfd = {efd, POLLIN, 0};
		CHECK(poll(&pfd, 1, 5000) == 1);
		uint64_t v;
		CHECK(read(efd, &v, sizeof(v)) == sizeof(v));
		total += v;
	}
	CHECK(total == N + 2);
	struct io_event evs[N + 2];
	struct timespec zero = {0, 0};
	/* Signalled means posted: all of them are in the ring now. */
	CHECK_RET(io_getevents(ctx, N + 2, N + 2, evs, &zero), N + 2);
	for (int i = 0; i < N + 2; i++)
		CHECK((long)evs[i].res == (evs[i].obj == &cbs[N] || evs[i].obj == &cbs[N + 1] ? 0 : 4096));
	CHECK_RET(io_destroy(ctx), 0);
	close(efd);
	close(fd);
	OK("eventfd notification (8 writes, fsync, fdsync)");
}

static volatile sig_atomic_t usr1_count;
static void on_usr1(int sig)
{
	(void)sig;
	usr1_count++;
}

struct kill_later {
	pthread_t target;
	int delay_ms;
};

static void *kill_later(void *arg)
{
	struct kill_later *k = arg;
	struct timespec d = {0, (long)k->delay_ms * 1000000L};
	nanosleep(&d, NULL);
	pthread_kill(k->target, SIGUSR1);
	return NULL;
}

static io_context_t cb_ctx;
static struct iocb *cb_iocb;
static long cb_res = -1;
static int cb_calls;
static void on_done(io_context_t ctx, struct iocb *iocb, long res, long res2)
{
	CHECK(ctx == cb_ctx && res2 == 0);
	cb_iocb = iocb;
	cb_res = res;
	cb_calls++;
}

static void test_poll(void)
{
	/* The aio-kernel engine's waits are not interrupted by signals and do
	 * not install io_pgetevents' mask (a documented difference). */
	int signals = getenv("C_API_NO_SIGNALS") == NULL;
	io_context_t ctx = new_ctx(16);
	int p[2];
	MUST(pipe(p));

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1; /* no SA_RESTART */
	MUST(sigaction(SIGUSR1, &sa, NULL));
	sigset_t usr1, none;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigemptyset(&none);
	MUST(pthread_sigmask(SIG_BLOCK, &usr1, NULL));

	struct iocb cb, *cbs[1] = {&cb};
	io_prep_poll(&cb, p[0], POLLIN);
	cb.data = (void *)0x77;
	CHECK(cb.u.poll.events == POLLIN);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	struct io_event ev;
	struct timespec ts;
	if (!signals) {
		printf("skip signal rows (C_API_NO_SIGNALS)\n");
		goto data;
	}

	/* The mask given to io_pgetevents unblocks SIGUSR1 for the wait: the
	 * signal interrupts it and its handler runs. */
	struct kill_later k = {pthread_self(), 100};
	pthread_t t;
	CHECK(pthread_create(&t, NULL, kill_later, &k) == 0);
	CHECK_RET(io_pgetevents(ctx, 1, 1, &ev, NULL, &none), -EINTR);
	CHECK(usr1_count == 1);
	pthread_join(t, NULL);
	OK("io_pgetevents: the signal mask admits the signal, EINTR");

	/* With the mask left alone (blocked), the same signal stays pending and
	 * the wait times out with nothing. */
	k.delay_ms = 20;
	CHECK(pthread_create(&t, NULL, kill_later, &k) == 0);
	ts.tv_sec = 0;
	ts.tv_nsec = 200 * 1000000L;
	CHECK_RET(io_pgetevents(ctx, 1, 1, &ev, &ts, NULL), 0);
	pthread_join(t, NULL);
	ts.tv_nsec = 50 * 1000000L;
	CHECK_RET(io_pgetevents(ctx, 1, 1, &ev, &ts, &usr1), 0);
	CHECK(usr1_count == 1);
	/* Now the pending one is let in. */
	CHECK_RET(io_pgetevents(ctx, 1, 1, &ev, &ts, &none), -EINTR);
	CHECK(usr1_count == 2);
	OK("io_pgetevents: blocked signal stays pending");

data:
	/* Data arrives: the poll completes with the ready mask. */
	MUST(write(p[1], "x", 1));
	ts.tv_sec = 5;
	ts.tv_nsec = 0;
	CHECK_RET(io_pgetevents(ctx, 1, 1, &ev, &ts, &none), 1);
	CHECK(ev.obj == &cb && ev.data == (void *)0x77 && ((long)ev.res & POLLIN));
	OK("IOCB_CMD_POLL completes with POLLIN");

	/* A waiting poll can be cancelled: EINPROGRESS, then an event with 0. */
	char c;
	MUST(read(p[0], &c, 1));
	io_prep_poll(&cb, p[0], POLLIN);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	CHECK_RET(io_cancel(ctx, &cb, &ev), -EINPROGRESS);
	ev = one_event(ctx);
	CHECK(ev.obj == &cb && (long)ev.res == 0);
	OK("io_cancel of a waiting poll: EINPROGRESS, event res 0");

	/* io_queue_run calls io_set_callback's callback. */
	cb_ctx = ctx;
	MUST(write(p[1], "y", 1));
	CHECK_RET(io_poll(ctx, &cb, on_done, p[0], POLLIN), 1);
	CHECK_RET(io_queue_run(ctx), 0);
	CHECK(cb_calls == 1 && cb_iocb == &cb && (cb_res & POLLIN));
	int fd = open_file("callbacks", O_RDWR | O_TRUNC);
	CHECK_RET(io_fsync(ctx, &cb, on_done, fd), 1);
	struct iocb cb2;
	struct iocb *cbs2[1] = {&cb2};
	io_prep_fdsync(&cb2, fd);
	io_set_callback(&cb2, on_done);
	CHECK_RET(io_submit(ctx, 1, cbs2), 1);
	ts.tv_sec = 5;
	ts.tv_nsec = 0;
	/* Wait until both are posted, then run them. */
	for (int i = 0; i < 500 && cb_calls < 3; i++) {
		CHECK_RET(io_queue_run(ctx), 0);
		if (cb_calls < 3) {
			struct timespec d = {0, 10 * 1000000L};
			nanosleep(&d, NULL);
		}
	}
	CHECK(cb_calls == 3 && cb_res == 0);
	CHECK_RET(io_queue_wait(ctx, &ts), 0);
	CHECK_RET(io_queue_run((io_context_t)0x12345000), -EINVAL);
	OK("io_queue_run callbacks (poll, fsync, fdsync)");

	CHECK_RET(io_queue_release(ctx), 0);
	close(fd);
	close(p[0]);
	close(p[1]);
}

/* Several threads reap one context; every event must be delivered exactly
 * once. For the first half of the events all four reap in user space
 * (min_nr 0: the ring, under the library's per-context lock); for the second
 * half two of them wait in the kernel (min_nr 1 with a timeout), which turns
 * user-space reaping off while they are there. */
enum { THREADS = 4, TOTAL = 20000 };
static io_context_t th_ctx;
static atomic_int th_reaped;
static atomic_uchar th_seen[TOTAL];

static void *reaper(void *arg)
{
	long id = (long)arg;
	struct io_event evs[16];
	while (atomic_load(&th_reaped) < TOTAL) {
		struct timespec ts = {0, 5 * 1000000L};
		int wait = id % 2 && atomic_load(&th_reaped) >= TOTAL / 2;
		int r = wait ? io_getevents(th_ctx, 1, 16, evs, &ts)
			     : io_getevents(th_ctx, 0, 16, evs, NULL);
		CHECK(r >= 0);
		for (int i = 0; i < r; i++) {
			uintptr_t d = (uintptr_t)evs[i].data;
			CHECK(d < TOTAL && (long)evs[i].res == 512);
			CHECK(atomic_fetch_add(&th_seen[d], 1) == 0);
		}
		atomic_fetch_add(&th_reaped, r);
		if (r == 0 && !wait)
			sched_yield();
	}
	return NULL;
}

static void test_threads(void)
{
	th_ctx = new_ctx(128);
	int fd = open_file("threads", O_RDWR | O_TRUNC);
	static char buf[512];
	pthread_t t[THREADS];
	for (long i = 0; i < THREADS; i++)
		CHECK(pthread_create(&t[i], NULL, reaper, (void *)i) == 0);
	static struct iocb cbs[TOTAL];
	int next = 0;
	while (next < TOTAL) {
		struct iocb *list[32];
		int n = 0;
		for (; n < 32 && next + n < TOTAL; n++) {
			io_prep_pwrite(&cbs[next + n], fd, buf, sizeof(buf), (long long)((next + n) % 64) * 512);
			cbs[next + n].data = (void *)(uintptr_t)(next + n);
			list[n] = &cbs[next + n];
		}
		int r = io_submit(th_ctx, n, list);
		if (r == -EAGAIN) {
			sched_yield();
			continue;
		}
		CHECK(r > 0);
		next += r;
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	CHECK(atomic_load(&th_reaped) == TOTAL);
	for (int i = 0; i < TOTAL; i++)
		CHECK(atomic_load(&th_seen[i]) == 1);
	CHECK_RET(io_destroy(th_ctx), 0);
	close(fd);
	OK("4 threads reaping one context: 20000 events, each exactly once");
}

/* io_destroy while another thread waits in io_getevents on the same
 * context: the destroy cancels the waiting poll and returns 0; the waiter
 * gets the cancelled poll's event (res 0) or EINVAL, and nobody hangs. */
static io_context_t dw_ctx;
static atomic_int dw_started;
static int dw_result;
static struct io_event dw_ev;

static void *destroy_waiter(void *arg)
{
	(void)arg;
	atomic_store(&dw_started, 1);
	dw_result = io_getevents(dw_ctx, 1, 1, &dw_ev, NULL);
	return NULL;
}

static void test_destroy(void)
{
	int p[2];
	MUST(pipe(p));
	for (int round = 0; round < 20; round++) {
		dw_ctx = new_ctx(8);
		struct iocb cb, *cbs[1] = {&cb};
		io_prep_poll(&cb, p[0], POLLIN);
		CHECK_RET(io_submit(dw_ctx, 1, cbs), 1);
		atomic_store(&dw_started, 0);
		pthread_t t;
		CHECK(pthread_create(&t, NULL, destroy_waiter, NULL) == 0);
		while (!atomic_load(&dw_started))
			sched_yield();
		struct timespec d = {0, 5 * 1000000L};
		nanosleep(&d, NULL);
		CHECK_RET(io_destroy(dw_ctx), 0);
		pthread_join(t, NULL);
		CHECK(dw_result == -EINVAL || (dw_result == 1 && dw_ev.obj == &cb && (long)dw_ev.res == 0));
		struct timespec zero = {0, 0};
		CHECK_RET(io_getevents(dw_ctx, 0, 1, &dw_ev, &zero), -EINVAL);
	}
	close(p[0]);
	close(p[1]);
	OK("io_destroy while another thread waits: 20 rounds");
}

/* Programs linked against libaio before 0.4 use the LIBAIO_0.1 versions. */
extern int io_getevents_v01(io_context_t ctx, long nr, struct io_event *events, struct timespec *timeout);
extern int io_cancel_v01(io_context_t ctx, struct iocb *iocb);
extern int io_queue_wait_v01(io_context_t ctx, struct timespec *timeout);
__asm__(".symver io_getevents_v01, io_getevents@LIBAIO_0.1");
__asm__(".symver io_cancel_v01, io_cancel@LIBAIO_0.1");
__asm__(".symver io_queue_wait_v01, io_queue_wait@LIBAIO_0.1");

static void test_compat(void)
{
	io_context_t ctx = 0;
	CHECK_RET(io_queue_init(8, &ctx), 0);
	int fd = open_file("compat", O_RDWR | O_TRUNC);
	static char buf[512];
	struct iocb cb, *cbs[1] = {&cb};
	io_prep_pwrite(&cb, fd, buf, sizeof(buf), 0);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	struct io_event ev;
	struct timespec ts = {5, 0};
	CHECK_RET(io_getevents_v01(ctx, 1, &ev, &ts), 1);
	CHECK(ev.obj == &cb && (long)ev.res == 512);
	int p[2];
	MUST(pipe(p));
	io_prep_poll(&cb, p[0], POLLIN);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	CHECK_RET(io_cancel_v01(ctx, &cb), -EINPROGRESS);
	CHECK_RET(io_getevents_v01(ctx, 1, &ev, &ts), 1);
	CHECK(ev.obj == &cb && (long)ev.res == 0);
	CHECK_RET(io_queue_wait_v01(ctx, &ts), 0);
	CHECK_RET(io_queue_release(ctx), 0);
	close(fd);
	close(p[0]);
	close(p[1]);
	OK("LIBAIO_0.1 io_getevents, io_cancel, io_queue_wait");
}

/* Completions already posted are reaped without entering the kernel; the
 * library's log (AIO_LIBAIO_LOG) counts them, the Rust side checks it. */
static void test_ring(void)
{
	io_context_t ctx = new_ctx(64);
	int fd = open_file("ring", O_RDWR | O_TRUNC);
	static char buf[512];
	enum { N = 32 };
	static struct iocb cbs[N];
	struct iocb *list[N];
	for (int round = 0; round < 100; round++) {
		for (int i = 0; i < N; i++) {
			io_prep_pwrite(&cbs[i], fd, buf, sizeof(buf), (long long)i * 512);
			list[i] = &cbs[i];
		}
		CHECK_RET(io_submit(ctx, N, list), N);
		struct io_event evs[N];
		/* The kernel posts buffered writes before io_submit returns
		 * (the engine a little later): up to half of them with min_nr
		 * 0 (never waits), the rest with min_nr = the rest. */
		errno = 4242;
		int k = io_getevents(ctx, 0, N / 2, evs, NULL);
		CHECK(errno == 4242 && k >= 0 && k <= N / 2);
		CHECK_RET(io_getevents(ctx, N - k, N - k, evs, NULL), N - k);
	}
	CHECK_RET(io_destroy(ctx), 0);
	close(fd);
	OK("3200 buffered completions reaped");
}

/* Engine only (the kernel would block in io_submit on an empty pipe): a
 * read of an empty pipe whose writer is open is cancelled by io_cancel
 * (-EINPROGRESS, event -ECANCELED) and ended by io_destroy; bytes written
 * afterwards stay in the pipe. */
static void test_stream_cancel(void)
{
	int p[2];
	MUST(pipe(p));
	io_context_t ctx = new_ctx(8);
	static char buf[16];
	struct iocb cb, *cbs[1] = {&cb};
	io_prep_pread(&cb, p[0], buf, sizeof(buf), 0);
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	CHECK_RET(io_cancel(ctx, &cb, NULL), -EINPROGRESS);
	struct io_event ev;
	struct timespec ts = {5, 0};
	CHECK_RET(io_getevents(ctx, 1, 1, &ev, &ts), 1);
	CHECK(ev.obj == &cb && (long)ev.res == -ECANCELED);
	CHECK_RET(io_cancel(ctx, &cb, NULL), -EINVAL);
	/* Pending at io_destroy: ended, and io_destroy returns. */
	CHECK_RET(io_submit(ctx, 1, cbs), 1);
	CHECK_RET(io_destroy(ctx), 0);
	CHECK(write(p[1], "late", 4) == 4);
	char back[8];
	CHECK(read(p[0], back, sizeof(back)) == 4 && !memcmp(back, "late", 4));
	close(p[0]);
	close(p[1]);
	OK("pipe reads cancelled by io_cancel and ended by io_destroy");
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s errors|vectored|eventfd|poll|threads|destroy|compat|ring|stream_cancel DIR\n", argv[0]);
		return 2;
	}
	setvbuf(stdout, NULL, _IONBF, 0);
	dir = argv[2];
	const char *t = argv[1];
	if (!strcmp(t, "errors"))
		test_errors();
	else if (!strcmp(t, "vectored"))
		test_vectored();
	else if (!strcmp(t, "eventfd"))
		test_eventfd();
	else if (!strcmp(t, "poll"))
		test_poll();
	else if (!strcmp(t, "threads"))
		test_threads();
	else if (!strcmp(t, "destroy"))
		test_destroy();
	else if (!strcmp(t, "compat"))
		test_compat();
	else if (!strcmp(t, "ring"))
		test_ring();
	else if (!strcmp(t, "stream_cancel"))
		test_stream_cancel();
	else
		return 2;
	printf("done %s\n", t);
	return 0;
}
