#define _GNU_SOURCE
#include "device.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "ctrl.h"

static pthread_mutex_t table_mtx = PTHREAD_MUTEX_INITIALIZER;
static struct ublk_device *table;

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* ---- request path ---------------------------------------------------------------------- */

/*
 * Enters the gate for one request of queue q; NULL when the device is paused and q has
 * requests in flight: they hold the gate, so waiting here would wait for ourselves (the queue
 * finishes them and asks again).
 */
static struct pl_chain *gate_enter(struct ublk_device *d, const struct ublk_queue *q)
{
	pthread_mutex_lock(&d->gate_mtx);
	if (d->paused && q && q->async_inflight > 0) {
		pthread_mutex_unlock(&d->gate_mtx);
		return NULL;
	}
	while (d->paused)
		pthread_cond_wait(&d->gate_cv, &d->gate_mtx);
	d->active++;
	struct pl_chain *c = d->chain;
	pthread_mutex_unlock(&d->gate_mtx);
	return c;
}

static void gate_leave(struct ublk_device *d)
{
	pthread_mutex_lock(&d->gate_mtx);
	if (--d->active == 0)
		pthread_cond_broadcast(&d->gate_cv);
	pthread_mutex_unlock(&d->gate_mtx);
}

/* Zero copy: the request's data is moved by the queue, on its ring. */
struct zc_req {
	struct ublk_queue *q;
	int tag;
};

static int zc_xfer(void *arg, int write, int fd, uint64_t off, uint32_t boff, uint32_t len)
{
	struct zc_req *z = arg;
	return ublk_queue_xfer(z->q, z->tag, write, fd, off, boff, len);
}

static int zc_zero(void *arg, uint32_t boff, uint32_t len)
{
	struct zc_req *z = arg;
	return ublk_queue_zero(z->q, z->tag, boff, len);
}

static int handle_io(void *ctx, struct ublk_queue *q, int tag, const struct ublk_io_desc *iod,
		     uint8_t *buf)
{
	struct ublk_device *d = ctx;
	struct zc_req z = { q, tag };
	struct pl_data data = { buf, zc_xfer, zc_zero, &z };
	unsigned op = iod->op_flags & 0xff;
	uint64_t off = iod->start_sector << 9;
	uint64_t len = (uint64_t)iod->nr_sectors << 9;
	uint64_t t0 = pl_now_ns();
	int sop, r;

	struct pl_chain *c = gate_enter(d, q);
	if (!c)
		return UBLK_IO_RETRY;
	if (d->debug_delay_ms && (op == UBLK_IO_OP_WRITE || op == UBLK_IO_OP_FLUSH))
		sleep_ms(d->debug_delay_ms);
	switch (op) {
	case UBLK_IO_OP_READ:
		sop = PL_OP_READ;
		r = pl_read_via(c, &data, off, len);
		if (!r)
			r = (int)len;
		break;
	case UBLK_IO_OP_WRITE:
		sop = PL_OP_WRITE;
		r = pl_write_via(c, &data, off, len, !!(iod->op_flags & UBLK_IO_F_FUA));
		if (!r)
			r = (int)len;
		break;
	case UBLK_IO_OP_FLUSH:
		sop = PL_OP_FLUSH;
		r = pl_flush(c);
		break;
	case UBLK_IO_OP_DISCARD:
		sop = PL_OP_DISCARD;
		r = pl_discard(c, off, len);
		break;
	case UBLK_IO_OP_WRITE_ZEROES:
		sop = PL_OP_WRITE_ZEROES;
		r = pl_write_zeroes(c, off, len, !!(iod->op_flags & UBLK_IO_F_NOUNMAP));
		break;
	default:
		sop = PL_OP_OTHER;
		r = -EOPNOTSUPP;
	}
	gate_leave(d);
	if (r == PL_BUSY)
		return UBLK_IO_RETRY; /* reserved clusters in flight: once they are written */
	pl_stats_record(&d->stats, sop, len, r < 0, pl_now_ns() - t0);
	return r;
}

