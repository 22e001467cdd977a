/*
 * Control commands on /dev/ublk-control. Each command is an IORING_OP_URING_CMD on a small
 * SQE128 ring of its own, so commands may run concurrently from several threads (START_DEV and
 * END_USER_RECOVERY block until the queues are armed; DEL_DEV until every reference is gone).
 */
#ifndef PLOOP_UBLK_CTRL_H
#define PLOOP_UBLK_CTRL_H

#include <stddef.h>
#include <stdint.h>

#include "uapi.h"

struct ublk_probe {
	int available;
	char reason[256];
	uint64_t features;   /* GET_FEATURES mask, or the assumed mask before 6.5 */
	int have_features;   /* GET_FEATURES answered */
	int ioctl_encode;    /* commands use ioctl encoding (else legacy numbers) */
	char kernel[128];    /* uname release */
};

/* Opens the control device (once) and detects the opcode encoding and features. Cached;
 * force_legacy (for tests) selects legacy opcodes even when ioctl encoding works. */
int ublk_ctrl_probe(struct ublk_probe *out, int force_legacy);

/* Raw command; returns the CQE result (>= 0 ok, -errno). Requires a successful probe. */
int ublk_ctrl_cmd(unsigned nr, uint32_t dev_id, uint64_t data0, void *buf, uint16_t len);

/* True when commands are ioctl-encoded (also used for the I/O commands). */
int ublk_ctrl_ioctl_encode(void);
uint64_t ublk_ctrl_features(void);
/* Encodes an I/O command number for the current mode. */
uint32_t ublk_io_op(unsigned nr);

int ublk_get_info(uint32_t dev_id, struct ublk_dev_info *info);
int ublk_get_params(uint32_t dev_id, struct ublk_params_head *p);

/* Builds a ring with 128-byte SQEs; extra setup flags are dropped if the kernel refuses them. */
struct io_uring;
int ublk_ring_init(struct io_uring *ring, unsigned entries, unsigned extra_flags);

const char *ublk_state_name(int state);

#endif
