/* Tiny assertion helpers shared by the C test programs. */
#ifndef AIO_LIBAIO_TEST_CHECK_H
#define AIO_LIBAIO_TEST_CHECK_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fails the program with the location and the failed condition. */
#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__,        \
				__LINE__, #cond);                            \
			exit(1);                                             \
		}                                                            \
	} while (0)

/* `call` (a libaio function) returns `want` and leaves errno alone: errno is
 * set to a sentinel before the call and must still hold it afterwards. */
#define CHECK_RET(call, want)                                                \
	do {                                                                 \
		errno = 4242;                                                \
		long got_ = (long)(call);                                    \
		int errno_ = errno;                                          \
		if (got_ != (long)(want) || errno_ != 4242) {                \
			fprintf(stderr,                                      \
				"FAIL %s:%d: %s = %ld (want %ld), errno %d " \
				"(want it untouched)\n",                     \
				__FILE__, __LINE__, #call, got_,             \
				(long)(want), errno_);                       \
			exit(1);                                             \
		}                                                            \
	} while (0)

/* A libc call that must succeed. */
#define MUST(call)                                                           \
	do {                                                                 \
		if ((call) < 0) {                                            \
			fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__,    \
				__LINE__, #call, strerror(errno));           \
			exit(1);                                             \
		}                                                            \
	} while (0)

#define OK(name) printf("ok %s\n", name)

#endif
