#define _GNU_SOURCE
#include "queue.h"

#include <errno.h>
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

static int queue_cmd(struct ublk_queue *q, unsigned nr, int tag, int result)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	if (!sqe) {
		io_uring_submit(&q->ring);
		sqe = io_uring_get_sqe(&q->ring);
		if (!sqe)
			return -EBUSY;
	}
	struct ublk_io_cmd c;
	memset(&c, 0, sizeof(c));
	c.q_id = (uint16_t)q->qid;
	c.tag = (uint16_t)tag;
	c.result = result;
	c.addr = (uint64_t)(uintptr_t)(q->bufs + (size_t)tag * q->buf_size);
	memset(sqe, 0, 128);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = q->cfd;
	sqe->off = ublk_io_op(nr); /* cmd_op */
	memcpy((char *)sqe + 48, &c, sizeof(c));
	sqe->user_data = (uint64_t)tag;
	return 0;
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
	q->bufs_len = (size_t)q->depth * q->buf_size;
	m = mmap(NULL, q->bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return -errno;
	q->bufs = m;
	int r = ublk_ring_init(&q->ring, (unsigned)q->depth,
			       IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
				       IORING_SETUP_DEFER_TASKRUN);
	if (r)
		return r;
	q->ring_ok = 1;
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
	 * A tag is ours until the kernel aborts its fetch (STOP_DEV, QUIESCE_DEV). Once aborts
	 * begin, the kernel has swept the idle fetches; a request still being served here is
	 * committed, but the fetch that commit re-arms is not swept again (it is cancelled when
	 * the ring goes), so such a tag counts as gone once committed. Waiting for its abort
	 * would keep the thread (and a graceful hand-over) waiting forever.
	 */
	uint8_t *gone = calloc((size_t)q->depth, 1);
	int live = q->depth;
	int stopping = 0;
	int err = gone ? 0 : -ENOMEM;
	while (live > 0 && gone) {
		r = io_uring_submit_and_wait(&q->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
			err = r;
			break;
		}
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&q->ring, head, cqe)
		{
			int tag = (int)cqe->user_data;
			n++;
			if (tag < 0 || tag >= q->depth)
				continue;
			if (cqe->res == UBLK_IO_RES_OK) {
				int res = q->handler(q->ctx, q->qid, &q->iods[tag],
						     q->bufs + (size_t)tag * q->buf_size);
				if (queue_cmd(q, UBLK_NR_IO_COMMIT_AND_FETCH_REQ, tag, res))
					err = -EBUSY;
				if (stopping && !gone[tag]) {
					gone[tag] = 1;
					live--;
				}
			} else {
				/* -ENODEV: aborted by STOP_DEV/QUIESCE_DEV; anything else is a protocol
				 * error for this tag. Either way the tag is no longer ours. */
				if (cqe->res != UBLK_IO_RES_ABORT && !err)
					err = cqe->res;
				stopping = 1;
				if (!gone[tag]) {
					gone[tag] = 1;
					live--;
				}
			}
		}
		io_uring_cq_advance(&q->ring, n);
	}
	/* Commits queued in the last round still have to reach the kernel. */
	io_uring_submit(&q->ring);
	free(gone);
	pthread_mutex_lock(&q->mtx);
	q->exited = 1;
	q->exit_error = err;
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
}
