/*
 * The ploop delta chain as the data path sees it (ploop-format.md §1.3, §1.10, §3, §5).
 *
 * Deltas are ordered base (0) .. top (n-1). Reads fall through from the top to the first delta
 * that maps a cluster; unmapped clusters read as zeros. Writes go to the top only: a cluster the
 * top does not map is allocated whole at the top's end (copy-on-write from the delta below that
 * maps it, else zero padding).
 *
 * Ordering (crash rules): a new cluster's data is written before the BAT slot that points at it;
 * when the cluster carries data copied from a lower delta, that data is made durable (fdatasync)
 * before the slot is written, so a power loss can never expose zeros where lower data was. The
 * slot itself is written to the image right away (not only at FLUSH): the server process can be
 * killed and recovered while the page cache keeps everything it wrote, so a recovered server that
 * re-reads the BAT from the file sees every allocation the previous one acknowledged. FLUSH then
 * only needs one fdatasync of the top, after which clusters released by DISCARD are punched.
 * Every operation is idempotent, so requests re-issued after a recovery are harmless.
 */
#ifndef PLOOP_UBLK_PLOOP_H
#define PLOOP_UBLK_PLOOP_H

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "stats.h"

#define PL_MAX_DELTAS 256

struct pl_delta_config {
	int fd;               /* duplicated (close-on-exec); the caller keeps its own descriptor */
	int version;          /* 1 (BAT in sectors), 2 (BAT in clusters) or 0 (raw base) */
	uint64_t data_off;    /* bytes; ignored for raw */
	const uint32_t *bat;  /* copied; NULL for raw */
	uint32_t bat_entries;
	int writable;         /* only the top may be writable */
};

struct pl_delta {
	int fd;
	int dfd; /* the same file opened O_DIRECT (for large reads), or -1 where it cannot be */
	int version;
	uint64_t data_off;
	uint32_t *bat;
	uint32_t nbat;
	uint64_t raw_size; /* raw base: file size */
	int writable;
};

struct pl_chain {
	int ndeltas;
	struct pl_delta *d;
	uint32_t cluster;
	unsigned cluster_shift;
	uint64_t size; /* bytes served by the device */
	int read_only; /* top not writable */

	pthread_mutex_t alloc_mtx; /* allocation, BAT changes, release list */
	pthread_mutex_t flush_mtx; /* one FLUSH at a time */
	uint64_t next_host;        /* where the next top cluster goes */
	uint64_t *released;        /* top clusters unmapped since the last flush */
	size_t nreleased, released_cap;
	uint8_t *scratch;            /* one cluster, used under alloc_mtx */
	const uint8_t *scratch_zero; /* one cluster of zeros (read-only anonymous map) */
	/*
	 * One bit per virtual cluster of the top: mapped, but (partly) a hole or unwritten extent
	 * in the file. A partial write into such a cluster fills the rest with zeros first, so no
	 * cluster is ever half data, half hole: ploop check rejects such images as "sparse".
	 */
	uint8_t *sparse;
	/*
	 * Zero copy: clusters reserved for large writes in flight (pl_plan_write), one bit per
	 * virtual cluster of the top, mapped by pl_finish_alloc once their data is written. While
	 * any is in flight only the queue that reserved them (alloc_owner) reserves more, in file
	 * order, and nothing else allocates (PL_BUSY): so a killed server never leaves a cluster
	 * unwritten below one that was written (a hole ploop check rejects).
	 */
	uint8_t *pending;
	unsigned alloc_inflight;
	const void *alloc_owner;
	unsigned debug_delay_ms;
	struct pl_stats *stats;
};

/* Returned by writes and merge steps that would allocate while reserved clusters are in flight
 * (see `pending`): try again once those are finished. Never reaches the kernel. */
#define PL_BUSY (-EALREADY)

/* Builds a chain; returns 0 or -errno with a message in err. */
int pl_chain_open(const struct pl_delta_config *cfg, int n, uint32_t cluster, uint64_t size,
		  struct pl_stats *stats, struct pl_chain **out, char *err, size_t errlen);
void pl_chain_close(struct pl_chain *c);

/*
 * A request's data. In copy mode it is a buffer this process holds (`buf`). In zero-copy mode
 * (`buf` NULL) the data stays in the kernel's pages of the request and is only moved by `xfer`
 * (between bytes [boff, boff+len) of the request and a file at `off`) and `zero` (fills bytes of
 * a READ with zeros); the engine never sees it.
 */
struct pl_data {
	uint8_t *buf;
	int (*xfer)(void *arg, int write, int fd, uint64_t off, uint32_t boff, uint32_t len);
	int (*zero)(void *arg, uint32_t boff, uint32_t len);
	void *arg;
};

/* Request handlers: 0 on success, -errno on failure. len must fit in 32 bits. */
int pl_read_via(struct pl_chain *c, const struct pl_data *data, uint64_t off, uint64_t len);
int pl_write_via(struct pl_chain *c, const struct pl_data *data, uint64_t off, uint64_t len,
		 int fua);
/*
 * Whether a read of [off, off+len) is one contiguous extent of one file that the queue can move
 * with a single transfer: clusters contiguous in one delta (*fd, *host) or mapped nowhere
 * (*fd = -1). 1 if so, else 0 (the request then goes through pl_read_via).
 */
int pl_plan_read(struct pl_chain *c, uint64_t off, uint64_t len, int *fd, uint64_t *host);
/*
 * Zero copy: whether a WRITE of [off, off+len) can be one transfer to the top, not waited for.
 * PL_PLAN_IN_PLACE: the range is one extent of clusters the top maps (no holes). PL_PLAN_ALLOC:
 * whole clusters mapped nowhere in the chain; they are reserved at the top's end and marked
 * pending, the transfer must be started in order (ublk_queue_start_write) and then be ended with
 * pl_finish_alloc whatever its result. 0: write it with pl_write_via. *fd and *host: where.
 * `owner` names the queue (see `alloc_owner`).
 */
#define PL_PLAN_IN_PLACE 1
#define PL_PLAN_ALLOC 2
int pl_plan_write(struct pl_chain *c, const void *owner, uint64_t off, uint64_t len, int *fd,
		  uint64_t *host);
/* Maps the clusters of a PL_PLAN_ALLOC write once its data is written (`written`), or gives
 * them up; 0 or -errno (the BAT slot could not be written). */
int pl_finish_alloc(struct pl_chain *c, uint64_t off, uint64_t len, uint64_t host, int written);
/* The O_DIRECT twin of a delta's descriptor `fd` for a planned read of len bytes at host, or -1
 * where there is none or the read is not aligned for direct I/O. */
int pl_direct_fd(const struct pl_chain *c, int fd, uint64_t host, uint64_t len);
/* The same with the data in a buffer (copy mode). */
int pl_read(struct pl_chain *c, uint8_t *buf, uint64_t off, uint64_t len);
int pl_write(struct pl_chain *c, const uint8_t *buf, uint64_t off, uint64_t len, int fua);
int pl_flush(struct pl_chain *c);
int pl_discard(struct pl_chain *c, uint64_t off, uint64_t len);
int pl_write_zeroes(struct pl_chain *c, uint64_t off, uint64_t len, int no_unmap);

/* Background merge step: copies virtual cluster vc as seen below the top into the top when
 * delta `index` maps it and the top does not. Returns 1 if copied, 0 if nothing to do. */
int pl_merge_cluster(struct pl_chain *c, int index, uint32_t vc);

/* Current BAT entry of the top for vc (for tests and reporting). */
uint32_t pl_top_entry(struct pl_chain *c, uint32_t vc);

#endif
