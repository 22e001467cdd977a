/*
 * Host test of the native ploop engine (src/blockdev/native/ploop.c) without ublk: random
 * reads, writes, discards and write-zeroes on one- and two-delta chains, compared with an
 * in-memory model. Every few operations the chain is dropped without a flush (as when the server
 * process is killed) and reopened from the BAT in the files, and every request is sometimes
 * executed twice (as after a recovery re-issues it). Both format versions are covered, and both
 * ways the data path can hand over a request's data: a buffer (copy mode) and, as in zero-copy
 * mode, only through transfer callbacks (here backed by the test's buffer, as the kernel's pages
 * of the request would be).
 *
 *   test/native/run-engine-test.sh     (builds with cc and runs it; exit status 0 = pass)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ploop.h"

#define CLUSTER (64u << 10)
#define NCLUSTERS 48u
#define SIZE ((uint64_t)CLUSTER * NCLUSTERS)

static struct pl_stats stats;
static uint8_t model[SIZE];
static uint8_t buf[4 * CLUSTER] __attribute__((aligned(4096))); /* O_DIRECT-ready */
static unsigned long checks;
static char dir[256];

#define FAIL(...)                                                                                  \
	do {                                                                                       \
		fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                              \
		fprintf(stderr, __VA_ARGS__);                                                      \
		fprintf(stderr, "\n");                                                             \
		exit(1);                                                                           \
	} while (0)

/* 0: requests with a buffer; 1: through pl_*_via without one; 2: as 1, but reads
 * pl_plan_read accepts are one transfer, and so are writes pl_plan_write accepts (those onto
 * reserved clusters sometimes left in flight for a while); 3: as 2, reads through the O_DIRECT
 * twin where aligned */
static int zero_copy;

static uint64_t rnd(uint64_t n)
{
	return ((uint64_t)random() << 31 ^ (uint64_t)random()) % n;
}

/* The zero-copy callbacks: arg is the request's memory (the kernel's pages, in the data path). */
static int xfer_cb(void *arg, int write, int fd, uint64_t off, uint32_t boff, uint32_t len)
{
	uint8_t *p = (uint8_t *)arg + boff;
	while (len) {
		ssize_t r = write ? pwrite(fd, p, len, (off_t)off) : pread(fd, p, len, (off_t)off);
		if (r < 0)
			return -errno;
		if (r == 0) {
			if (write)
				return -EIO;
			memset(p, 0, len); /* past the end of the file */
			break;
		}
		p += r;
		off += (uint64_t)r;
		len -= (uint32_t)r;
	}
	return 0;
}

static int zero_cb(void *arg, uint32_t boff, uint32_t len)
{
	memset((uint8_t *)arg + boff, 0, len);
	return 0;
}

/* Modes 2-3: reads pl_plan_read accepts are one plain transfer, as in the queue's fast path;
 * in mode 3 direct where pl_direct_fd allows (the writes before them stay buffered). */
static unsigned long planned_ios, direct_ios, direct_unavailable;

static int t_read(struct pl_chain *c, uint8_t *b, uint64_t off, uint64_t len)
{
	struct pl_data dt = { NULL, xfer_cb, zero_cb, b };
	int fd;
	uint64_t host;
	if (zero_copy >= 2 && pl_plan_read(c, off, len, &fd, &host)) {
		planned_ios++;
		int dfd = zero_copy == 3 ? pl_direct_fd(c, fd, host, len) : -1;
		if (zero_copy == 3 && fd >= 0 && c->d[0].dfd < 0)
			direct_unavailable++;
		if (dfd >= 0) {
			direct_ios++;
			fd = dfd;
		}
		return fd < 0 ? zero_cb(b, 0, (uint32_t)len) : xfer_cb(b, 0, fd, host, 0, (uint32_t)len);
	}
	return zero_copy ? pl_read_via(c, &dt, off, len) : pl_read(c, b, off, len);
}

