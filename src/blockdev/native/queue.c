#define _GNU_SOURCE
#include "queue.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "ctrl.h"

static size_t round_page(size_t n)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	return (n + pg - 1) & ~(pg - 1);
}

/* user_data of a transfer: this bit, the transfer's sequence number above bit 16, the tag. */
#define XFER_BIT (1ULL << 63)
/* user_data of an asynchronous request's transfer: this bit and the tag. */
#define ASYNC_BIT (1ULL << 62)

/*
 * An SQE for a request's transfer, blank, or NULL when the ring is full. Never flushes the ring
 * to make room: the caller serves the request itself instead. An SQE taken must be filled in (a
 * blank one would complete as a command for tag 0).
 */
static struct io_uring_sqe *take_sqe(struct ublk_queue *q)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	if (sqe)
		memset(sqe, 0, 128);
	return sqe;
}

/* A blank SQE, submitting what the ring holds first when it is full. */
static struct io_uring_sqe *get_sqe(struct ublk_queue *q)
{
	struct io_uring_sqe *sqe = take_sqe(q);
	if (!sqe) {
		io_uring_submit(&q->ring);
		sqe = take_sqe(q);
	}
	return sqe;
}

static int queue_cmd(struct ublk_queue *q, unsigned nr, int tag, int result)
{
	struct io_uring_sqe *sqe = get_sqe(q);
	if (!sqe)
		return -EBUSY;
	struct ublk_io_cmd c;
	memset(&c, 0, sizeof(c));
	c.q_id = (uint16_t)q->qid;
	c.tag = (uint16_t)tag;
	c.result = result;
	if (q->zero_copy)
		sqe->addr = (uint64_t)tag; /* struct ublk_auto_buf_reg: index = tag, no flags */
	else
		c.addr = (uint64_t)(uintptr_t)(q->bufs + (size_t)tag * q->buf_size);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = q->cfd;
	sqe->off = ublk_io_op(nr); /* cmd_op */
	memcpy((char *)sqe + 48, &c, sizeof(c));
	sqe->user_data = (uint64_t)tag;
	return 0;
}

/* Moves every available CQE out of the ring: a transfer's result to xfer_res, ublk
 * completions to the backlog. */
static void reap(struct ublk_queue *q)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	io_uring_for_each_cqe(&q->ring, head, cqe)
	{
		n++;
		if (cqe->user_data & XFER_BIT) {
			if (((cqe->user_data >> 16) & 0xffffffffULL) == q->xfer_seq) {
				q->xfer_done = 1;
				q->xfer_res = cqe->res;
			}
			continue;
		}
		if (cqe->user_data & ASYNC_BIT) {
			/* A tag has either its command or one such transfer in flight. */
			int slot = (q->done_head + q->done_count) % q->depth;
			q->done[slot].user_data = cqe->user_data & 0xffff;
			q->done[slot].res = cqe->res;
			q->done_count++;
			continue;
		}
		/*
		 * An abort means the kernel has swept the idle fetches: from now on a request of
		 * ours that is committed re-arms a fetch nobody sweeps, so it must count as gone
		 * (see queue_main). Known before anything reaped with it is committed.
		 */
		if (cqe->res != UBLK_IO_RES_OK)
			q->stopping = 1;
		if (cqe->res == UBLK_IO_RES_ABORT)
			q->aborted = 1;
		/* Each tag has one command in flight, so depth slots always suffice. */
		int slot = (q->bl_head + q->bl_count) % q->depth;
		q->backlog[slot].user_data = cqe->user_data;
		q->backlog[slot].res = cqe->res;
		q->bl_count++;
	}
	io_uring_cq_advance(&q->ring, n);
}

