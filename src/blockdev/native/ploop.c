#define _GNU_SOURCE
#include "ploop.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NO_HOST UINT64_MAX
#define HEADER_SIZE 64
#define SECTOR_SHIFT 9

/* ---- plain file I/O -------------------------------------------------------------------- */

/* Reads len bytes at off; bytes past EOF read as zeros. */
static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t r = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0) {
			memset((char *)buf + done, 0, len - done);
			break;
		}
		done += (size_t)r;
	}
	return 0;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t r = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)r;
	}
	return 0;
}

static struct pl_delta *top_of(struct pl_chain *c)
{
	return &c->d[c->ndeltas - 1];
}

static int top_sync(struct pl_chain *c)
{
	pl_stats_add(&c->stats->syncs, 1);
	while (fdatasync(top_of(c)->fd)) {
		if (errno != EINTR)
			return -errno;
	}
	return 0;
}

static int is_zero(const uint8_t *p, size_t n)
{
	size_t i = 0;
	for (; i < n && ((uintptr_t)(p + i) & 7); i++)
		if (p[i])
			return 0;
	for (; i + 8 <= n; i += 8)
		if (*(const uint64_t *)(const void *)(p + i))
			return 0;
	for (; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

/* Writes zeros over [off, off+len) without fallocate. */
static int write_zero_bytes(struct pl_chain *c, uint64_t off, uint64_t len)
{
	while (len) {
		size_t n = len < c->cluster ? (size_t)len : c->cluster;
		int r = pwrite_full(top_of(c)->fd, c->scratch_zero, n, off);
		if (r)
			return r;
		off += n;
		len -= n;
	}
	return 0;
}

/*
 * Makes a cluster of the top read as zeros and keep its space. Real zeros, not ZERO_RANGE or
 * fallocate: an unwritten extent inside a mapped cluster makes ploop check call the image
 * "sparse", and once cached it hides from SEEK_HOLE, so it could not be found again.
 */
static int zero_keep(struct pl_chain *c, uint64_t host)
{
	return write_zero_bytes(c, host, c->cluster);
}


/* ---- mapping --------------------------------------------------------------------------- */

static uint32_t bat_load(const struct pl_delta *d, uint32_t vc)
{
	return vc < d->nbat ? __atomic_load_n(&d->bat[vc], __ATOMIC_ACQUIRE) : 0;
}

static uint64_t entry_to_host(const struct pl_chain *c, const struct pl_delta *d, uint32_t e)
{
	return d->version == 1 ? (uint64_t)e << SECTOR_SHIFT : (uint64_t)e << c->cluster_shift;
}

/* Host byte offset of vc in d, or NO_HOST. */
static uint64_t delta_map(const struct pl_chain *c, const struct pl_delta *d, uint32_t vc)
{
	if (d->version == 0) {
		uint64_t h = (uint64_t)vc << c->cluster_shift;
		return h < d->raw_size ? h : NO_HOST;
	}
	uint32_t e = bat_load(d, vc);
	return e ? entry_to_host(c, d, e) : NO_HOST;
}

/* Topmost delta with index < below that maps vc; -1 if none. */
static int locate(const struct pl_chain *c, uint32_t vc, int below, uint64_t *host)
{
	for (int i = below - 1; i >= 0; i--) {
		uint64_t h = delta_map(c, &c->d[i], vc);
		if (h != NO_HOST) {
			*host = h;
			return i;
		}
	}
	return -1;
}

uint32_t pl_top_entry(struct pl_chain *c, uint32_t vc)
{
	return bat_load(top_of(c), vc);
}

/* Writes BAT slot vc of the top (little-endian u32 at 64 + 4*vc) and publishes it in memory. */
static int set_entry(struct pl_chain *c, uint32_t vc, uint32_t e)
{
	struct pl_delta *top = top_of(c);
	uint8_t b[4] = { (uint8_t)e, (uint8_t)(e >> 8), (uint8_t)(e >> 16), (uint8_t)(e >> 24) };
	int r = pwrite_full(top->fd, b, 4, HEADER_SIZE + 4ULL * vc);
	if (r)
		return r;
	pl_stats_add(&c->stats->bat_writes, 1);
	__atomic_store_n(&top->bat[vc], e, __ATOMIC_RELEASE);
	return 0;
}

static int host_to_entry(struct pl_chain *c, uint64_t host, uint32_t *e)
{
	uint64_t v = top_of(c)->version == 1 ? host >> SECTOR_SHIFT : host >> c->cluster_shift;
	if (v == 0 || v >= 0xffffffffULL)
		return -EFBIG; /* v1 files end at 2 TiB; 0xffffffff is reserved */
	*e = (uint32_t)v;
	return 0;
}

/* ---- sparse clusters ------------------------------------------------------------------- */

static int sparse_test(const struct pl_chain *c, uint32_t vc)
{
	return c->sparse && (__atomic_load_n(&c->sparse[vc >> 3], __ATOMIC_ACQUIRE) >> (vc & 7)) & 1;
}

static void sparse_clear(struct pl_chain *c, uint32_t vc)
{
	if (c->sparse)
		__atomic_fetch_and(&c->sparse[vc >> 3], (uint8_t)~(1u << (vc & 7)), __ATOMIC_RELEASE);
}

static int pending_test(const struct pl_chain *c, uint32_t vc)
{
	return c->pending && (c->pending[vc >> 3] >> (vc & 7)) & 1;
}

static void pending_set(struct pl_chain *c, uint32_t vc, int on)
{
	if (on)
		c->pending[vc >> 3] |= (uint8_t)(1u << (vc & 7));
	else
		c->pending[vc >> 3] &= (uint8_t)~(1u << (vc & 7));
}

/*
 * Marks the top's mapped clusters that hold a hole (or an unwritten extent, which SEEK_HOLE
 * reports the same way), as other writers leave them (QEMU, dm-ploop, older versions of this
 * engine); this engine itself never leaves a mapped cluster sparse.
 * One pass over the file's extents at open; nothing is marked when the file system cannot say.
 */
static int sparse_scan(struct pl_chain *c, struct pl_delta *top, uint64_t fsize)
{
	uint64_t nhost = (fsize + c->cluster - 1) >> c->cluster_shift;
	uint8_t *holes = calloc((size_t)(nhost >> 3) + 1, 1);
	c->sparse = calloc(((size_t)top->nbat >> 3) + 1, 1);
	if (!holes || !c->sparse) {
		free(holes);
		return -ENOMEM;
	}
	off_t pos = (off_t)top->data_off;
	int any = 0;
	while ((uint64_t)pos < fsize) {
		off_t h = lseek(top->fd, pos, SEEK_HOLE);
		if (h < 0 || (uint64_t)h >= fsize)
			break;
		off_t d = lseek(top->fd, h, SEEK_DATA);
		uint64_t end = d < 0 ? fsize : (uint64_t)d;
		uint64_t k = (uint64_t)h >> c->cluster_shift;
		for (; k < nhost && (k << c->cluster_shift) < end; k++) {
			holes[k >> 3] |= (uint8_t)(1u << (k & 7));
			any = 1;
		}
		if (d < 0)
			break;
		pos = d;
	}
	if (any) {
		for (uint32_t vc = 0; vc < top->nbat; vc++) {
			if (!top->bat[vc])
				continue;
			uint64_t k = entry_to_host(c, top, top->bat[vc]) >> c->cluster_shift;
			if (k < nhost && (holes[k >> 3] >> (k & 7)) & 1)
				c->sparse[vc >> 3] |= (uint8_t)(1u << (vc & 7));
		}
	}
	free(holes);
	return 0;
}

enum alloc_fill { FILL_DATA, FILL_ZEROS };

/* Takes the next cluster at the top's end: its offset and BAT entry. Caller holds alloc_mtx. */
static int reserve_cluster(struct pl_chain *c, uint64_t *host, uint32_t *e)
{
	*host = c->next_host;
	int r = host_to_entry(c, *host, e);
	if (!r)
		c->next_host += c->cluster;
	return r;
}

/* Maps vc to a reserved cluster whose data is written: synced first when `durable` (it
 * carries or replaces lower data), then the BAT slot. */
static int map_cluster(struct pl_chain *c, uint32_t vc, uint32_t e, int durable)
{
	int r = durable ? top_sync(c) : 0;
	if (!r)
		sparse_clear(c, vc);
	if (!r)
		r = set_entry(c, vc, e);
	if (r)
		return r;
	pl_stats_add(&c->stats->alloc_clusters, 1);
	if (durable)
		pl_stats_add(&c->stats->cow_clusters, 1);
	return 0;
}

/*
 * Appends a cluster to the top for vc and maps it. Caller holds alloc_mtx and has checked that
 * the top does not map vc. `src` is a whole cluster for FILL_DATA. When `durable` is set the data
 * is synced before the BAT slot is written (it carries data copied from a lower delta).
 */
static int alloc_cluster(struct pl_chain *c, uint32_t vc, enum alloc_fill fill, const uint8_t *src,
			 int durable)
{
	struct pl_delta *top = top_of(c);
	uint64_t host;
	uint32_t e;
	int r = reserve_cluster(c, &host, &e);
	if (r)
		return r;
	switch (fill) {
	case FILL_DATA:
		r = pwrite_full(top->fd, src, c->cluster, host);
		break;
	case FILL_ZEROS:
		r = zero_keep(c, host);
		break;
	}
	return r ? r : map_cluster(c, vc, e, durable);
}

/* ---- chain ----------------------------------------------------------------------------- */

int pl_chain_open(const struct pl_delta_config *cfg, int n, uint32_t cluster, uint64_t size,
		  struct pl_stats *stats, struct pl_chain **out, char *err, size_t errlen)
{
	if (n < 1 || n > PL_MAX_DELTAS) {
		snprintf(err, errlen, "a chain has 1 to %d deltas, got %d", PL_MAX_DELTAS, n);
		return -EINVAL;
	}
	if (cluster < 4096 || (cluster & (cluster - 1)) || cluster > (256U << 20)) {
		snprintf(err, errlen, "cluster size %u is not a power of two >= 4096", cluster);
		return -EINVAL;
	}
	struct pl_chain *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->d = calloc((size_t)n, sizeof(*c->d));
	if (!c->d) {
		free(c);
		return -ENOMEM;
	}
	for (int i = 0; i < n; i++)
		c->d[i].fd = c->d[i].dfd = -1;
	c->ndeltas = n;
	c->cluster = cluster;
	c->cluster_shift = (unsigned)__builtin_ctz(cluster);
	c->size = size;
	c->stats = stats;
	pthread_mutex_init(&c->alloc_mtx, NULL);
	pthread_mutex_init(&c->flush_mtx, NULL);
	c->scratch = MAP_FAILED;
	c->scratch_zero = MAP_FAILED;
	int r = 0;

	for (int i = 0; i < n && !r; i++) {
		const struct pl_delta_config *dc = &cfg[i];
		struct pl_delta *d = &c->d[i];
		if (dc->version < 0 || dc->version > 2 || (dc->version == 0 && i != 0)) {
			snprintf(err, errlen, "delta %d: version %d (a raw delta must be the base)", i,
				 dc->version);
			r = -EINVAL;
			break;
		}
		if (dc->writable && i != n - 1) {
			snprintf(err, errlen, "delta %d: only the top delta may be writable", i);
			r = -EINVAL;
			break;
		}
		if (dc->writable && dc->version == 0) {
			snprintf(err, errlen, "a raw image cannot be the writable top");
			r = -EINVAL;
			break;
		}
		d->fd = fcntl(dc->fd, F_DUPFD_CLOEXEC, 3);
		if (d->fd < 0) {
			r = -errno;
			snprintf(err, errlen, "delta %d: fd %d: %s", i, dc->fd, strerror(errno));
			break;
		}
		/* A second open file, not a dup: O_DIRECT belongs to the open file, not the
		 * descriptor. Not every file system has direct I/O; reads then stay buffered. */
		char self[64];
		snprintf(self, sizeof(self), "/proc/self/fd/%d", d->fd);
		d->dfd = open(self, O_RDONLY | O_DIRECT | O_CLOEXEC);
		d->version = dc->version;
		d->writable = dc->writable;
		d->data_off = dc->data_off;
		struct stat st;
		if (fstat(d->fd, &st)) {
			r = -errno;
			snprintf(err, errlen, "delta %d: fstat: %s", i, strerror(errno));
			break;
		}
		if (d->version == 0) {
			d->raw_size = (uint64_t)st.st_size;
			continue;
		}
		if (!dc->bat || !dc->bat_entries || dc->data_off < HEADER_SIZE + 4ULL * dc->bat_entries ||
		    (d->version == 2 && dc->data_off % cluster)) {
			snprintf(err, errlen, "delta %d: BAT of %u entries / data offset %llu invalid", i,
				 dc->bat_entries, (unsigned long long)dc->data_off);
			r = -EINVAL;
			break;
		}
		d->nbat = dc->bat_entries;
		d->bat = malloc((size_t)d->nbat * 4);
		if (!d->bat) {
			r = -ENOMEM;
			snprintf(err, errlen, "out of memory for a BAT of %u entries", d->nbat);
			break;
		}
		memcpy(d->bat, dc->bat, (size_t)d->nbat * 4);
		if (i == n - 1) {
			uint64_t fsz = (uint64_t)st.st_size;
			/*
			 * New clusters go right after the last one the BAT references: what lies
			 * beyond is garbage (a cluster a killed server had not finished writing, say)
			 * and is overwritten whole, so it cannot stay behind as a hole in the middle
			 * of the file, which ploop check rejects.
			 */
			uint64_t next = d->data_off;
			for (uint32_t k = 0; k < d->nbat; k++) {
				if (d->bat[k]) {
					uint64_t end = entry_to_host(c, d, d->bat[k]) + cluster;
					if (end > next)
						next = end;
				}
			}
			c->next_host = next;
			if (d->writable) {
				r = sparse_scan(c, d, fsz);
				if (r) {
					snprintf(err, errlen, "out of memory for the sparse map");
					break;
				}
			}
		}
	}
	if (!r) {
		c->read_only = !c->d[n - 1].writable;
		c->scratch = mmap(NULL, cluster, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		c->scratch_zero = mmap(NULL, cluster, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (!c->read_only)
			c->pending = calloc(((size_t)c->d[n - 1].nbat >> 3) + 1, 1);
		if (c->scratch == MAP_FAILED || c->scratch_zero == MAP_FAILED ||
		    (!c->read_only && !c->pending)) {
			r = -ENOMEM;
			snprintf(err, errlen, "out of memory for cluster buffers");
		}
	}
	if (r) {
		pl_chain_close(c);
		return r;
	}
	*out = c;
	return 0;
}

void pl_chain_close(struct pl_chain *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->ndeltas; i++) {
		if (c->d[i].fd >= 0)
			close(c->d[i].fd);
		if (c->d[i].dfd >= 0)
			close(c->d[i].dfd);
		free(c->d[i].bat);
	}
	if (c->scratch != MAP_FAILED)
		munmap(c->scratch, c->cluster);
	if (c->scratch_zero != MAP_FAILED)
		munmap((void *)c->scratch_zero, c->cluster);
	free(c->released);
	free(c->sparse);
	free(c->pending);
	pthread_mutex_destroy(&c->alloc_mtx);
	pthread_mutex_destroy(&c->flush_mtx);
	free(c->d);
	free(c);
}

/* ---- requests -------------------------------------------------------------------------- */

/*
 * Reads are gathered into runs (adjacent clusters contiguous in the same delta, or unmapped
 * ones), so a request over a sequentially written image costs one transfer, not one per cluster.
 */
struct read_run {
	int fd; /* -1: zeros */
	uint64_t host;
	uint32_t boff, len;
};

static int read_run_flush(const struct pl_data *dt, struct read_run *run)
{
	int r = 0;
	if (!run->len)
		return 0;
	if (run->fd < 0) {
		if (dt->buf)
			memset(dt->buf + run->boff, 0, run->len);
		else
			r = dt->zero(dt->arg, run->boff, run->len);
	} else if (dt->buf) {
		r = pread_full(run->fd, dt->buf + run->boff, run->len, run->host);
	} else {
		r = dt->xfer(dt->arg, 0, run->fd, run->host, run->boff, run->len);
	}
	run->len = 0;
	return r;
}

int pl_read_via(struct pl_chain *c, const struct pl_data *dt, uint64_t off, uint64_t len)
{
	struct read_run run = { -1, 0, 0, 0 };
	uint32_t boff = 0;
	if (len > UINT32_MAX)
		return -EINVAL;
	while (len) {
		uint64_t vcl = off >> c->cluster_shift;
		uint32_t in = (uint32_t)(off & (c->cluster - 1));
		uint32_t n = c->cluster - in;
		if (n > len)
			n = (uint32_t)len;
		uint64_t host = 0;
		int i = vcl > UINT32_MAX ? -1 : locate(c, (uint32_t)vcl, c->ndeltas, &host);
		int fd = i < 0 ? -1 : c->d[i].fd;
		host += in;
		if (run.len && (fd != run.fd || (fd >= 0 && host != run.host + run.len))) {
			int r = read_run_flush(dt, &run);
			if (r)
				return r;
		}
		if (!run.len) {
			run.fd = fd;
			run.host = host;
			run.boff = boff;
		}
		run.len += n;
		boff += n;
		off += n;
		len -= n;
	}
	return read_run_flush(dt, &run);
}

int pl_plan_read(struct pl_chain *c, uint64_t off, uint64_t len, int *fd, uint64_t *host)
{
	if (!len || len > UINT32_MAX)
		return 0;
	int run_fd = -2;
	uint64_t run_host = 0, done = 0;
	while (done < len) {
		uint64_t vcl = (off + done) >> c->cluster_shift;
		uint32_t in = (uint32_t)((off + done) & (c->cluster - 1));
		uint64_t n = c->cluster - in;
		if (n > len - done)
			n = len - done;
		if (vcl > UINT32_MAX)
			return 0;
		uint64_t h = 0;
		int i = locate(c, (uint32_t)vcl, c->ndeltas, &h);
		int f = i < 0 ? -1 : c->d[i].fd;
		h += in;
		if (run_fd == -2) {
			run_fd = f;
			run_host = h;
		} else if (f != run_fd || (f >= 0 && h != run_host + done)) {
			return 0;
		}
		done += n;
	}
	*fd = run_fd;
	*host = run_host;
	return 1;
}

int pl_direct_fd(const struct pl_chain *c, int fd, uint64_t host, uint64_t len)
{
	/* 4 KiB: the largest logical block size a backing file system will ask for. A request the
	 * file system still refuses (-EINVAL) is served again buffered by the caller. */
	if (fd < 0 || ((host | len) & 4095))
		return -1;
	for (int i = 0; i < c->ndeltas; i++)
		if (c->d[i].fd == fd)
			return c->d[i].dfd;
	return -1;
}

int pl_plan_write(struct pl_chain *c, const void *owner, uint64_t off, uint64_t len, int *fd,
		  uint64_t *host)
{
	if (c->read_only || !len || len > UINT32_MAX)
		return 0;
	struct pl_delta *top = top_of(c);
	uint64_t first = off >> c->cluster_shift, end = (off + len - 1) / c->cluster + 1;
	if (end > top->nbat)
		return 0;
	*fd = top->fd;
	uint64_t h0 = delta_map(c, top, (uint32_t)first);
	if (h0 != NO_HOST) {
		for (uint64_t v = first; v < end; v++) {
			uint64_t h = delta_map(c, top, (uint32_t)v);
			if (h != h0 + ((v - first) << c->cluster_shift) || sparse_test(c, (uint32_t)v))
				return 0;
		}
		*host = h0 + (off & (c->cluster - 1));
		return PL_PLAN_IN_PLACE;
	}
	if ((off | len) & (c->cluster - 1))
		return 0;
	int plan = 0;
	pthread_mutex_lock(&c->alloc_mtx);
	uint64_t h = c->next_host, lhost;
	uint32_t e;
	if (c->alloc_inflight && c->alloc_owner != owner)
		goto out;
	for (uint64_t v = first; v < end; v++)
		if (delta_map(c, top, (uint32_t)v) != NO_HOST || pending_test(c, (uint32_t)v) ||
		    locate(c, (uint32_t)v, c->ndeltas - 1, &lhost) >= 0)
			goto out;
	if (host_to_entry(c, h + len - c->cluster, &e))
		goto out;
	c->next_host += len;
	for (uint64_t v = first; v < end; v++)
		pending_set(c, (uint32_t)v, 1);
	c->alloc_inflight++;
	c->alloc_owner = owner;
	*host = h;
	plan = PL_PLAN_ALLOC;
out:
	pthread_mutex_unlock(&c->alloc_mtx);
	return plan;
}

int pl_finish_alloc(struct pl_chain *c, uint64_t off, uint64_t len, uint64_t host, int written)
{
	int r = 0;
	pthread_mutex_lock(&c->alloc_mtx);
	for (uint64_t i = 0; i < len >> c->cluster_shift; i++) {
		uint32_t vc = (uint32_t)((off >> c->cluster_shift) + i), e;
		if (written && !r) {
			r = host_to_entry(c, host + (i << c->cluster_shift), &e);
			if (!r)
				r = map_cluster(c, vc, e, 0); /* mapped nowhere: no lower data to keep */
		}
		pending_set(c, vc, 0);
	}
	/* Unwritten and nothing reserved after it: the space is taken again by the next one. */
	if (!written && c->next_host == host + len)
		c->next_host = host;
	c->alloc_inflight--;
	pthread_mutex_unlock(&c->alloc_mtx);
	return r;
}

int pl_read(struct pl_chain *c, uint8_t *buf, uint64_t off, uint64_t len)
{
	struct pl_data dt = { buf, NULL, NULL, NULL };
	return pl_read_via(c, &dt, off, len);
}

/* The request's bytes at boff when this process holds them: zeros for a NULL dt (write-zeroes
 * of partial clusters), the buffer in copy mode, NULL in zero-copy mode. */
static const uint8_t *data_mem(const struct pl_chain *c, const struct pl_data *dt, uint32_t boff)
{
	if (!dt)
		return c->scratch_zero;
	return dt->buf ? dt->buf + boff : NULL;
}

/* Writes n bytes of the request from boff (zeros for a NULL dt) to the top at host. */
static int put_data(struct pl_chain *c, const struct pl_data *dt, uint32_t boff, uint64_t host,
		    uint32_t n)
{
	const uint8_t *mem = data_mem(c, dt, boff);
	if (mem)
		return pwrite_full(top_of(c)->fd, mem, n, host);
	return dt->xfer(dt->arg, 1, top_of(c)->fd, host, boff, n);
}

/*
 * Zero copy: appends a cluster for vc whose bytes [in, in+n) are the request's and the rest come
 * from `fill` (the lower delta's cluster, or zeros when NULL). Same rules as alloc_cluster: the
 * data first, synced when `durable` (it replaces lower data), then the BAT slot.
 */
static int alloc_cluster_via(struct pl_chain *c, uint32_t vc, const uint8_t *fill, int durable,
			     const struct pl_data *dt, uint32_t boff, uint32_t in, uint32_t n)
{
	struct pl_delta *top = top_of(c);
	uint64_t host;
	uint32_t e;
	int r = reserve_cluster(c, &host, &e);
	if (r)
		return r;
	const uint8_t *f = fill ? fill : c->scratch_zero;
	if (in)
		r = pwrite_full(top->fd, f, in, host);
	if (!r && in + n < c->cluster)
		r = pwrite_full(top->fd, f + in + n, c->cluster - in - n, host + in + n);
	if (!r)
		r = dt->xfer(dt->arg, 1, top->fd, host + in, boff, n);
	return r ? r : map_cluster(c, vc, e, durable);
}

/* One write inside a single cluster: request bytes [boff, boff+n), or zeros for a NULL dt. */
static int write_segment(struct pl_chain *c, const struct pl_data *dt, uint32_t boff, uint32_t vc,
			 uint32_t in, uint32_t n)
{
	struct pl_delta *top = top_of(c);
	if (vc >= top->nbat)
		return -ENOSPC;
	uint64_t host = delta_map(c, top, vc);
	if (host != NO_HOST && !sparse_test(c, vc))
		return put_data(c, dt, boff, host + in, n);

	const uint8_t *mem = data_mem(c, dt, boff);
	pthread_mutex_lock(&c->alloc_mtx);
	int r;
	host = delta_map(c, top, vc);
	if (host != NO_HOST) {
		if (n != c->cluster && sparse_test(c, vc)) {
			/* Rewrite the whole cluster (holes read as zeros), so none of it stays a hole. */
			r = pread_full(top->fd, c->scratch, c->cluster, host);
			if (!r && mem) {
				memcpy(c->scratch + in, mem, n);
				r = pwrite_full(top->fd, c->scratch, c->cluster, host);
			} else if (!r) {
				r = pwrite_full(top->fd, c->scratch, c->cluster, host);
				if (!r)
					r = put_data(c, dt, boff, host + in, n);
			}
		} else {
			r = put_data(c, dt, boff, host + in, n);
		}
		if (!r)
			sparse_clear(c, vc);
		goto out;
	}
	if (c->alloc_inflight) {
		r = PL_BUSY; /* clusters reserved before this one are still being written */
		goto out;
	}
	uint64_t lhost = 0;
	int li = locate(c, vc, c->ndeltas - 1, &lhost);
	/* Zeros over a cluster mapped nowhere already read as zeros (unknowable in zero copy). */
	if (li < 0 && mem && is_zero(mem, n)) {
		pl_stats_add(&c->stats->zero_skips, 1);
		r = 0;
		goto out;
	}
	if (li >= 0 && n != c->cluster) {
		r = pread_full(c->d[li].fd, c->scratch, c->cluster, lhost);
		if (r)
			goto out;
	}
	if (!mem) {
		r = alloc_cluster_via(c, vc, li >= 0 && n != c->cluster ? c->scratch : NULL, li >= 0,
				      dt, boff, in, n);
		goto out;
	}
	const uint8_t *src = mem;
	if (n != c->cluster) {
		if (li < 0)
			memset(c->scratch, 0, c->cluster);
		memcpy(c->scratch + in, mem, n);
		src = c->scratch;
	}
	r = alloc_cluster(c, vc, FILL_DATA, src, li >= 0);
out:
	pthread_mutex_unlock(&c->alloc_mtx);
	return r;
}

/* Writes [off, off+len): the request's bytes, or zeros for a NULL dt. */
static int write_range(struct pl_chain *c, const struct pl_data *dt, uint64_t off, uint64_t len)
{
	uint32_t boff = 0;
	while (len) {
		uint64_t vcl = off >> c->cluster_shift;
		uint32_t in = (uint32_t)(off & (c->cluster - 1));
		uint32_t n = c->cluster - in;
		if (n > len)
			n = (uint32_t)len;
		if (vcl > UINT32_MAX)
			return -ENOSPC;
		int r = write_segment(c, dt, dt ? boff : 0, (uint32_t)vcl, in, n);
		if (r)
			return r;
		boff += n;
		off += n;
		len -= n;
	}
	return 0;
}

int pl_write_via(struct pl_chain *c, const struct pl_data *dt, uint64_t off, uint64_t len,
		 int fua)
{
	if (c->read_only)
		return -EROFS;
	if (len > UINT32_MAX)
		return -EINVAL;
	int r = write_range(c, dt, off, len);
	if (!r && fua)
		r = pl_flush(c);
	return r;
}

int pl_write(struct pl_chain *c, const uint8_t *buf, uint64_t off, uint64_t len, int fua)
{
	struct pl_data dt = { (uint8_t *)buf, NULL, NULL, NULL };
	return pl_write_via(c, &dt, off, len, fua);
}

int pl_flush(struct pl_chain *c)
{
	if (c->read_only)
		return 0;
	pthread_mutex_lock(&c->flush_mtx);
	pthread_mutex_lock(&c->alloc_mtx);
	uint64_t *rel = c->released;
	size_t nrel = c->nreleased;
	c->released = NULL;
	c->nreleased = c->released_cap = 0;
	pthread_mutex_unlock(&c->alloc_mtx);

	/* Data and every BAT slot written so far (they are in the same file) become durable. */
	int r = top_sync(c);
	if (!r) {
		/* The zeroed entries of released clusters are durable now: return their space. */
		for (size_t i = 0; i < nrel; i++) {
			if (!fallocate(top_of(c)->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				       (off_t)rel[i], c->cluster))
				pl_stats_add(&c->stats->punched_clusters, 1);
		}
		free(rel);
	} else if (nrel) {
		/* keep them for the next flush */
		pthread_mutex_lock(&c->alloc_mtx);
		uint64_t *merged = realloc(rel, (nrel + c->nreleased) * sizeof(*rel));
		if (merged) {
			if (c->nreleased)
				memcpy(merged + nrel, c->released, c->nreleased * sizeof(*rel));
			free(c->released);
			c->released = merged;
			c->nreleased += nrel;
			c->released_cap = c->nreleased;
		} else {
			free(rel); /* the clusters stay leaked until compaction */
		}
		pthread_mutex_unlock(&c->alloc_mtx);
	}
	pthread_mutex_unlock(&c->flush_mtx);
	return r;
}

static int push_released(struct pl_chain *c, uint64_t host)
{
	if (c->nreleased == c->released_cap) {
		size_t cap = c->released_cap ? c->released_cap * 2 : 64;
		uint64_t *p = realloc(c->released, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		c->released = p;
		c->released_cap = cap;
	}
	c->released[c->nreleased++] = host;
	return 0;
}

/*
 * Whole clusters [first, end) for DISCARD (hint) or WRITE_ZEROES (keep = NOUNMAP). A cluster
 * only the top maps is unmapped (its space returned at the next flush) unless keep is set.
 * Over data a lower delta holds, write-zeroes gives the top a cluster of real zeros and discard
 * does nothing: a mapped cluster is never left a hole, which ploop check (1.x) rejects, and a
 * discard, being a hint, must not cost space that a snapshot already pays for.
 */
static int zero_clusters(struct pl_chain *c, uint64_t first, uint64_t end, int keep, int hint)
{
	struct pl_delta *top = top_of(c);
	for (uint64_t v = first; v < end; v++) {
		if (v >= top->nbat)
			return -ENOSPC;
		uint32_t vc = (uint32_t)v;
		int r = 0;
		pthread_mutex_lock(&c->alloc_mtx);
		uint64_t host = delta_map(c, top, vc), lhost;
		int lower = locate(c, vc, c->ndeltas - 1, &lhost) >= 0;
		if (host != NO_HOST) {
			if (!lower && !keep) {
				r = push_released(c, host);
				if (!r)
					r = set_entry(c, vc, 0);
				if (!r)
					sparse_clear(c, vc);
				if (!r)
					pl_stats_add(&c->stats->released_clusters, 1);
				else if (c->nreleased && c->released[c->nreleased - 1] == host)
					c->nreleased--;
			} else if (!hint) {
				r = zero_keep(c, host);
				if (!r)
					sparse_clear(c, vc);
			}
		} else if ((lower && !hint) || keep) {
			r = c->alloc_inflight ? PL_BUSY : alloc_cluster(c, vc, FILL_ZEROS, NULL, 0);
		}
		pthread_mutex_unlock(&c->alloc_mtx);
		if (r)
			return r;
	}
	return 0;
}

int pl_discard(struct pl_chain *c, uint64_t off, uint64_t len)
{
	if (c->read_only)
		return -EROFS;
	/* Only whole clusters are released; partial ones are left as they are (discard is a hint). */
	uint64_t first = (off + c->cluster - 1) >> c->cluster_shift;
	uint64_t end = (off + len) >> c->cluster_shift;
	return first < end ? zero_clusters(c, first, end, 0, 1) : 0;
}

int pl_write_zeroes(struct pl_chain *c, uint64_t off, uint64_t len, int no_unmap)
{
	if (c->read_only)
		return -EROFS;
	uint64_t first = (off + c->cluster - 1) >> c->cluster_shift;
	uint64_t end = (off + len) >> c->cluster_shift;
	if (first >= end)
		return write_range(c, NULL, off, len);
	uint64_t a = first << c->cluster_shift, b = end << c->cluster_shift;
	int r = write_range(c, NULL, off, a - off);
	if (!r)
		r = zero_clusters(c, first, end, no_unmap, 0);
	if (!r)
		r = write_range(c, NULL, b, off + len - b);
	return r;
}

int pl_merge_cluster(struct pl_chain *c, int index, uint32_t vc)
{
	if (index < 0 || index >= c->ndeltas - 1 || c->read_only)
		return -EINVAL;
	struct pl_delta *top = top_of(c);
	if (vc >= top->nbat)
		return 0;
	int r = 0;
	pthread_mutex_lock(&c->alloc_mtx);
	uint64_t lhost = 0;
	if (delta_map(c, top, vc) != NO_HOST || delta_map(c, &c->d[index], vc) == NO_HOST) {
		r = 0; /* nothing to copy */
	} else if (c->alloc_inflight) {
		r = PL_BUSY; /* allocations stay in file order */
	} else {
		int li = locate(c, vc, c->ndeltas - 1, &lhost);
		r = pread_full(c->d[li].fd, c->scratch, c->cluster, lhost);
		if (!r)
			r = alloc_cluster(c, vc, FILL_DATA, c->scratch, 1);
		if (!r) {
			pl_stats_add(&c->stats->merged_clusters, 1);
			r = 1;
		}
	}
	pthread_mutex_unlock(&c->alloc_mtx);
	return r;
}
