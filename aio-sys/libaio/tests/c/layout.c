/* Prints the layout of the libaio.h types as "name value" lines. Compiled
 * against our header and, when installed, the system's, and compared with
 * aio-abi by tests/header.rs. */
#include <stddef.h>
#include <stdio.h>
#include <libaio.h>

#define SIZE(t) printf("sizeof(%s) %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offsetof(%s, %s) %zu\n", #t, #f, offsetof(t, f))

int main(void)
{
	SIZE(struct iocb);
	OFF(struct iocb, data);
	OFF(struct iocb, key);
	OFF(struct iocb, aio_rw_flags);
	OFF(struct iocb, aio_lio_opcode);
	OFF(struct iocb, aio_reqprio);
	OFF(struct iocb, aio_fildes);
	OFF(struct iocb, u.c.buf);
	OFF(struct iocb, u.c.nbytes);
	OFF(struct iocb, u.c.offset);
	OFF(struct iocb, u.c.__pad3);
	OFF(struct iocb, u.c.flags);
	OFF(struct iocb, u.c.resfd);
	OFF(struct iocb, u.v.vec);
	OFF(struct iocb, u.v.nr);
	OFF(struct iocb, u.v.offset);
	OFF(struct iocb, u.poll.events);
	OFF(struct iocb, u.saddr.addr);
	OFF(struct iocb, u.saddr.len);
	SIZE(struct io_event);
	OFF(struct io_event, data);
	OFF(struct io_event, obj);
	OFF(struct io_event, res);
	OFF(struct io_event, res2);
	SIZE(struct io_sigset);
	OFF(struct io_sigset, ss);
	OFF(struct io_sigset, ss_len);
	SIZE(io_context_t);
	printf("IO_CMD_PREAD %d\n", IO_CMD_PREAD);
	printf("IO_CMD_PWRITE %d\n", IO_CMD_PWRITE);
	printf("IO_CMD_FSYNC %d\n", IO_CMD_FSYNC);
	printf("IO_CMD_FDSYNC %d\n", IO_CMD_FDSYNC);
	printf("IO_CMD_POLL %d\n", IO_CMD_POLL);
	printf("IO_CMD_NOOP %d\n", IO_CMD_NOOP);
	printf("IO_CMD_PREADV %d\n", IO_CMD_PREADV);
	printf("IO_CMD_PWRITEV %d\n", IO_CMD_PWRITEV);
	/* The helpers fill the same bytes. */
	struct iocb cb;
	unsigned char *b = (unsigned char *)&cb;
	io_prep_pwritev2(&cb, 7, (const struct iovec *)0x1000, 3, 4096, 0x2);
	io_set_eventfd(&cb, 9);
	cb.data = (void *)0x55;
	printf("io_prep_pwritev2+io_set_eventfd");
	for (size_t i = 0; i < sizeof(cb); i++)
		printf(" %02x", b[i]);
	printf("\n");
	io_prep_poll(&cb, 5, 0x41);
	printf("io_prep_poll");
	for (size_t i = 0; i < sizeof(cb); i++)
		printf(" %02x", b[i]);
	printf("\n");
	return 0;
}
