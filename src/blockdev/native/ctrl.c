#define _GNU_SOURCE
#include "ctrl.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

static pthread_mutex_t probe_mtx = PTHREAD_MUTEX_INITIALIZER;
static int ctrl_fd = -1;
static int probed;
static int legacy;
static struct ublk_probe cached;

int ublk_ring_init(struct io_uring *ring, unsigned entries, unsigned extra_flags)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SQE128 | extra_flags;
	p.cq_entries = entries * 2;
	p.flags |= IORING_SETUP_CQSIZE;
	int r = io_uring_queue_init_params(entries, ring, &p);
	if (r == -EINVAL && extra_flags) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
		p.cq_entries = entries * 2;
		r = io_uring_queue_init_params(entries, ring, &p);
	}
	return r;
}

static int cmd_on(int fd, uint32_t op, uint32_t dev_id, uint64_t data0, void *buf, uint16_t len)
{
	struct io_uring ring;
	int r = ublk_ring_init(&ring, 2, 0);
	if (r)
		return r;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	if (!sqe) {
		io_uring_queue_exit(&ring);
		return -EBUSY;
	}
	struct ublk_ctrl_cmd c;
	memset(&c, 0, sizeof(c));
	c.dev_id = dev_id;
	c.queue_id = UBLK_QUEUE_ID_NONE;
	c.len = len;
	c.addr = (uint64_t)(uintptr_t)buf;
	c.data[0] = data0;
	memset(sqe, 0, 128);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = fd;
	sqe->off = op; /* cmd_op overlays the offset field */
	memcpy((char *)sqe + 48, &c, sizeof(c));
	r = io_uring_submit(&ring);
	if (r == 1) {
		struct io_uring_cqe *cqe;
		do
			r = io_uring_wait_cqe(&ring, &cqe);
		while (r == -EINTR);
		if (!r) {
			r = cqe->res;
			io_uring_cqe_seen(&ring, cqe);
		}
	} else if (r >= 0) {
		r = -EIO;
	}
	io_uring_queue_exit(&ring);
	return r;
}

static uint32_t ctrl_op(unsigned nr)
{
	return legacy ? nr : UBLK_CTRL_IOCTL(nr);
}

int ublk_ctrl_cmd(unsigned nr, uint32_t dev_id, uint64_t data0, void *buf, uint16_t len)
{
	if (ctrl_fd < 0)
		return -ENODEV;
	if (legacy && nr >= UBLK_NR_GET_FEATURES)
		return -EOPNOTSUPP; /* these exist only ioctl-encoded */
	return cmd_on(ctrl_fd, ctrl_op(nr), dev_id, data0, buf, len);
}

int ublk_ctrl_ioctl_encode(void)
{
	return !legacy;
}

uint64_t ublk_ctrl_features(void)
{
	return cached.features;
}

uint32_t ublk_io_op(unsigned nr)
{
	return legacy ? nr : UBLK_IO_IOCTL(nr);
}

int ublk_get_info(uint32_t dev_id, struct ublk_dev_info *info)
{
	memset(info, 0, sizeof(*info));
	return ublk_ctrl_cmd(UBLK_NR_GET_DEV_INFO, dev_id, 0, info, sizeof(*info));
}

int ublk_get_params(uint32_t dev_id, struct ublk_params_head *p)
{
	memset(p, 0, sizeof(*p));
	p->len = sizeof(*p);
	return ublk_ctrl_cmd(UBLK_NR_GET_PARAMS, dev_id, 0, p, sizeof(*p));
}

const char *ublk_state_name(int state)
{
	switch (state) {
	case UBLK_STATE_DEAD:
		return "dead";
	case UBLK_STATE_LIVE:
		return "live";
	case UBLK_STATE_QUIESCED:
		return "quiesced";
	case UBLK_STATE_FAIL_IO:
		return "fail-io";
	default:
		return "unknown";
	}
}

static int unavailable(struct ublk_probe *p, const char *fmt, const char *detail)
{
	p->available = 0;
	snprintf(p->reason, sizeof(p->reason), fmt, detail);
	return 0;
}

int ublk_ctrl_probe(struct ublk_probe *out, int force_legacy)
{
	pthread_mutex_lock(&probe_mtx);
	if (probed && cached.available && force_legacy == legacy) {
		*out = cached;
		pthread_mutex_unlock(&probe_mtx);
		return 0;
	}
	struct ublk_probe p;
	memset(&p, 0, sizeof(p));
	struct utsname u;
	if (!uname(&u))
		snprintf(p.kernel, sizeof(p.kernel), "%s", u.release);

	if (ctrl_fd < 0) {
		int fd = open("/dev/ublk-control", O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			int e = errno;
			if (e == ENOENT)
				unavailable(&p, "%s", "/dev/ublk-control does not exist (ublk_drv is not loaded or not built for this kernel)");
			else
				unavailable(&p, "cannot open /dev/ublk-control: %s", strerror(e));
			goto done;
		}
		ctrl_fd = fd;
	}
	/* io_uring itself: disabled by sysctl, seccomp or a kernel built without it. */
	{
		struct io_uring ring;
		int r = ublk_ring_init(&ring, 2, 0);
		if (r) {
			if (r == -EPERM || r == -EACCES)
				unavailable(&p, "io_uring is not permitted (%s; check kernel.io_uring_disabled and the seccomp profile)", strerror(-r));
			else if (r == -ENOSYS)
				unavailable(&p, "%s", "io_uring is not available in this kernel");
			else
				unavailable(&p, "io_uring setup failed: %s", strerror(-r));
			goto done;
		}
		io_uring_queue_exit(&ring);
	}
	uint64_t feat = 0;
	int r = cmd_on(ctrl_fd, UBLK_CTRL_IOCTL(UBLK_NR_GET_FEATURES), UBLK_DEV_ID_ANY, 0, &feat,
		       sizeof(feat));
	if (r >= 0) {
		p.have_features = 1;
		p.features = feat;
		p.ioctl_encode = 1;
	} else if (r == -EPERM || r == -EACCES) {
		unavailable(&p, "ublk control commands are not permitted: %s (needs CAP_SYS_ADMIN)", strerror(-r));
		goto done;
	} else {
		/* Before 6.5. An unknown device id answers -ENODEV when the encoding is understood. */
		struct ublk_dev_info info;
		r = cmd_on(ctrl_fd, UBLK_CTRL_IOCTL(UBLK_NR_GET_DEV_INFO), 0x7ffffffe, 0, &info,
			   sizeof(info));
		p.ioctl_encode = r == -ENODEV || r >= 0;
		p.features = UBLK_F_NEED_GET_DATA | UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
		if (p.ioctl_encode)
			p.features |= UBLK_F_CMD_IOCTL_ENCODE;
	}
	if (force_legacy)
		p.ioctl_encode = 0;
	legacy = !p.ioctl_encode;
	p.available = 1;
done:
	cached = p;
	probed = 1;
	*out = p;
	pthread_mutex_unlock(&probe_mtx);
	return 0;
}
