/*
 * One ublk hardware queue: a dedicated thread with its own SQE128 io_uring that FETCHes every
 * tag, serves each request through the handler and answers with COMMIT_AND_FETCH_REQ (which
 * completes the request and re-arms the tag). A -ENODEV completion means the queue is being
 * stopped or quiesced: that tag is not re-armed and the thread leaves when all tags are gone.
 */
#ifndef PLOOP_UBLK_QUEUE_H
#define PLOOP_UBLK_QUEUE_H

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>

#include "uapi.h"

struct ublk_queue;

/* Zero copy: requests up to this size are copied with USER_COPY instead (see queue.c). */
#define UBLK_SMALL_IO (128u << 10)

/* Serves one request; returns bytes transferred (READ/WRITE), 0, or -errno. `buf` holds the
 * request's data in copy mode; in zero-copy mode it is NULL and the data is moved with
 * ublk_queue_xfer / ublk_queue_zero. */
typedef int (*ublk_io_handler)(void *ctx, struct ublk_queue *q, int tag,
			       const struct ublk_io_desc *iod, uint8_t *buf);

/*
 * Asynchronous requests. Before serving a request the queue offers it to `start`, which
 * may begin a single transfer with ublk_queue_start_xfer and return UBLK_IO_ASYNC: the queue
 * then goes on with other requests, and once the transfer completes calls `finish` with its
 * result (bytes or -errno) and commits what that returns. Transfers of many requests are so
 * submitted, and completed, with one system call. `start` returns 0 to have the request served
 * by `handler` as usual, and either of them may return UBLK_IO_RETRY: the queue then lets all
 * its transfers in flight finish first and offers the request again (a handler must not block
 * while requests of its own queue wait to be finished).
 */
#define UBLK_IO_ASYNC (-EINPROGRESS)
#define UBLK_IO_RETRY (-EALREADY)
typedef int (*ublk_io_start)(void *ctx, struct ublk_queue *q, int tag,
			     const struct ublk_io_desc *iod);
typedef int (*ublk_io_finish)(void *ctx, struct ublk_queue *q, int tag,
			      const struct ublk_io_desc *iod, int res);

/* What `start` keeps for a request until `finish` (owned by the handler). */
struct ublk_tag_state {
	void *p;
	uint64_t t0;
	uint64_t host;
	int kind;
};

/* A CQE set aside while the queue thread waited for one of its own transfers. */
struct ublk_cqe {
	uint64_t user_data;
	int32_t res;
};

struct ublk_queue {
	int qid;
	int depth;
	int cfd;
	uint32_t buf_size; /* per tag (max_io_buf_bytes) */
	/*
	 * Zero copy (UBLK_F_AUTO_BUF_REG + USER_COPY): the kernel registers each request's pages in this ring's
	 * buffer table at index = tag, and the queue moves data between them and the image files
	 * with READ_FIXED/WRITE_FIXED on the same ring, so the data is copied once (page cache <->
	 * request pages), not twice through a buffer of ours.
	 */
	int zero_copy;
	int zero_fd; /* /dev/zero: zero-fills READ data that maps nowhere (zero copy) */
	uint8_t *small_buf; /* zero copy: READ/WRITE up to UBLK_SMALL_IO are served here (USER_COPY) */
	ublk_io_handler handler;
	ublk_io_start start;   /* optional */
	ublk_io_finish finish; /* required with start */
	void *ctx;
	struct ublk_tag_state *tags; /* depth entries, for start/finish */
	int async_inflight;          /* requests started by `start` and not yet finished */
	cpu_set_t affinity; /* CPUs blk-mq maps to this queue (GET_QUEUE_AFFINITY) */
	int has_affinity;

	struct ublk_io_desc *iods;
	size_t iods_len;
	uint8_t *bufs;
	size_t bufs_len;
	struct io_uring ring;
	int ring_ok;
	/* ublk completions reaped during a transfer wait, served next (at most one per tag) */
	struct ublk_cqe *backlog;
	int bl_head, bl_count;
	/* completed asynchronous transfers, to be finished (at most one per tag) */
	struct ublk_cqe *done;
	int done_head, done_count;
	/* tags no longer ours once stopping (see queue_main) */
	uint8_t *gone;
	int live, stopping;
	int aborted; /* the kernel has aborted fetches: the device is stopping or quiescing */
	int err; /* first unexpected ring/command error of the thread */
	uint32_t xfer_seq; /* identifies the transfer being waited for */
	int xfer_done, xfer_res;
	pthread_t thread;
	int thread_started;

	pthread_mutex_t mtx;
	pthread_cond_t cv;
	int armed;     /* 1 once every tag was fetched, < 0 on a setup error */
	int exited;    /* the thread left its loop */
	int exit_error; /* unexpected ring/command error, 0 if it left normally */
};

/* Starts the thread and waits until all tags are fetched (or setup failed: -errno). */
int ublk_queue_start(struct ublk_queue *q);
/*
 * Zero copy, from the handler (queue thread) only: moves len bytes between bytes [boff, boff+len)
 * of request `tag` and fd at off (write = request -> file), or fills them with zeros. They wait
 * for the transfer; requests arriving meanwhile are served afterwards. 0 or -errno; reading past
 * the end of the file gives zeros.
 */
int ublk_queue_xfer(struct ublk_queue *q, int tag, int write, int fd, uint64_t off, uint32_t boff,
		    uint32_t len);
int ublk_queue_zero(struct ublk_queue *q, int tag, uint32_t boff, uint32_t len);
/*
 * From `start` only: begins reading the whole request from fd at off, or zeros when fd < 0
 * (zero copy only). Returns UBLK_IO_ASYNC, or -EBUSY when the ring has no room (the request is
 * then served synchronously).
 */
int ublk_queue_start_read(struct ublk_queue *q, int tag, int fd, uint64_t off, uint32_t len);
/*
 * From `start` only, zero copy: begins writing the whole request to fd at off. With in_order,
 * such writes to one file land in the order they were started. UBLK_IO_ASYNC or -EBUSY, as above.
 */
int ublk_queue_start_write(struct ublk_queue *q, int tag, int fd, uint64_t off, uint32_t len,
			   int in_order);
/* Whether the ring has room to start a transfer now. */
int ublk_queue_room(struct ublk_queue *q);
/* The request's buffer in copy mode, NULL in zero-copy mode. */
uint8_t *ublk_queue_buf(struct ublk_queue *q, int tag);

/* Waits for the thread to leave (after STOP_DEV / QUIESCE_DEV aborted its tags) and frees the
 * ring, the descriptor mapping and the buffers. */
void ublk_queue_join(struct ublk_queue *q);

#endif
