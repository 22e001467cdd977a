/* Per-device I/O counters and latency histograms, updated lock-free by the queue threads. */
#ifndef PLOOP_UBLK_STATS_H
#define PLOOP_UBLK_STATS_H

#include <stdint.h>

enum pl_stat_op {
	PL_OP_READ,
	PL_OP_WRITE,
	PL_OP_FLUSH,
	PL_OP_DISCARD,
	PL_OP_WRITE_ZEROES,
	PL_OP_OTHER,
	PL_OP_COUNT
};

/* Bucket i counts requests that took [2^i, 2^(i+1)) microseconds (bucket 0 also < 1 us). */
#define PL_LAT_BUCKETS 32

struct pl_op_stats {
	uint64_t ops;
	uint64_t bytes;
	uint64_t errors;
	uint64_t lat_us_total;
	uint64_t lat[PL_LAT_BUCKETS];
};

struct pl_stats {
	struct pl_op_stats op[PL_OP_COUNT];
	uint64_t alloc_clusters;  /* clusters appended to the top delta */
	uint64_t cow_clusters;    /* of which copied from a lower delta */
	uint64_t zero_skips;      /* zero writes to clusters mapped nowhere (no allocation) */
	uint64_t released_clusters; /* top clusters unmapped by discard */
	uint64_t punched_clusters;  /* released clusters whose space was returned */
	uint64_t bat_writes;      /* BAT slots written */
	uint64_t syncs;           /* fdatasync calls on the top delta */
	uint64_t merged_clusters; /* clusters copied by a background merge */
	uint64_t async_reads;     /* READs moved by one transfer the queue did not wait for */
	uint64_t async_writes;    /* WRITEs so moved (zero copy; pl_plan_write) */
};

const char *pl_stat_op_name(int op);
void pl_stats_record(struct pl_stats *s, int op, uint64_t bytes, int error, uint64_t lat_ns);
void pl_stats_add(uint64_t *counter, uint64_t n);
/* Consistent-enough copy for reporting (each counter read atomically). */
void pl_stats_snapshot(const struct pl_stats *s, struct pl_stats *out);
uint64_t pl_now_ns(void);

#endif