/*
 * A READ from one contiguous extent of one file (pl_plan_read) is one transfer on the queue's
 * ring, not waited for: the reads of a whole batch of requests go out, and complete, in one
 * system call. A large one (over UBLK_SMALL_IO) goes through the file's O_DIRECT twin where it
 * has one: the file system on the device caches what it reads itself, so the image's page cache
 * only held a second copy, and filling it cost the most where it was needed least: large reads
 * in flight side by side look random to the kernel's readahead, which then fills the cache one
 * 4 KiB page at a time (1 MiB reads at depth 8: 2.5-3.5x loop's rate direct, 0.6-1.0 before,
 * in the benchmark VM). The kernel writes dirty pages of the range back before a direct read,
 * so it always sees the latest write. Small writes are not served so: a buffered write through
 * io_uring is handed to a kernel worker thread (always on ext4, about half the time on XFS),
 * and that hop measured no faster than the queue thread's own pwrite (4 KiB random writes the
 * same on ext4, no better on XFS; counted in instructions, 9 % slower on ext4).
 */
static int start_read(struct ublk_device *d, struct ublk_queue *q, int tag, struct pl_chain *c,
		      uint64_t off, uint32_t len)
{
	int fd;
	uint64_t host;
	if (!pl_plan_read(c, off, len, &fd, &host) || (fd < 0 && !q->zero_copy))
		return 0;
	int dfd = d->direct_read && len > UBLK_SMALL_IO ? pl_direct_fd(c, fd, host, len) : -1;
	return ublk_queue_start_read(q, tag, dfd >= 0 ? dfd : fd, host, len);
}

/*
 * A large WRITE in zero copy (over UBLK_SMALL_IO, without FUA) into one extent the top maps, or
 * onto whole clusters mapped nowhere (pl_plan_write), is one transfer not waited for as well:
 * it goes to a kernel worker thread either way (ext4 has no buffered write that cannot block),
 * and waiting for each in turn cost the queue a wake-up for every request arriving meanwhile,
 * while the writes in flight now follow each other in the worker. Small writes stay with the
 * queue thread's own pwrite (see above).
 */
static int start_write(struct ublk_queue *q, int tag, struct pl_chain *c, uint64_t off,
		       uint32_t len)
{
	int fd, plan = 0, r = 0;
	uint64_t host = 0;
	/* Room first: reserved clusters must be written. */
	if (ublk_queue_room(q))
		plan = pl_plan_write(c, q, off, len, &fd, &host);
	if (plan)
		r = ublk_queue_start_write(q, tag, fd, host, len, plan == PL_PLAN_ALLOC);
	if (r != UBLK_IO_ASYNC && plan == PL_PLAN_ALLOC)
		pl_finish_alloc(c, off, len, host, 0);
	q->tags[tag].host = host;
	q->tags[tag].kind = plan;
	return r;
}

static int start_io(void *ctx, struct ublk_queue *q, int tag, const struct ublk_io_desc *iod)
{
	struct ublk_device *d = ctx;
	unsigned op = iod->op_flags & 0xff;
	uint64_t off = iod->start_sector << 9;
	uint32_t len = iod->nr_sectors << 9;
	int write = op == UBLK_IO_OP_WRITE && q->zero_copy && !(iod->op_flags & UBLK_IO_F_FUA) &&
		    len > UBLK_SMALL_IO;
	if (d->debug_delay_ms || (op != UBLK_IO_OP_READ && !write))
		return 0;
	uint64_t t0 = pl_now_ns();
	struct pl_chain *c = gate_enter(d, q);
	if (!c)
		return UBLK_IO_RETRY;
	int r = write ? start_write(q, tag, c, off, len) : start_read(d, q, tag, c, off, len);
	if (r != UBLK_IO_ASYNC) {
		gate_leave(d);
		return 0; /* served by handle_io */
	}
	q->tags[tag].p = c;
	q->tags[tag].t0 = t0;
	pl_stats_add(write ? &d->stats.async_writes : &d->stats.async_reads, 1);
	return r;
}

