/*
 * A ublk device served by this process: its control-plane lifecycle (add/start, recover, stop,
 * quiesce, delete), the queues that serve it, the ploop chain behind it, and the pause gate that
 * lets the control plane swap the chain between requests.
 *
 * Every function here may block and must run off the JavaScript thread, except dev_get/dev_put,
 * dev_list and dev_stats.
 */
#ifndef PLOOP_UBLK_DEVICE_H
#define PLOOP_UBLK_DEVICE_H

#include <pthread.h>
#include <stdint.h>

#include "ploop.h"
#include "queue.h"
#include "stats.h"
#include "uapi.h"

struct dev_config {
	uint32_t dev_id;       /* UBLK_DEV_ID_ANY to let the kernel choose */
	uint16_t queues;
	uint16_t depth;
	uint32_t max_io_bytes; /* per request; bounds max_sectors; 0 = default for the mode */
	int zero_copy;         /* ask for UBLK_F_AUTO_BUF_REG when the kernel has it (>= 6.16) */
	int direct_read;       /* large reads bypass the backing files' page cache (O_DIRECT) */
	uint64_t size;         /* bytes */
	uint32_t cluster;      /* io_opt and discard granularity */
	int read_only;
	unsigned debug_delay_ms; /* fault injection: delay every WRITE/FLUSH (tests only) */
};

struct ublk_device {
	uint32_t id;
	struct ublk_dev_info info; /* as negotiated (flags are what ADD_DEV returned) */
	int cfd;
	int nq;
	struct ublk_queue *q;
	int running; /* queues are serving */
	int direct_read;
	unsigned debug_delay_ms;

	pthread_mutex_t op_mtx; /* one control operation at a time */

	pthread_mutex_t gate_mtx;
	pthread_cond_t gate_cv;
	int paused;
	int active;               /* requests being served */
	struct pl_chain *chain;   /* replaced only while paused with no active request */
	unsigned chain_gen;       /* bumped on every swap (cancels a running merge) */
	int merging;

	struct pl_stats stats;

	int refs;    /* table reference + dev_get callers */
	int removed; /* no longer in the table */
	struct ublk_device *next;
};

/* A device object not yet attached; its stats may be given to pl_chain_open. */
struct ublk_device *dev_alloc(void);
/* Frees a device that never reached the table (and its chain). */
void dev_free_unattached(struct ublk_device *d);

/* ADD_DEV + SET_PARAMS + queues + START_DEV with `chain` (owned by the device from then on). */
int dev_create(struct ublk_device *d, const struct dev_config *cfg, struct pl_chain *chain,
	       char *err, size_t errlen);
/* START/END_USER_RECOVERY of a device left by a dead (or quiesced) server. */
int dev_recover(struct ublk_device *d, uint32_t dev_id, struct pl_chain *chain,
		const struct dev_config *cfg, char *err, size_t errlen);

struct ublk_device *dev_get(uint32_t id);
void dev_put(struct ublk_device *d);
/* Up to max ids of attached devices; returns the count. */
int dev_list(uint32_t *ids, int max);

/* STOP_DEV; with only_if_unused TRY_STOP_DEV (kernel >= 7.0, SAFE_STOP_DEV): -EBUSY while the
 * block device is open (mounted). */
int dev_stop(struct ublk_device *d, int only_if_unused);
int dev_delete(struct ublk_device *d);
/* QUIESCE_DEV, then let go of the device (it stays in the kernel, QUIESCED, for a new server);
 * returns once the kernel reports it QUIESCED (-ETIMEDOUT if that takes over 10 s). */
int dev_quiesce(struct ublk_device *d, uint32_t timeout_ms);
/* Deletes a device this process does not serve (e.g. left behind by a dead server). */
int dev_delete_orphan(uint32_t id);

int dev_pause(struct ublk_device *d);
/* Resumes; with new_chain the device switches to it (the old one is closed). */
int dev_resume(struct ublk_device *d, struct pl_chain *new_chain);
int dev_flush(struct ublk_device *d);
int dev_update_size(struct ublk_device *d, uint64_t bytes);
/* Copies every cluster delta `index` maps (and the top does not) into the top, while I/O goes
 * on. Returns the number of clusters copied, or -errno; -ECANCELED if the chain was swapped. */
int64_t dev_merge_lower(struct ublk_device *d, int index);

#endif