/* One READ_FIXED/WRITE_FIXED on the request's registered pages, waited for. */
static int xfer_once(struct ublk_queue *q, int tag, int write, int fd, uint64_t off, uint32_t boff,
		     uint32_t len)
{
	struct io_uring_sqe *sqe = get_sqe(q);
	if (!sqe)
		return -EBUSY;
	/* For kernel-registered pages the "address" is the offset into the request. */
	if (write)
		io_uring_prep_write_fixed(sqe, fd, (const void *)(uintptr_t)boff, len, off, tag);
	else
		io_uring_prep_read_fixed(sqe, fd, (void *)(uintptr_t)boff, len, off, tag);
	q->xfer_seq++;
	q->xfer_done = 0;
	sqe->user_data = XFER_BIT | ((uint64_t)q->xfer_seq << 16) | (uint64_t)tag;
	/*
	 * Wait whatever the ring says: giving up while the transfer may still run would let it
	 * reach the pages of the tag's next request (the same buffer index).
	 */
	while (!q->xfer_done) {
		int r = io_uring_submit_and_wait(&q->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			usleep(1000); /* unexpected (e.g. -ENOMEM): retry without spinning */
		reap(q);
	}
	return q->xfer_res;
}

/*
 * USER_COPY: the request's bytes are read and written through the char device at an offset that
 * names the queue and tag (ublk_cmd.h: UBLKSRV_IO_BUF_OFFSET + q << 41 + tag << 25 + byte).
 */
static int user_copy(struct ublk_queue *q, int tag, int to_request, uint8_t *buf, uint32_t len)
{
	uint64_t base = 0x80000000ULL + ((uint64_t)q->qid << 41) + ((uint64_t)tag << 25);
	uint32_t done = 0;
	while (done < len) {
		ssize_t r = to_request ? pwrite(q->cfd, buf + done, len - done, (off_t)(base + done))
				       : pread(q->cfd, buf + done, len - done, (off_t)(base + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += (uint32_t)r;
	}
	return 0;
}

/*
 * Serves one request. In zero-copy mode, a small READ or WRITE is served from the queue's own
 * buffer instead, filled or emptied with USER_COPY: a buffered write through io_uring goes to a
 * kernel worker thread whenever the file system cannot do it without blocking (ext4 never can),
 * and an uncached read waits on a callback, and for a few KiB those thread hops cost far more
 * than the copy that pread/pwrite in this thread make. Large requests keep the single copy.
 */
static int serve(struct ublk_queue *q, int tag)
{
	const struct ublk_io_desc *iod = &q->iods[tag];
	if (!q->zero_copy)
		return q->handler(q->ctx, q, tag, iod, q->bufs + (size_t)tag * q->buf_size);
	unsigned op = iod->op_flags & 0xff;
	uint32_t len = iod->nr_sectors << 9;
	if ((op != UBLK_IO_OP_READ && op != UBLK_IO_OP_WRITE) || len > UBLK_SMALL_IO)
		return q->handler(q->ctx, q, tag, iod, NULL);
	if (op == UBLK_IO_OP_WRITE) {
		int r = user_copy(q, tag, 0, q->small_buf, len);
		return r ? r : q->handler(q->ctx, q, tag, iod, q->small_buf);
	}
	int res = q->handler(q->ctx, q, tag, iod, q->small_buf);
	if (res > 0) {
		int r = user_copy(q, tag, 1, q->small_buf, (uint32_t)res);
		if (r)
			return r;
	}
	return res;
}

int ublk_queue_zero(struct ublk_queue *q, int tag, uint32_t boff, uint32_t len)
{
	while (len) {
		int r = xfer_once(q, tag, 0, q->zero_fd, 0, boff, len);
		if (r <= 0)
			return r ? r : -EIO;
		boff += (uint32_t)r;
		len -= (uint32_t)r;
	}
	return 0;
}

int ublk_queue_xfer(struct ublk_queue *q, int tag, int write, int fd, uint64_t off, uint32_t boff,
		    uint32_t len)
{
	while (len) {
		int r = xfer_once(q, tag, write, fd, off, boff, len);
		if (r < 0)
			return r;
		if (r == 0)
			return write ? -EIO : ublk_queue_zero(q, tag, boff, len); /* end of file */
		off += (uint64_t)r;
		boff += (uint32_t)r;
		len -= (uint32_t)r;
	}
	return 0;
}

uint8_t *ublk_queue_buf(struct ublk_queue *q, int tag)
{
	return q->zero_copy ? NULL : q->bufs + (size_t)tag * q->buf_size;
}

int ublk_queue_room(struct ublk_queue *q)
{
	return io_uring_sq_space_left(&q->ring) > 0;
}

int ublk_queue_start_read(struct ublk_queue *q, int tag, int fd, uint64_t off, uint32_t len)
{
	if (fd < 0) {
		if (!q->zero_copy)
			return -EINVAL;
		fd = q->zero_fd;
		off = 0;
	}
	struct io_uring_sqe *sqe = take_sqe(q);
	if (!sqe)
		return -EBUSY;
	if (q->zero_copy)
		io_uring_prep_read_fixed(sqe, fd, NULL, len, off, tag);
	else
		io_uring_prep_read(sqe, fd, ublk_queue_buf(q, tag), len, off);
	sqe->user_data = ASYNC_BIT | (uint64_t)tag;
	return UBLK_IO_ASYNC;
}

int ublk_queue_start_write(struct ublk_queue *q, int tag, int fd, uint64_t off, uint32_t len,
			   int in_order)
{
	if (!q->zero_copy)
		return -EINVAL;
	struct io_uring_sqe *sqe = take_sqe(q);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_write_fixed(sqe, fd, NULL, len, off, tag);
	/*
	 * Straight to the kernel's worker threads, which run buffered writes to one file one after
	 * another in the order they were queued: an inline attempt (XFS can write without
	 * blocking) could land a later one first.
	 */
	if (in_order)
		sqe->flags |= IOSQE_ASYNC;
	sqe->user_data = ASYNC_BIT | (uint64_t)tag;
	return UBLK_IO_ASYNC;
}

static void set_armed(struct ublk_queue *q, int v)
{
	pthread_mutex_lock(&q->mtx);
	q->armed = v;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mtx);
}

static int queue_setup(struct ublk_queue *q)
{
	size_t stride = round_page((size_t)UBLK_MAX_QUEUE_DEPTH * sizeof(struct ublk_io_desc));
	q->iods_len = round_page((size_t)q->depth * sizeof(struct ublk_io_desc));
	void *m = mmap(NULL, q->iods_len, PROT_READ, MAP_SHARED | MAP_POPULATE, q->cfd,
		       (off_t)((size_t)q->qid * stride));
	if (m == MAP_FAILED)
		return -errno;
	q->iods = m;
	q->backlog = calloc((size_t)q->depth, sizeof(*q->backlog));
	q->done = calloc((size_t)q->depth, sizeof(*q->done));
	q->tags = calloc((size_t)q->depth, sizeof(*q->tags));
	q->gone = calloc((size_t)q->depth, 1);
	if (!q->backlog || !q->done || !q->tags || !q->gone)
		return -ENOMEM;
	if (!q->zero_copy) {
		q->bufs_len = (size_t)q->depth * q->buf_size;
		m = mmap(NULL, q->bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			 0);
		if (m == MAP_FAILED)
			return -errno;
		q->bufs = m;
	} else {
		q->zero_fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
		if (q->zero_fd < 0)
			return -errno;
		q->small_buf = mmap(NULL, UBLK_SMALL_IO, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (q->small_buf == MAP_FAILED)
			return -errno;
	}
	int r = ublk_ring_init(&q->ring, (unsigned)q->depth,
			       IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
				       IORING_SETUP_DEFER_TASKRUN);
	if (r)
		return r;
	q->ring_ok = 1;
	if (q->zero_copy) {
		/* the table the kernel registers each request's pages in (index = tag) */
		r = io_uring_register_buffers_sparse(&q->ring, (unsigned)q->depth);
		if (r)
			return r;
	}
	for (int t = 0; t < q->depth; t++) {
		r = queue_cmd(q, UBLK_NR_IO_FETCH_REQ, t, -1);
		if (r)
			return r;
	}
	r = io_uring_submit(&q->ring);
	if (r < 0)
		return r;
	if (r != q->depth)
		return -EIO;
	return 0;
}

/* Answers a request (COMMIT_AND_FETCH re-arms its tag). */
static void commit(struct ublk_queue *q, int tag, int res)
{
	if (queue_cmd(q, UBLK_NR_IO_COMMIT_AND_FETCH_REQ, tag, res))
		q->err = -EBUSY;
	if (q->stopping && !q->gone[tag]) {
		q->gone[tag] = 1;
		q->live--;
	}
}

/* Finishes and commits every asynchronous request whose transfer has completed. */
static void finish_done(struct ublk_queue *q)
{
	while (q->done_count) {
		struct ublk_cqe ev = q->done[q->done_head];
		q->done_head = (q->done_head + 1) % q->depth;
		q->done_count--;
		int tag = (int)ev.user_data;
		q->async_inflight--;
		commit(q, tag, q->finish(q->ctx, q, tag, &q->iods[tag], ev.res));
	}
}

/* Waits until every asynchronous request of this queue is finished. */
static void drain_async(struct ublk_queue *q)
{
	while (q->async_inflight > 0) {
		if (!q->done_count) {
			int r = io_uring_submit_and_wait(&q->ring, 1);
			if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
				usleep(1000); /* unexpected: retry without spinning */
			reap(q);
		}
		finish_done(q);
	}
}

/* Starts a request: asynchronously when `start` takes it, else served here. */
static int begin(struct ublk_queue *q, int tag)
{
	for (;;) {
		int res = q->start ? q->start(q->ctx, q, tag, &q->iods[tag]) : 0;
		if (res == 0)
			res = serve(q, tag);
		if (res != UBLK_IO_RETRY)
			return res;
		if (q->async_inflight)
			drain_async(q);
		else
			usleep(100); /* waits for another queue's transfers (see ploop.h, PL_BUSY) */
	}
}

static void *queue_main(void *arg)
{
	struct ublk_queue *q = arg;
	char name[16];
	snprintf(name, sizeof(name), "ublk-q%d", q->qid);
	pthread_setname_np(pthread_self(), name);
	/* This thread writes the backing files on behalf of the block device: without IO_FLUSHER
	 * it could be throttled for dirty pages (or reclaim could recurse into I/O) that only this
	 * thread can clean, and the device would deadlock under memory pressure. */
	prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);
	if (q->has_affinity) /* best effort: a restricted cpuset may refuse it */
		pthread_setaffinity_np(pthread_self(), sizeof(q->affinity), &q->affinity);

	int r = queue_setup(q);
	if (r) {
		set_armed(q, r);
		return NULL;
	}
	set_armed(q, 1);

	/*
	 * A tag is ours until the kernel aborts its fetch (STOP_DEV, QUIESCE_DEV). The kernel
	 * sweeps the idle fetches once; a fetch re-armed by a commit that reaches it after the
	 * sweep is never aborted (it is cancelled when the ring goes), and whether a commit queued
	 * before we saw the first abort got there in time cannot be known here. So once aborts
	 * have begun the thread leaves as soon as nothing of its own is in progress: no request
	 * being served or waiting to be, no transfer in flight. By then no new request can come
	 * (the kernel holds or requeues them), and one dispatched before the sweep that is still on
	 * its way is requeued by the kernel when the ring goes, and served again after recovery.
	 * Waiting for every tag's abort instead hung a graceful hand-over under writes.
	 */
	q->live = q->depth;
	q->err = 0;
	while (q->live > 0) {
		if (q->aborted && !q->bl_count && !q->done_count && !q->async_inflight)
			break;
		if (!q->bl_count && !q->done_count) {
			r = io_uring_submit_and_wait(&q->ring, 1);
			if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
				q->err = r;
				break;
			}
			reap(q);
		}
		finish_done(q);
		/* The handler may wait for transfers, which adds to the backlog as it goes. */
		while (q->bl_count) {
			struct ublk_cqe ev = q->backlog[q->bl_head];
			q->bl_head = (q->bl_head + 1) % q->depth;
			q->bl_count--;
			int tag = (int)ev.user_data;
			if (tag < 0 || tag >= q->depth)
				continue;
			if (ev.res == UBLK_IO_RES_OK) {
				int res = begin(q, tag);
				if (res == UBLK_IO_ASYNC)
					q->async_inflight++;
				else
					commit(q, tag, res);
			} else {
				/* -ENODEV: aborted by STOP_DEV/QUIESCE_DEV; anything else is a protocol
				 * error for this tag. Either way the tag is no longer ours. */
				if (ev.res != UBLK_IO_RES_ABORT && !q->err)
					q->err = ev.res;
				q->stopping = 1;
				if (!q->gone[tag]) {
					q->gone[tag] = 1;
					q->live--;
				}
			}
		}
	}
	/* Commits queued in the last round still have to reach the kernel. */
	io_uring_submit(&q->ring);
	pthread_mutex_lock(&q->mtx);
	q->exited = 1;
	q->exit_error = q->err;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mtx);
	return NULL;
}