static int finish_io(void *ctx, struct ublk_queue *q, int tag, const struct ublk_io_desc *iod,
		     int res)
{
	struct ublk_device *d = ctx;
	struct pl_chain *c = q->tags[tag].p;
	uint64_t off = iod->start_sector << 9;
	uint32_t len = iod->nr_sectors << 9;
	if ((iod->op_flags & 0xff) == UBLK_IO_OP_WRITE) {
		uint64_t host = q->tags[tag].host;
		if (res >= 0 && (uint32_t)res < len) /* short: the rest, waited for */
			res = ublk_queue_xfer(q, tag, 1, c->d[c->ndeltas - 1].fd, host + (uint32_t)res,
					      (uint32_t)res, len - (uint32_t)res);
		else if (res > 0)
			res = 0;
		if (q->tags[tag].kind == PL_PLAN_ALLOC) {
			int r = pl_finish_alloc(c, off, len, host, res == 0);
			if (!res)
				res = r;
		}
		if (!res)
			res = (int)len;
		gate_leave(d);
		pl_stats_record(&d->stats, PL_OP_WRITE, len, res < 0, pl_now_ns() - q->tags[tag].t0);
		return res;
	}
	if ((res >= 0 && (uint32_t)res != len) || res == -EINVAL) {
		/* Short (a read past the end of the file), or refused (direct I/O the file system
		 * will not do at this alignment): the whole request again, buffered. */
		struct zc_req z = { q, tag };
		struct pl_data data = { ublk_queue_buf(q, tag), zc_xfer, zc_zero, &z };
		res = pl_read_via(c, &data, off, len);
		if (!res)
			res = (int)len;
	}
	gate_leave(d);
	pl_stats_record(&d->stats, PL_OP_READ, len, res < 0, pl_now_ns() - q->tags[tag].t0);
	return res;
}

/* ---- table ----------------------------------------------------------------------------- */

struct ublk_device *dev_alloc(void)
{
	struct ublk_device *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->cfd = -1;
	d->id = UBLK_DEV_ID_ANY;
	pthread_mutex_init(&d->op_mtx, NULL);
	pthread_mutex_init(&d->gate_mtx, NULL);
	pthread_cond_init(&d->gate_cv, NULL);
	return d;
}

static void dev_destroy(struct ublk_device *d)
{
	for (int i = 0; i < d->nq; i++)
		ublk_queue_join(&d->q[i]);
	free(d->q);
	if (d->cfd >= 0)
		close(d->cfd);
	pl_chain_close(d->chain);
	pthread_mutex_destroy(&d->op_mtx);
	pthread_mutex_destroy(&d->gate_mtx);
	pthread_cond_destroy(&d->gate_cv);
	free(d);
}

void dev_free_unattached(struct ublk_device *d)
{
	if (d)
		dev_destroy(d);
}

static void table_add(struct ublk_device *d)
{
	pthread_mutex_lock(&table_mtx);
	d->refs = 1;
	d->next = table;
	table = d;
	pthread_mutex_unlock(&table_mtx);
}

/* Drops the device from the table and releases the table's reference. */
static void table_remove(struct ublk_device *d)
{
	pthread_mutex_lock(&table_mtx);
	if (!d->removed) {
		for (struct ublk_device **p = &table; *p; p = &(*p)->next) {
			if (*p == d) {
				*p = d->next;
				break;
			}
		}
		d->removed = 1;
		d->refs--;
	}
	int last = d->refs == 0;
	pthread_mutex_unlock(&table_mtx);
	if (last)
		dev_destroy(d);
}

struct ublk_device *dev_get(uint32_t id)
{
	pthread_mutex_lock(&table_mtx);
	struct ublk_device *d = table;
	while (d && d->id != id)
		d = d->next;
	if (d)
		d->refs++;
	pthread_mutex_unlock(&table_mtx);
	return d;
}

void dev_put(struct ublk_device *d)
{
	pthread_mutex_lock(&table_mtx);
	int last = --d->refs == 0;
	pthread_mutex_unlock(&table_mtx);
	if (last)
		dev_destroy(d);
}

int dev_list(uint32_t *ids, int max)
{
	int n = 0;
	pthread_mutex_lock(&table_mtx);
	for (struct ublk_device *d = table; d && n < max; d = d->next)
		ids[n++] = d->id;
	pthread_mutex_unlock(&table_mtx);
	return n;
}

/* ---- lifecycle ------------------------------------------------------------------------- */

static int open_cdev(uint32_t id)
{
	char path[64];
	snprintf(path, sizeof(path), "/dev/ublkc%u", id);
	for (int i = 0; i < 500; i++) {
		int fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd >= 0)
			return fd;
		if (errno != ENOENT)
			return -errno;
		sleep_ms(10); /* devtmpfs/udev may lag behind ADD_DEV */
	}
	return -ENOENT;
}

