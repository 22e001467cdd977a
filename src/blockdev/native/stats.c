#include "stats.h"

#include <time.h>

static const char *const op_names[PL_OP_COUNT] = {
	"read", "write", "flush", "discard", "writeZeroes", "other",
};

const char *pl_stat_op_name(int op)
{
	return op >= 0 && op < PL_OP_COUNT ? op_names[op] : "other";
}

uint64_t pl_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void pl_stats_add(uint64_t *counter, uint64_t n)
{
	__atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

void pl_stats_record(struct pl_stats *s, int op, uint64_t bytes, int error, uint64_t lat_ns)
{
	if (op < 0 || op >= PL_OP_COUNT)
		op = PL_OP_OTHER;
	struct pl_op_stats *o = &s->op[op];
	uint64_t us = lat_ns / 1000;
	int b = 0;
	while (b < PL_LAT_BUCKETS - 1 && (us >> (b + 1)) != 0)
		b++;
	pl_stats_add(&o->ops, 1);
	if (error)
		pl_stats_add(&o->errors, 1);
	else
		pl_stats_add(&o->bytes, bytes);
	pl_stats_add(&o->lat_us_total, us);
	pl_stats_add(&o->lat[b], 1);
}

void pl_stats_snapshot(const struct pl_stats *s, struct pl_stats *out)
{
	const uint64_t *src = (const uint64_t *)s;
	uint64_t *dst = (uint64_t *)out;
	for (unsigned i = 0; i < sizeof(*s) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}
