/*
 * One ublk hardware queue: a dedicated thread with its own SQE128 io_uring that FETCHes every
 * tag, serves each request through the handler and answers with COMMIT_AND_FETCH_REQ (which
 * completes the request and re-arms the tag). A -ENODEV completion means the queue is being
 * stopped or quiesced: that tag is not re-armed and the thread leaves when all tags are gone.
 */
#ifndef PLOOP_UBLK_QUEUE_H
#define PLOOP_UBLK_QUEUE_H

#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>

#include "uapi.h"

/* Serves one request; returns bytes transferred (READ/WRITE), 0, or -errno. */
typedef int (*ublk_io_handler)(void *ctx, int qid, const struct ublk_io_desc *iod, uint8_t *buf);

struct ublk_queue {
	int qid;
	int depth;
	int cfd;
	uint32_t buf_size; /* per tag (max_io_buf_bytes) */
	ublk_io_handler handler;
	void *ctx;
	cpu_set_t affinity; /* CPUs blk-mq maps to this queue (GET_QUEUE_AFFINITY) */
	int has_affinity;

	struct ublk_io_desc *iods;
	size_t iods_len;
	uint8_t *bufs;
	size_t bufs_len;
	struct io_uring ring;
	int ring_ok;
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
/* Waits for the thread to leave (after STOP_DEV / QUIESCE_DEV aborted its tags) and frees the
 * ring, the descriptor mapping and the buffers. */
void ublk_queue_join(struct ublk_queue *q);

#endif