int ublk_queue_start(struct ublk_queue *q)
{
	pthread_mutex_init(&q->mtx, NULL);
	pthread_cond_init(&q->cv, NULL);
	q->armed = 0;
	q->exited = 0;
	q->iods = MAP_FAILED;
	q->bufs = MAP_FAILED;
	q->zero_fd = -1;
	q->small_buf = MAP_FAILED;
	q->backlog = NULL;
	q->bl_head = q->bl_count = 0;
	q->done = NULL;
	q->done_head = q->done_count = 0;
	q->tags = NULL;
	q->gone = NULL;
	q->async_inflight = 0;
	q->stopping = 0;
	q->aborted = 0;
	int r = pthread_create(&q->thread, NULL, queue_main, q);
	if (r)
		return -r;
	q->thread_started = 1;
	pthread_mutex_lock(&q->mtx);
	while (!q->armed)
		pthread_cond_wait(&q->cv, &q->mtx);
	r = q->armed < 0 ? q->armed : 0;
	pthread_mutex_unlock(&q->mtx);
	if (r) {
		/* setup failed before any tag was armed: the thread has returned */
		pthread_join(q->thread, NULL);
		q->thread_started = 0;
	}
	return r;
}

void ublk_queue_join(struct ublk_queue *q)
{
	if (q->thread_started) {
		pthread_join(q->thread, NULL);
		q->thread_started = 0;
	}
	if (q->ring_ok) {
		io_uring_queue_exit(&q->ring);
		q->ring_ok = 0;
	}
	if (q->iods != MAP_FAILED && q->iods) {
		munmap(q->iods, q->iods_len);
		q->iods = MAP_FAILED;
	}
	if (q->bufs != MAP_FAILED && q->bufs) {
		munmap(q->bufs, q->bufs_len);
		q->bufs = MAP_FAILED;
	}
	if (q->zero_fd >= 0) {
		close(q->zero_fd);
		q->zero_fd = -1;
	}
	if (q->small_buf != MAP_FAILED && q->small_buf) {
		munmap(q->small_buf, UBLK_SMALL_IO);
		q->small_buf = MAP_FAILED;
	}
	free(q->backlog);
	q->backlog = NULL;
	free(q->done);
	q->done = NULL;
	free(q->tags);
	q->tags = NULL;
	free(q->gone);
	q->gone = NULL;
}