/* Starts every queue (they FETCH all tags); on failure stops the ones already running. */
static int start_queues(struct ublk_device *d)
{
	d->nq = d->info.nr_hw_queues;
	d->q = calloc((size_t)d->nq, sizeof(*d->q));
	if (!d->q)
		return -ENOMEM;
	for (int i = 0; i < d->nq; i++) {
		struct ublk_queue *q = &d->q[i];
		q->qid = i;
		q->depth = d->info.queue_depth;
		q->cfd = d->cfd;
		q->buf_size = d->info.max_io_buf_bytes;
		q->zero_copy = (d->info.flags & (UBLK_F_AUTO_BUF_REG | UBLK_F_USER_COPY)) ==
			       (UBLK_F_AUTO_BUF_REG | UBLK_F_USER_COPY);
		q->handler = handle_io;
		q->start = start_io;
		q->finish = finish_io;
		q->ctx = d;
		CPU_ZERO(&q->affinity);
		q->has_affinity = ublk_ctrl_cmd(UBLK_NR_GET_QUEUE_AFFINITY, d->id, (uint64_t)i,
						&q->affinity, sizeof(q->affinity)) >= 0 &&
				  CPU_COUNT(&q->affinity) > 0;
		int r = ublk_queue_start(q);
		if (r)
			return r;
	}
	return 0;
}

/* Undo after a failed start: abort armed fetches, join, release the char device. */
static void abort_start(struct ublk_device *d, int stop)
{
	if (stop)
		ublk_ctrl_cmd(UBLK_NR_STOP_DEV, d->id, 0, NULL, 0);
	for (int i = 0; i < d->nq; i++)
		ublk_queue_join(&d->q[i]);
	free(d->q);
	d->q = NULL;
	d->nq = 0;
	if (d->cfd >= 0) {
		close(d->cfd);
		d->cfd = -1;
	}
}

