/*
 * ublk kernel ABI used by the ploop data path: the subset of include/uapi/linux/ublk_cmd.h
 * that this engine needs, restated from the documented layout (kernel 6.0 .. 7.x).
 * All structures are little-endian and have no implicit padding.
 */
#ifndef PLOOP_UBLK_UAPI_H
#define PLOOP_UBLK_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* ---- control commands (/dev/ublk-control) ------------------------------------------------ */

/* Payload of every control command; lives in the 80-byte command area of a 128-byte SQE. */
struct ublk_ctrl_cmd {
	__u32 dev_id;       /* target device, or UBLK_DEV_ID_ANY for ADD_DEV */
	__u16 queue_id;     /* UBLK_QUEUE_ID_NONE unless the command is per queue */
	__u16 len;          /* length of the buffer at addr */
	__u64 addr;         /* user buffer for in/out data */
	__u64 data[1];      /* inline argument */
	__u16 dev_path_len; /* only for unprivileged devices */
	__u16 pad;
	__u32 reserved;
};

/* Device description exchanged by ADD_DEV / GET_DEV_INFO (64 bytes). */
struct ublk_dev_info {
	__u16 nr_hw_queues;
	__u16 queue_depth;
	__u16 state;
	__u16 pad0;
	__u32 max_io_buf_bytes;
	__u32 dev_id;
	__s32 ublksrv_pid;
	__u32 pad1;
	__u64 flags;
	__u64 ublksrv_flags;
	__u32 owner_uid;
	__u32 owner_gid;
	__u64 reserved1;
	__u64 reserved2;
};

#define UBLK_DEV_ID_ANY 0xffffffffU
#define UBLK_QUEUE_ID_NONE 0xffffU

/* Command numbers. Legacy encoding is the bare number; ioctl encoding wraps it in _IOR/_IOWR. */
#define UBLK_NR_GET_QUEUE_AFFINITY 0x01
#define UBLK_NR_GET_DEV_INFO 0x02
#define UBLK_NR_ADD_DEV 0x04
#define UBLK_NR_DEL_DEV 0x05
#define UBLK_NR_START_DEV 0x06
#define UBLK_NR_STOP_DEV 0x07
#define UBLK_NR_SET_PARAMS 0x08
#define UBLK_NR_GET_PARAMS 0x09
#define UBLK_NR_START_USER_RECOVERY 0x10
#define UBLK_NR_END_USER_RECOVERY 0x11
#define UBLK_NR_GET_DEV_INFO2 0x12
#define UBLK_NR_GET_FEATURES 0x13  /* ioctl encoding only, kernel >= 6.5 */
#define UBLK_NR_DEL_DEV_ASYNC 0x14 /* ioctl only, >= 6.9 */
#define UBLK_NR_UPDATE_SIZE 0x15   /* ioctl only, >= 6.16 */
#define UBLK_NR_QUIESCE_DEV 0x16   /* ioctl only, >= 6.16 */
#define UBLK_NR_TRY_STOP_DEV 0x17  /* ioctl only, >= 7.0 */

/* Which numbers are "read" (_IOR) commands; all others are _IOWR. */
#define UBLK_CTRL_IS_READ(nr)                                                                      \
	((nr) == UBLK_NR_GET_QUEUE_AFFINITY || (nr) == UBLK_NR_GET_DEV_INFO ||                     \
	 (nr) == UBLK_NR_GET_PARAMS || (nr) == UBLK_NR_GET_DEV_INFO2 ||                            \
	 (nr) == UBLK_NR_GET_FEATURES || (nr) == UBLK_NR_DEL_DEV_ASYNC)

#define UBLK_CTRL_IOCTL(nr)                                                                        \
	(UBLK_CTRL_IS_READ(nr) ? (__u32)_IOR('u', (nr), struct ublk_ctrl_cmd)                     \
			       : (__u32)_IOWR('u', (nr), struct ublk_ctrl_cmd))

/* Device states reported by GET_DEV_INFO. */
#define UBLK_STATE_DEAD 0
#define UBLK_STATE_LIVE 1
#define UBLK_STATE_QUIESCED 2
#define UBLK_STATE_FAIL_IO 3