/*
 * Modes 2-3: writes onto reserved clusters (PL_PLAN_ALLOC) in flight, as the queue leaves them:
 * they land in the order they were started (the kernel's worker runs writes to one file in
 * turn) and count (in the model) only once finished.
 */
#define MAX_INFLIGHT 4
static struct inflight {
	uint64_t off, len, host;
	uint8_t data[sizeof(buf)];
} inflight[MAX_INFLIGHT];
static int ninflight;
static unsigned long planned_writes, reserved_writes, busy_retries;
static const int owner_a = 1, owner_b = 2; /* two queues */

/* Lands and maps the oldest write in flight. */
static void finish_oldest(struct pl_chain *c)
{
	struct inflight *w = &inflight[0];
	int r = xfer_cb(w->data, 1, c->d[c->ndeltas - 1].fd, w->host, 0, (uint32_t)w->len);
	if (!r)
		r = pl_finish_alloc(c, w->off, w->len, w->host, 1);
	if (r)
		FAIL("finishing a reserved write: %s", strerror(-r));
	memcpy(model + w->off, w->data, w->len);
	memmove(&inflight[0], &inflight[1], (size_t)(ninflight - 1) * sizeof(inflight[0]));
	ninflight--;
}

static void finish_all(struct pl_chain *c)
{
	while (ninflight)
		finish_oldest(c);
}

/* The server is killed: the writes in flight are never answered; the first `landed` of them
 * reached the file, unmapped. */
static void kill_inflight(struct pl_chain *c, int landed)
{
	for (int i = 0; i < landed && i < ninflight; i++)
		xfer_cb(inflight[i].data, 1, c->d[c->ndeltas - 1].fd, inflight[i].host, 0,
			(uint32_t)inflight[i].len);
	ninflight = 0;
}

/* A write; 1 when it was left in flight (the model learns it from finish_oldest). */
static int t_write(struct pl_chain *c, const uint8_t *b, uint64_t off, uint64_t len, int fua)
{
	struct pl_data dt = { NULL, xfer_cb, zero_cb, (void *)b };
	if (zero_copy >= 2 && !fua) {
		int fd;
		uint64_t host;
		int plan = pl_plan_write(c, rnd(4) ? &owner_a : &owner_b, off, len, &fd, &host);
		if (plan == PL_PLAN_IN_PLACE) {
			planned_writes++;
			return xfer_cb((void *)b, 1, fd, host, 0, (uint32_t)len);
		}
		if (plan == PL_PLAN_ALLOC) {
			reserved_writes++;
			struct inflight *w = &inflight[ninflight++];
			*w = (struct inflight){ off, len, host, { 0 } };
			memcpy(w->data, b, len);
			if (ninflight == MAX_INFLIGHT || rnd(2))
				finish_all(c);
			return 1;
		}
	}
	return zero_copy ? pl_write_via(c, &dt, off, len, fua) : pl_write(c, b, off, len, fua);
}

/* A fresh delta file: header + zeroed BAT in the first cluster (data_off = one cluster). */
static void create_image(const char *path, int version)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		FAIL("create %s: %s", path, strerror(errno));
	uint8_t h[CLUSTER];
	memset(h, 0, sizeof(h));
	memcpy(h, version == 1 ? "WithoutFreeSpace" : "WithouFreSpacExt", 16);
	uint32_t v32[] = { 2, 16, (uint32_t)(SIZE / 512 / 16 / 32), CLUSTER / 512, NCLUSTERS };
	memcpy(h + 16, v32, sizeof(v32));
	uint64_t sectors = SIZE / 512;
	memcpy(h + 36, &sectors, 8);
	uint32_t data_off = CLUSTER / 512;
	memcpy(h + 48, &data_off, 4);
	if (pwrite(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h))
		FAIL("write header");
	close(fd);
}

struct chain_files {
	int n;
	char path[2][300];
	int version;
};