int dev_create(struct ublk_device *d, const struct dev_config *cfg, struct pl_chain *chain,
	       char *err, size_t errlen)
{
	/* zero copy for large requests, USER_COPY for small ones (queue.c says why) */
	const uint64_t zc_flags = UBLK_F_AUTO_BUF_REG | UBLK_F_USER_COPY;
	int zero_copy = cfg->zero_copy && (ublk_ctrl_features() & zc_flags) == zc_flags;
	struct ublk_dev_info info;
	int r;
	for (;;) {
		memset(&info, 0, sizeof(info));
		info.nr_hw_queues = cfg->queues;
		info.queue_depth = cfg->depth;
		/* Zero copy needs no buffer per tag, so requests may be as large as a whole cluster
		 * (a sequential writer then allocates whole clusters, without zero padding). */
		info.max_io_buf_bytes =
			cfg->max_io_bytes ? cfg->max_io_bytes
			: zero_copy	  ? (cfg->cluster > (512u << 10) ? (1u << 20) : (512u << 10))
					  : (512u << 10);
		info.dev_id = cfg->dev_id;
		info.flags = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE |
			     (ublk_ctrl_ioctl_encode() ? UBLK_F_CMD_IOCTL_ENCODE : 0) |
			     (ublk_ctrl_features() & UBLK_F_QUIESCE) | (zero_copy ? zc_flags : 0);
		r = ublk_ctrl_cmd(UBLK_NR_ADD_DEV, info.dev_id, 0, &info, sizeof(info));
		if (r < 0 && zero_copy) {
			zero_copy = 0; /* refused in this combination: copy mode */
			continue;
		}
		if (r < 0) {
			snprintf(err, errlen, "ADD_DEV: %s", strerror(-r));
			return r;
		}
		/* Only the pair works (a lone USER_COPY would leave the tag buffers unfilled). */
		if ((info.flags & zc_flags) == 0 || (info.flags & zc_flags) == zc_flags)
			break;
		ublk_ctrl_cmd(UBLK_NR_DEL_DEV, info.dev_id, 0, NULL, 0);
		if (!zero_copy) {
			snprintf(err, errlen, "ADD_DEV granted flags 0x%llx that were not asked for",
				 (unsigned long long)info.flags);
			return -EPROTO;
		}
		zero_copy = 0;
	}
	d->id = info.dev_id;
	d->info = info; /* trust only what the kernel returned */
	d->debug_delay_ms = cfg->debug_delay_ms;
	d->direct_read = cfg->direct_read;

	struct ublk_params_head p;
	memset(&p, 0, sizeof(p));
	p.len = sizeof(p);
	p.types = UBLK_PARAM_TYPE_BASIC;
	p.basic.attrs = UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA;
	if (cfg->read_only)
		p.basic.attrs |= UBLK_ATTR_READ_ONLY;
	p.basic.logical_bs_shift = 9;
	p.basic.physical_bs_shift = 12;
	p.basic.io_min_shift = 12;
	p.basic.io_opt_shift = (uint8_t)__builtin_ctz(cfg->cluster);
	p.basic.max_sectors = info.max_io_buf_bytes >> 9;
	p.basic.dev_sectors = cfg->size >> 9;
	if (!cfg->read_only) {
		uint32_t cs = cfg->cluster >> 9;
		p.types |= UBLK_PARAM_TYPE_DISCARD;
		p.discard.discard_granularity = cfg->cluster;
		p.discard.max_discard_sectors = (0xffffffffU >> 9) / cs * cs;
		p.discard.max_write_zeroes_sectors = (0xffffffffU >> 9) / cs * cs;
		p.discard.max_discard_segments = 1;
	}
	r = ublk_ctrl_cmd(UBLK_NR_SET_PARAMS, d->id, 0, &p, sizeof(p));
	if (r < 0) {
		snprintf(err, errlen, "SET_PARAMS: %s", strerror(-r));
		goto del;
	}
	r = open_cdev(d->id);
	if (r < 0) {
		snprintf(err, errlen, "open /dev/ublkc%u: %s", d->id, strerror(-r));
		goto del;
	}
	d->cfd = r;
	d->chain = chain;
	r = start_queues(d);
	if (r) {
		snprintf(err, errlen, "queue setup: %s", strerror(-r));
		abort_start(d, 1);
		goto del;
	}
	r = ublk_ctrl_cmd(UBLK_NR_START_DEV, d->id, (uint64_t)getpid(), NULL, 0);
	if (r < 0) {
		snprintf(err, errlen, "START_DEV: %s", strerror(-r));
		abort_start(d, 1);
		goto del;
	}
	d->running = 1;
	table_add(d);
	return 0;
del:
	d->chain = NULL; /* stays the caller's */
	ublk_ctrl_cmd(UBLK_NR_DEL_DEV, d->id, 0, NULL, 0);
	return r;
}

int dev_recover(struct ublk_device *d, uint32_t dev_id, struct pl_chain *chain,
		const struct dev_config *cfg, char *err, size_t errlen)
{
	struct ublk_dev_info info;
	int r = ublk_get_info(dev_id, &info);
	if (r < 0) {
		snprintf(err, errlen, "GET_DEV_INFO %u: %s", dev_id, strerror(-r));
		return r;
	}
	if (!(info.flags & UBLK_F_USER_RECOVERY)) {
		snprintf(err, errlen, "device %u was created without user recovery", dev_id);
		return -EINVAL;
	}
	struct pl_chain *existing = NULL;
	struct ublk_device *other = dev_get(dev_id);
	if (other) {
		existing = other->chain;
		dev_put(other);
	}
	if (existing) {
		snprintf(err, errlen, "device %u is served by this process", dev_id);
		return -EBUSY;
	}
	/* -EBUSY while the old server's char device is still referenced (exiting process). */
	unsigned waited = 0, step = 20;
	for (;;) {
		r = ublk_ctrl_cmd(UBLK_NR_START_USER_RECOVERY, dev_id, 0, NULL, 0);
		if (r != -EBUSY || waited >= 30000)
			break;
		sleep_ms(step);
		waited += step;
		if (step < 200)
			step *= 2;
	}
	if (r < 0) {
		snprintf(err, errlen, "START_USER_RECOVERY: %s (after %u ms)", strerror(-r), waited);
		return r;
	}
	r = ublk_get_info(dev_id, &info);
	if (r < 0) {
		snprintf(err, errlen, "GET_DEV_INFO %u: %s", dev_id, strerror(-r));
		return r;
	}
	d->id = dev_id;
	d->info = info;
	d->debug_delay_ms = cfg->debug_delay_ms;
	d->direct_read = cfg->direct_read;
	r = open_cdev(dev_id);
	if (r < 0) {
		snprintf(err, errlen, "open /dev/ublkc%u: %s", dev_id, strerror(-r));
		return r;
	}
	d->cfd = r;
	d->chain = chain;
	r = start_queues(d);
	if (r) {
		snprintf(err, errlen, "queue setup: %s", strerror(-r));
		abort_start(d, 0);
		d->chain = NULL;
		return r;
	}
	r = ublk_ctrl_cmd(UBLK_NR_END_USER_RECOVERY, dev_id, (uint64_t)getpid(), NULL, 0);
	if (r < 0) {
		snprintf(err, errlen, "END_USER_RECOVERY: %s", strerror(-r));
		abort_start(d, 0);
		d->chain = NULL;
		return r;
	}
	d->running = 1;
	table_add(d);
	return 0;
}