/* Feature / device flags (GET_FEATURES mask, ADD_DEV flags). */
#define UBLK_F_SUPPORT_ZERO_COPY (1ULL << 0)
#define UBLK_F_URING_CMD_COMP_IN_TASK (1ULL << 1)
#define UBLK_F_NEED_GET_DATA (1ULL << 2)
#define UBLK_F_USER_RECOVERY (1ULL << 3)
#define UBLK_F_USER_RECOVERY_REISSUE (1ULL << 4)
#define UBLK_F_UNPRIVILEGED_DEV (1ULL << 5)
#define UBLK_F_CMD_IOCTL_ENCODE (1ULL << 6)
#define UBLK_F_USER_COPY (1ULL << 7)
#define UBLK_F_ZONED (1ULL << 8)
#define UBLK_F_USER_RECOVERY_FAIL_IO (1ULL << 9)
#define UBLK_F_UPDATE_SIZE (1ULL << 10)
#define UBLK_F_AUTO_BUF_REG (1ULL << 11)
#define UBLK_F_QUIESCE (1ULL << 12)
#define UBLK_F_PER_IO_DAEMON (1ULL << 13)
#define UBLK_F_BUF_REG_OFF_DAEMON (1ULL << 14)
#define UBLK_F_BATCH_IO (1ULL << 15)
#define UBLK_F_INTEGRITY (1ULL << 16)
#define UBLK_F_SAFE_STOP_DEV (1ULL << 17)
#define UBLK_F_NO_AUTO_PART_SCAN (1ULL << 18)
#define UBLK_F_SHMEM_ZC (1ULL << 19)

/* ---- parameters (SET_PARAMS / GET_PARAMS) ------------------------------------------------- */

#define UBLK_ATTR_READ_ONLY (1U << 0)
#define UBLK_ATTR_ROTATIONAL (1U << 1)
#define UBLK_ATTR_VOLATILE_CACHE (1U << 2)
#define UBLK_ATTR_FUA (1U << 3)

struct ublk_param_basic {
	__u32 attrs;
	__u8 logical_bs_shift;
	__u8 physical_bs_shift;
	__u8 io_opt_shift;
	__u8 io_min_shift;
	__u32 max_sectors;
	__u32 chunk_sectors;
	__u64 dev_sectors;
	__u64 virt_boundary_mask;
};

struct ublk_param_discard {
	__u32 discard_alignment;
	__u32 discard_granularity;
	__u32 max_discard_sectors;
	__u32 max_write_zeroes_sectors;
	__u16 max_discard_segments;
	__u16 reserved0;
};

struct ublk_param_devt {
	__u32 char_major;
	__u32 char_minor;
	__u32 disk_major;
	__u32 disk_minor;
};

#define UBLK_PARAM_TYPE_BASIC (1U << 0)
#define UBLK_PARAM_TYPE_DISCARD (1U << 1)
#define UBLK_PARAM_TYPE_DEVT (1U << 2)

/* Leading part of struct ublk_params (basic at 8, discard at 40, devt at 60). The kernel clamps
 * `len` to what it knows, so sending this prefix is valid on every version. */
struct ublk_params_head {
	__u32 len;
	__u32 types;
	struct ublk_param_basic basic;
	struct ublk_param_discard discard;
	struct ublk_param_devt devt;
};

/* ---- data path (/dev/ublkcN) -------------------------------------------------------------- */

/* Per-tag request descriptor in the read-only mmap of the char device (24 bytes). */
struct ublk_io_desc {
	__u32 op_flags; /* op in bits 0-7, UBLK_IO_F_* above */
	__u32 nr_sectors;
	__u64 start_sector;
	__u64 addr;
};

/* Payload of FETCH_REQ / COMMIT_AND_FETCH_REQ (16 bytes). */
struct ublk_io_cmd {
	__u16 q_id;
	__u16 tag;
	__s32 result;
	__u64 addr;
};

#define UBLK_NR_IO_FETCH_REQ 0x20
#define UBLK_NR_IO_COMMIT_AND_FETCH_REQ 0x21
#define UBLK_IO_IOCTL(nr) ((__u32)_IOWR('u', (nr), struct ublk_io_cmd))

#define UBLK_IO_RES_OK 0
#define UBLK_IO_RES_NEED_GET_DATA 1
#define UBLK_IO_RES_ABORT (-19) /* -ENODEV: queue stopping or quiescing */

#define UBLK_IO_OP_READ 0
#define UBLK_IO_OP_WRITE 1
#define UBLK_IO_OP_FLUSH 2
#define UBLK_IO_OP_DISCARD 3
#define UBLK_IO_OP_WRITE_SAME 4
#define UBLK_IO_OP_WRITE_ZEROES 5

#define UBLK_IO_F_FUA (1U << 13)
#define UBLK_IO_F_NOUNMAP (1U << 15)

/* Descriptor array of queue q is mapped at q * round_up(UBLK_MAX_QUEUE_DEPTH * 24, page). */
#define UBLK_MAX_QUEUE_DEPTH 4096
#define UBLK_MAX_NR_QUEUES 4096

#endif