/* Opens the chain with BATs read from the files now (as the control plane does). */
static struct pl_chain *open_chain(struct chain_files *f)
{
	struct pl_delta_config cfg[2];
	uint32_t *bats[2];
	int fds[2];
	for (int i = 0; i < f->n; i++) {
		int top = i == f->n - 1;
		fds[i] = open(f->path[i], (top ? O_RDWR : O_RDONLY) | O_CLOEXEC);
		if (fds[i] < 0)
			FAIL("open %s", f->path[i]);
		bats[i] = calloc(NCLUSTERS, 4);
		if (pread(fds[i], bats[i], NCLUSTERS * 4, 64) != NCLUSTERS * 4)
			FAIL("read BAT");
		cfg[i] = (struct pl_delta_config){ .fd = fds[i], .version = f->version,
						   .data_off = CLUSTER, .bat = bats[i],
						   .bat_entries = NCLUSTERS, .writable = top };
	}
	struct pl_chain *c;
	char err[256];
	int r = pl_chain_open(cfg, f->n, CLUSTER, SIZE, &stats, &c, err, sizeof(err));
	for (int i = 0; i < f->n; i++) {
		close(fds[i]); /* the engine keeps its own duplicates */
		free(bats[i]);
	}
	if (r)
		FAIL("pl_chain_open: %s", err);
	return c;
}

/* Structural check of one delta file: entries aligned, inside the file, unique. */
static void check_file(const char *path, int version)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	fstat(fd, &st);
	uint32_t bat[NCLUSTERS];
	if (pread(fd, bat, sizeof(bat), 64) != (ssize_t)sizeof(bat))
		FAIL("read BAT");
	for (unsigned i = 0; i < NCLUSTERS; i++) {
		if (!bat[i])
			continue;
		uint64_t host = version == 1 ? (uint64_t)bat[i] * 512 : (uint64_t)bat[i] * CLUSTER;
		if (host < CLUSTER || host % CLUSTER)
			FAIL("%s: entry %u = %u misplaced", path, i, bat[i]);
		if (host + CLUSTER > (uint64_t)st.st_size)
			FAIL("%s: entry %u beyond EOF", path, i);
		for (unsigned j = 0; j < i; j++)
			if (bat[j] == bat[i])
				FAIL("%s: entries %u and %u share cluster %u", path, j, i, bat[i]);
		/* A mapped cluster holds no hole at all: ploop check (1.x) calls the image sparse. */
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); /* cached pages hide unwritten extents */
		off_t h = lseek(fd, (off_t)host, SEEK_HOLE);
		if (h >= 0 && (uint64_t)h < host + CLUSTER)
			FAIL("%s: entry %u: the cluster at %llu has a hole at %lld", path, i,
			     (unsigned long long)host, (long long)h);
	}
	close(fd);
}

static void verify(struct pl_chain *c, const char *when)
{
	static uint8_t got[SIZE] __attribute__((aligned(4096)));
	int r = t_read(c, got, 0, SIZE);
	if (r)
		FAIL("%s: read: %s", when, strerror(-r));
	if (memcmp(got, model, SIZE)) {
		for (uint64_t i = 0; i < SIZE; i++)
			if (got[i] != model[i])
				FAIL("%s: byte %llu (cluster %llu) is %u, expected %u", when,
				     (unsigned long long)i, (unsigned long long)(i / CLUSTER), got[i], model[i]);
	}
	checks++;
}

/* A write answered before this returns. */
static int t_write_now(struct pl_chain *c, const uint8_t *b, uint64_t off, uint64_t len, int fua)
{
	int r = t_write(c, b, off, len, fua);
	if (r == 1) {
		finish_all(c);
		r = 0;
	}
	return r;
}