static void unpause(struct ublk_device *d)
{
	pthread_mutex_lock(&d->gate_mtx);
	d->paused = 0;
	pthread_cond_broadcast(&d->gate_cv);
	pthread_mutex_unlock(&d->gate_mtx);
}

static int join_queues(struct ublk_device *d)
{
	int err = 0;
	for (int i = 0; i < d->nq; i++) {
		ublk_queue_join(&d->q[i]);
		if (d->q[i].exit_error && !err)
			err = d->q[i].exit_error;
	}
	d->running = 0;
	return err;
}

static int stop_locked(struct ublk_device *d, int only_if_unused)
{
	if (!d->running)
		return 0;
	if (only_if_unused && !(d->info.flags & UBLK_F_SAFE_STOP_DEV))
		return -EOPNOTSUPP;
	unpause(d); /* a paused queue thread would never see the abort */
	int r = ublk_ctrl_cmd(only_if_unused ? UBLK_NR_TRY_STOP_DEV : UBLK_NR_STOP_DEV, d->id, 0,
			      NULL, 0);
	if (r < 0 && r != -ENODEV)
		return r;
	join_queues(d);
	int f = pl_flush(d->chain);
	return f < 0 ? f : 0;
}

int dev_stop(struct ublk_device *d, int only_if_unused)
{
	pthread_mutex_lock(&d->op_mtx);
	int r = stop_locked(d, only_if_unused);
	pthread_mutex_unlock(&d->op_mtx);
	return r;
}

int dev_delete(struct ublk_device *d)
{
	pthread_mutex_lock(&d->op_mtx);
	int r = stop_locked(d, 0);
	if (r < 0) {
		pthread_mutex_unlock(&d->op_mtx);
		return r;
	}
	/* DEL_DEV waits until nothing references the char device: release ours first. */
	for (int i = 0; i < d->nq; i++)
		ublk_queue_join(&d->q[i]);
	if (d->cfd >= 0) {
		close(d->cfd);
		d->cfd = -1;
	}
	r = ublk_ctrl_cmd(UBLK_NR_DEL_DEV, d->id, 0, NULL, 0);
	pthread_mutex_unlock(&d->op_mtx);
	if (r < 0 && r != -ENODEV)
		return r;
	table_remove(d);
	return 0;
}

int dev_delete_orphan(uint32_t id)
{
	int r = ublk_ctrl_cmd(UBLK_NR_STOP_DEV, id, 0, NULL, 0);
	if (r < 0 && r != -ENODEV)
		return r;
	return ublk_ctrl_cmd(UBLK_NR_DEL_DEV, id, 0, NULL, 0);
}