/* One random request, sometimes executed twice (re-issue after recovery). */
static void random_op(struct pl_chain *c)
{
	if (ninflight && rnd(3) == 0)
		finish_oldest(c);
	uint64_t off = rnd(SIZE / 512) * 512;
	uint64_t len = (1 + rnd(sizeof(buf) / 512)) * 512;
	if (rnd(4) == 0) { /* whole clusters, as a file system's large writes often are */
		off = rnd(NCLUSTERS) * CLUSTER;
		len = (1 + rnd(sizeof(buf) / CLUSTER)) * CLUSTER;
	}
	if (off + len > SIZE)
		len = SIZE - off;
	int times = rnd(4) == 0 ? 2 : 1;
	int kind = (int)rnd(10);
	for (int t = 0; t < times; t++) {
		int r = 0;
		if (kind < 5) {
			if (t == 0) {
				if (rnd(3) == 0)
					memset(buf, 0, len); /* zero data: may skip allocation */
				else
					for (uint64_t i = 0; i < len; i++)
						buf[i] = (uint8_t)random();
			}
			int fua = rnd(8) == 0;
			while ((r = t_write(c, buf, off, len, fua)) == PL_BUSY) {
				busy_retries++;
				finish_all(c); /* as the queue does before it tries again */
			}
			if (r == 1)
				r = 0; /* in flight */
			else
				memcpy(model + off, buf, len);
		} else if (kind < 7) {
			r = pl_discard(c, off, len);
			/* A hint: each whole cluster reads as before or as zeros (zeros where only the top
			 * held it); nothing else changes. */
			uint64_t a = (off + CLUSTER - 1) / CLUSTER * CLUSTER, b = (off + len) / CLUSTER * CLUSTER;
			static uint8_t got[CLUSTER] __attribute__((aligned(4096)));
			for (uint64_t p = a; !r && p < b; p += CLUSTER) {
				if ((r = t_read(c, got, p, CLUSTER)))
					break;
				if (memcmp(got, model + p, CLUSTER) == 0)
					continue;
				for (unsigned i = 0; i < CLUSTER; i++)
					if (got[i])
						FAIL("discard at %llu: cluster neither unchanged nor zero",
						     (unsigned long long)p);
				memset(model + p, 0, CLUSTER);
			}
		} else if (kind < 9) {
			int keep = (int)rnd(2);
			while ((r = pl_write_zeroes(c, off, len, keep)) == PL_BUSY) {
				busy_retries++;
				finish_all(c);
			}
			memset(model + off, 0, len);
		} else {
			r = pl_flush(c);
		}
		if (r)
			FAIL("op %d at %llu+%llu: %s", kind, (unsigned long long)off, (unsigned long long)len,
			     strerror(-r));
	}
}

static void run(int version, int two_deltas, unsigned seed)
{
	srandom(seed);
	memset(model, 0, sizeof(model));
	struct chain_files f = { .n = 1, .version = version };
	snprintf(f.path[0], sizeof(f.path[0]), "%s/base-v%d.hds", dir, version);
	create_image(f.path[0], version);
	struct pl_chain *c = open_chain(&f);
	if (two_deltas) {
		/* fill part of the base, then stack an empty top on it */
		for (int i = 0; i < 60; i++)
			random_op(c);
		finish_all(c);
		pl_flush(c);
		pl_chain_close(c);
		f.n = 2;
		snprintf(f.path[1], sizeof(f.path[1]), "%s/top-v%d.hds", dir, version);
		create_image(f.path[1], version);
		c = open_chain(&f);
		verify(c, "after stacking a top");
	}
	for (int round = 0; round < 40; round++) {
		int n = 1 + (int)rnd(25);
		for (int i = 0; i < n; i++)
			random_op(c);
		verify(c, "live");
		if (round % 3 == 0) {
			/* killed server: nothing flushed, reopened from the BAT in the files */
			kill_inflight(c, (int)rnd(MAX_INFLIGHT + 1));
			pl_chain_close(c);
			c = open_chain(&f);
			verify(c, "reopened without flush");
		}
		if (two_deltas && round == 4) {
			/* background merge of the base into the top, then the top alone */
			for (uint32_t vc = 0; vc < NCLUSTERS; vc++) {
				int r;
				while ((r = pl_merge_cluster(c, 0, vc)) == PL_BUSY) {
					busy_retries++;
					finish_all(c); /* the merge waits for the queue's writes */
				}
				if (r < 0)
					FAIL("merge %u", vc);
			}
			finish_all(c); /* a chain swap waits for the requests in flight */
			pl_flush(c);
			pl_chain_close(c);
			f.n = 1;
			memcpy(f.path[0], f.path[1], sizeof(f.path[0]));
			c = open_chain(&f);
			verify(c, "after merge, top alone");
		}
	}
	finish_all(c);
	pl_flush(c);
	pl_chain_close(c);
	for (int i = 0; i < f.n; i++)
		check_file(f.path[i], version);
	c = open_chain(&f);
	verify(c, "final");
	pl_chain_close(c);
}

/*
 * Holes inside mapped clusters, as other writers leave them (a whole cluster punched, or half of
 * one): the engine finds them when it opens the chain, and a partial write into such a cluster
 * rewrites all of it, keeping the data around the write. Write-zeroes over lower data gives the
 * top real zeros. Afterwards no mapped cluster is part hole (check_file).
 */
static void sparse_fill(int version)
{
	memset(model, 0, sizeof(model));
	struct chain_files f = { .n = 1, .version = version };
	snprintf(f.path[0], sizeof(f.path[0]), "%s/sparse-base-v%d.hds", dir, version);
	create_image(f.path[0], version);
	struct pl_chain *c = open_chain(&f);
	for (uint64_t i = 0; i < 4 * CLUSTER; i++)
		buf[i] = (uint8_t)(i * 7 + 1);
	if (t_write_now(c, buf, 0, 4 * CLUSTER, 1))
		FAIL("fill base");
	memcpy(model, buf, 4 * CLUSTER);
	pl_chain_close(c);
	f.n = 2;
	snprintf(f.path[1], sizeof(f.path[1]), "%s/sparse-top-v%d.hds", dir, version);
	create_image(f.path[1], version);
	c = open_chain(&f);
	/* clusters 0 and 1 copied up; clusters 2 and 3 zeroed over the lower data (3 stays so) */
	if (t_write_now(c, buf, 0, 512, 0) || t_write_now(c, buf + CLUSTER, CLUSTER, 512, 0))
		FAIL("copy up");
	if (pl_write_zeroes(c, 2 * CLUSTER, 2 * CLUSTER, 0))
		FAIL("write zeroes over lower data");
	memset(model + 2 * CLUSTER, 0, 2 * CLUSTER);
	/* a discard over lower data is a hint: the cluster reads as before */
	if (pl_discard(c, 0, CLUSTER))
		FAIL("discard");
	if (pl_flush(c))
		FAIL("flush");
	uint32_t e0 = pl_top_entry(c, 0), e1 = pl_top_entry(c, 1);
	pl_chain_close(c);
	if (!e0 || !e1)
		FAIL("clusters 0 and 1 not mapped in the top");
	/* another writer punches all of cluster 0 and the second half of cluster 1 */
	uint64_t h0 = version == 1 ? (uint64_t)e0 * 512 : (uint64_t)e0 * CLUSTER;
	uint64_t h1 = version == 1 ? (uint64_t)e1 * 512 : (uint64_t)e1 * CLUSTER;
	int fd = open(f.path[1], O_RDWR | O_CLOEXEC);
	if (fd < 0 || fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)h0, CLUSTER) ||
	    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(h1 + CLUSTER / 2),
		      CLUSTER / 2))
		FAIL("punch: %s", strerror(errno));
	close(fd);
	memset(model, 0, CLUSTER);
	memset(model + CLUSTER + CLUSTER / 2, 0, CLUSTER / 2);
	c = open_chain(&f);
	static const uint8_t data[4096] = { [0] = 0xab, [4095] = 0xcd };
	for (uint32_t k = 0; k < 3; k++) {
		uint64_t off = (uint64_t)k * CLUSTER + 8192;
		if (t_write_now(c, data, off, sizeof(data), 0))
			FAIL("partial write into cluster %u", k);
		memcpy(model + off, data, sizeof(data));
	}
	verify(c, "partial writes into sparse clusters");
	finish_all(c);
	pl_flush(c);
	pl_chain_close(c);
	for (int i = 0; i < f.n; i++)
		check_file(f.path[i], version);
	c = open_chain(&f);
	verify(c, "sparse clusters after reopen");
	pl_chain_close(c);
}