int dev_quiesce(struct ublk_device *d, uint32_t timeout_ms)
{
	pthread_mutex_lock(&d->op_mtx);
	if (!(d->info.flags & UBLK_F_QUIESCE)) {
		pthread_mutex_unlock(&d->op_mtx);
		return -EOPNOTSUPP;
	}
	if (!d->running) {
		pthread_mutex_unlock(&d->op_mtx);
		return -EINVAL;
	}
	unpause(d);
	int r = ublk_ctrl_cmd(UBLK_NR_QUIESCE_DEV, d->id, timeout_ms, NULL, 0);
	if (r < 0) {
		pthread_mutex_unlock(&d->op_mtx);
		return r;
	}
	join_queues(d);
	if (d->cfd >= 0) {
		close(d->cfd);
		d->cfd = -1;
	}
	r = pl_flush(d->chain);
	/*
	 * The kernel marks the device QUIESCED when the char device is released, and fetches
	 * re-armed after its sweep hold it until the closed rings are torn down (in a kernel
	 * worker, soon after): wait for that, so a caller may recover the device at once.
	 */
	int w = -ETIMEDOUT;
	for (int ms = 0; ms < 10000; ms += 5) {
		struct ublk_dev_info info;
		int g = ublk_get_info(d->id, &info);
		if (g < 0 || info.state != UBLK_STATE_LIVE) {
			w = g < 0 ? g : 0;
			break;
		}
		sleep_ms(5);
	}
	pthread_mutex_unlock(&d->op_mtx);
	table_remove(d);
	return r < 0 ? r : w;
}

int dev_pause(struct ublk_device *d)
{
	pthread_mutex_lock(&d->gate_mtx);
	d->paused = 1;
	while (d->active)
		pthread_cond_wait(&d->gate_cv, &d->gate_mtx);
	struct pl_chain *c = d->chain;
	pthread_mutex_unlock(&d->gate_mtx);
	return pl_flush(c);
}

int dev_resume(struct ublk_device *d, struct pl_chain *new_chain)
{
	struct pl_chain *old = NULL;
	pthread_mutex_lock(&d->gate_mtx);
	if (new_chain) {
		if (!d->paused || d->active) {
			pthread_mutex_unlock(&d->gate_mtx);
			return -EINVAL; /* swapping needs a paused device */
		}
		old = d->chain;
		d->chain = new_chain;
		d->chain_gen++;
	}
	d->paused = 0;
	pthread_cond_broadcast(&d->gate_cv);
	pthread_mutex_unlock(&d->gate_mtx);
	pl_chain_close(old);
	return 0;
}

int dev_flush(struct ublk_device *d)
{
	struct pl_chain *c = gate_enter(d, NULL);
	int r = pl_flush(c);
	gate_leave(d);
	return r;
}

int dev_update_size(struct ublk_device *d, uint64_t bytes)
{
	pthread_mutex_lock(&d->op_mtx);
	int r = -EINVAL;
	if (d->running) /* before 7.0 UPDATE_SIZE on a device never started dereferences NULL */
		r = ublk_ctrl_cmd(UBLK_NR_UPDATE_SIZE, d->id, bytes >> 9, NULL, 0);
	if (r >= 0) {
		pthread_mutex_lock(&d->gate_mtx); /* informational; must not wait for a paused gate */
		d->chain->size = bytes;
		pthread_mutex_unlock(&d->gate_mtx);
	}
	pthread_mutex_unlock(&d->op_mtx);
	return r < 0 ? r : 0;
}

int64_t dev_merge_lower(struct ublk_device *d, int index)
{
	pthread_mutex_lock(&d->gate_mtx);
	if (d->merging) {
		pthread_mutex_unlock(&d->gate_mtx);
		return -EBUSY;
	}
	d->merging = 1;
	unsigned gen = d->chain_gen;
	pthread_mutex_unlock(&d->gate_mtx);

	/* Writes into the top like a queue thread (see queue.c); the pool thread is restored after. */
	int was_flusher = prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0);
	prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);
	int64_t copied = 0;
	for (uint32_t vc = 0;; vc++) {
		struct pl_chain *c = gate_enter(d, NULL);
		int r;
		if (d->chain_gen != gen)
			r = -ECANCELED;
		else if (vc >= c->d[c->ndeltas - 1].nbat)
			r = -ERANGE; /* done */
		else
			r = pl_merge_cluster(c, index, vc);
		gate_leave(d);
		if (r == -ERANGE)
			break;
		if (r == PL_BUSY) { /* a queue's reserved clusters are in flight: this one again */
			usleep(200);
			vc--;
			continue;
		}
		if (r < 0) {
			copied = r;
			break;
		}
		copied += r;
	}
	if (was_flusher == 0)
		prctl(PR_SET_IO_FLUSHER, 0, 0, 0, 0);
	pthread_mutex_lock(&d->gate_mtx);
	d->merging = 0;
	pthread_mutex_unlock(&d->gate_mtx);
	return copied;
}