/*
 * A server killed while writing a new cluster leaves part of it at the end of the file, with no
 * BAT entry. The next server must write over it, not after it: a hole left in the middle of
 * the file makes ploop check call the image sparse.
 */
static void tail_garbage(int version)
{
	memset(model, 0, sizeof(model));
	struct chain_files f = { .n = 1, .version = version };
	snprintf(f.path[0], sizeof(f.path[0]), "%s/garbage-v%d.hds", dir, version);
	create_image(f.path[0], version);
	struct pl_chain *c = open_chain(&f);
	memset(buf, 0x5a, CLUSTER);
	if (t_write_now(c, buf, 0, CLUSTER, 1))
		FAIL("write");
	memcpy(model, buf, CLUSTER);
	pl_chain_close(c);
	int fd = open(f.path[0], O_RDWR | O_CLOEXEC);
	struct stat st;
	fstat(fd, &st);
	if (pwrite(fd, buf, 4096, st.st_size) != 4096 || ftruncate(fd, st.st_size + CLUSTER))
		FAIL("garbage");
	close(fd);
	c = open_chain(&f);
	memset(buf, 0x6b, 4096);
	if (t_write_now(c, buf, 5 * CLUSTER, 4096, 1))
		FAIL("write after reopen");
	memcpy(model + 5 * CLUSTER, buf, 4096);
	verify(c, "after the garbage cluster");
	pl_chain_close(c);
	fd = open(f.path[0], O_RDONLY | O_CLOEXEC);
	off_t h = lseek(fd, CLUSTER, SEEK_HOLE);
	fstat(fd, &st);
	close(fd);
	if (h >= 0 && h < st.st_size)
		FAIL("%s: a hole at %lld of %lld bytes", f.path[0], (long long)h, (long long)st.st_size);
	check_file(f.path[0], version);
}

int main(int argc, char **argv)
{
	snprintf(dir, sizeof(dir), "%s", argc > 1 ? argv[1] : "/tmp");
	unsigned seeds = argc > 2 ? (unsigned)atoi(argv[2]) : 4;
	for (zero_copy = 0; zero_copy <= 3; zero_copy++) {
		for (unsigned s = 1; s <= seeds; s++) {
			for (int v = 1; v <= 2; v++) {
				run(v, 0, s * 7 + (unsigned)v);
				run(v, 1, s * 13 + (unsigned)v);
			}
		}
		for (int v = 1; v <= 2; v++) {
			sparse_fill(v);
			tail_garbage(v);
		}
	}
	printf("ploop engine: %lu comparisons, %llu allocations (%llu copied), %llu released, "
	       "%llu punched, %llu zero writes skipped, %llu merged\n",
	       checks, (unsigned long long)stats.alloc_clusters, (unsigned long long)stats.cow_clusters,
	       (unsigned long long)stats.released_clusters, (unsigned long long)stats.punched_clusters,
	       (unsigned long long)stats.zero_skips, (unsigned long long)stats.merged_clusters);
	if (!planned_ios)
		FAIL("no request took the single-transfer path");
	printf("%lu requests took the single-transfer path\n", planned_ios);
	if (direct_unavailable)
		printf("direct reads not tested: %s has no O_DIRECT\n", dir);
	else if (!direct_ios)
		FAIL("no read went through the O_DIRECT descriptor");
	else
		printf("%lu of them read with O_DIRECT\n", direct_ios);
	if (!planned_writes || !reserved_writes || !busy_retries)
		FAIL("writes in place %lu, onto reserved clusters %lu, retried %lu: want all > 0",
		     planned_writes, reserved_writes, busy_retries);
	printf("%lu writes in place and %lu onto reserved clusters took it; %lu requests waited for "
	       "reserved clusters\n",
	       planned_writes, reserved_writes, busy_retries);
	printf("%u passed, 0 failed\n", 4 * (seeds * 4 + 4));
	return 0;
}
