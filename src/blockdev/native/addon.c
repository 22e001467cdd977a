/*
 * N-API binding (plain C). Everything that can block — every ublk control command, queue
 * start/stop, pause, flush, merge — runs in napi_async_work on the libuv pool and settles a
 * Promise; only argument parsing, probe, stats and listDevices run on the JavaScript thread.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <errno.h>
#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctrl.h"
#include "device.h"
#include "ploop.h"
#include "stats.h"

#define CHECK(call)                                                                                \
	do {                                                                                       \
		if ((call) != napi_ok)                                                             \
			return NULL;                                                               \
	} while (0)

/* ---- argument helpers ------------------------------------------------------------------ */

static napi_value throw_inval(napi_env env, const char *msg)
{
	napi_throw_type_error(env, "EINVAL", msg);
	return NULL;
}

static int has_prop(napi_env env, napi_value obj, const char *name, napi_value *out)
{
	bool has = false;
	if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has)
		return 0;
	if (napi_get_named_property(env, obj, name, out) != napi_ok)
		return 0;
	napi_valuetype t;
	napi_typeof(env, *out, &t);
	return t != napi_undefined && t != napi_null;
}

/* A non-negative integer given as a number or a bigint. */
static int value_u64(napi_env env, napi_value v, uint64_t *out)
{
	napi_valuetype t;
	if (napi_typeof(env, v, &t) != napi_ok)
		return 0;
	if (t == napi_bigint) {
		bool lossless;
		return napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok && lossless;
	}
	if (t != napi_number)
		return 0;
	double d;
	napi_get_value_double(env, v, &d);
	if (!(d >= 0) || d > 9007199254740991.0 || d != (double)(uint64_t)d)
		return 0;
	*out = (uint64_t)d;
	return 1;
}

static int prop_u64(napi_env env, napi_value obj, const char *name, uint64_t *out, int required,
		    char *err, size_t errlen)
{
	napi_value v;
	if (!has_prop(env, obj, name, &v)) {
		if (required)
			snprintf(err, errlen, "%s is required", name);
		return !required;
	}
	if (!value_u64(env, v, out)) {
		snprintf(err, errlen, "%s must be a non-negative integer", name);
		return 0;
	}
	return 1;
}

static int prop_bool(napi_env env, napi_value obj, const char *name, int *out)
{
	napi_value v;
	bool b = false;
	if (has_prop(env, obj, name, &v))
		napi_get_value_bool(env, v, &b);
	*out = b;
	return 1;
}

static int arg_dev_id(napi_env env, napi_value v, uint32_t *id)
{
	uint64_t x;
	if (!value_u64(env, v, &x) || x >= UBLK_DEV_ID_ANY)
		return 0;
	*id = (uint32_t)x;
	return 1;
}

/* Parses deltas[] into a chain whose counters go to `stats`. Returns NULL after throwing. */
static struct pl_chain *parse_chain(napi_env env, napi_value deltas, uint64_t size,
				    struct pl_stats *stats, uint32_t *cluster_out)
{
	char err[256] = "";
	bool is_array = false;
	napi_is_array(env, deltas, &is_array);
	uint32_t n = 0;
	if (!is_array || napi_get_array_length(env, deltas, &n) != napi_ok || n == 0 ||
	    n > PL_MAX_DELTAS) {
		throw_inval(env, "deltas must be a non-empty array (base first, top last)");
		return NULL;
	}
	struct pl_delta_config *cfg = calloc(n, sizeof(*cfg));
	if (!cfg) {
		napi_throw_error(env, "ENOMEM", "out of memory");
		return NULL;
	}
	uint32_t cluster = 0;
	for (uint32_t i = 0; i < n; i++) {
		napi_value o, v;
		uint64_t x;
		napi_get_element(env, deltas, i, &o);
		char what[64];
		snprintf(what, sizeof(what), "deltas[%u]", i);
		if (!prop_u64(env, o, "fd", &x, 1, err, sizeof(err)) || x > 0x7fffffff)
			goto bad;
		cfg[i].fd = (int)x;
		if (!prop_u64(env, o, "version", &x, 1, err, sizeof(err)) || x > 2)
			goto bad;
		cfg[i].version = (int)x;
		if (!prop_u64(env, o, "clusterSize", &x, 1, err, sizeof(err)) || x > 0xffffffffULL)
			goto bad;
		if (cluster && x != cluster) {
			snprintf(err, sizeof(err), "every delta must have the same cluster size");
			goto bad;
		}
		cluster = (uint32_t)x;
		prop_bool(env, o, "writable", &cfg[i].writable);
		if (cfg[i].version != 0) {
			if (!prop_u64(env, o, "dataOff", &cfg[i].data_off, 1, err, sizeof(err)))
				goto bad;
			bool is_ta = false;
			if (!has_prop(env, o, "bat", &v) || napi_is_typedarray(env, v, &is_ta) != napi_ok ||
			    !is_ta) {
				snprintf(err, sizeof(err), "bat must be a Uint32Array");
				goto bad;
			}
			napi_typedarray_type tt;
			size_t len;
			void *data;
			napi_get_typedarray_info(env, v, &tt, &len, &data, NULL, NULL);
			if (tt != napi_uint32_array || len == 0 || len > 0xffffffffULL) {
				snprintf(err, sizeof(err), "bat must be a non-empty Uint32Array");
				goto bad;
			}
			cfg[i].bat = data;
			cfg[i].bat_entries = (uint32_t)len;
		}
		continue;
bad:
		{
			char msg[340];
			snprintf(msg, sizeof(msg), "%s: %s", what, err[0] ? err : "invalid");
			free(cfg);
			throw_inval(env, msg);
			return NULL;
		}
	}
	struct pl_chain *c = NULL;
	int r = pl_chain_open(cfg, (int)n, cluster, size, stats, &c, err, sizeof(err));
	free(cfg);
	if (r) {
		napi_throw_error(env, r == -EINVAL ? "EINVAL" : strerrorname_np(-r), err);
		return NULL;
	}
	*cluster_out = cluster;
	return c;
}

/* ---- async work ------------------------------------------------------------------------ */

enum op_kind {
	K_CREATE,
	K_RECOVER,
	K_STOP,
	K_TRY_STOP,
	K_DELETE,
	K_QUIESCE,
	K_UPDATE_SIZE,
	K_PAUSE,
	K_RESUME,
	K_FLUSH,
	K_INFO,
	K_MERGE,
};

static const char *const kind_names[] = {
	"createDevice", "recoverDevice", "stopDevice", "tryStopDevice", "deleteDevice", "quiesceDevice", "updateSize",
	"pause", "resume", "flush", "getInfo", "mergeLower",
};

struct work {
	napi_async_work aw;
	napi_deferred deferred;
	enum op_kind kind;
	uint32_t dev_id;
	uint64_t arg;
	struct dev_config cfg;
	struct ublk_device *dev; /* create/recover: new object; others: referenced device */
	struct pl_chain *chain;
	int result;
	int64_t count;
	char err[512];
	struct ublk_dev_info info;
	struct ublk_params_head params;
	int params_ok;
};

static struct ublk_device *need_dev(struct work *w)
{
	struct ublk_device *d = dev_get(w->dev_id);
	if (!d) {
		w->result = -ENODEV;
		snprintf(w->err, sizeof(w->err), "device %u is not served by this process", w->dev_id);
	}
	return d;
}

static void execute(napi_env env, void *data)
{
	(void)env;
	struct work *w = data;
	struct ublk_device *d;
	switch (w->kind) {
	case K_CREATE:
	case K_RECOVER:
		if (w->kind == K_CREATE)
			w->result = dev_create(w->dev, &w->cfg, w->chain, w->err, sizeof(w->err));
		else
			w->result = dev_recover(w->dev, w->dev_id, w->chain, &w->cfg, w->err,
						sizeof(w->err));
		if (w->result < 0) {
			dev_free_unattached(w->dev);
			pl_chain_close(w->chain);
		} else {
			w->dev_id = w->dev->id;
			w->info = w->dev->info;
		}
		w->dev = NULL;
		w->chain = NULL;
		return;
	case K_DELETE:
		d = dev_get(w->dev_id);
		if (!d) {
			w->result = dev_delete_orphan(w->dev_id);
			return;
		}
		w->result = dev_delete(d);
		dev_put(d);
		return;
	case K_INFO:
		w->result = ublk_get_info(w->dev_id, &w->info);
		if (w->result >= 0)
			w->params_ok = ublk_get_params(w->dev_id, &w->params) >= 0;
		return;
	case K_RESUME:
		w->result = dev_resume(w->dev, w->chain);
		if (w->result < 0)
			pl_chain_close(w->chain);
		w->chain = NULL;
		dev_put(w->dev);
		w->dev = NULL;
		return;
	default:
		break;
	}
	d = need_dev(w);
	if (!d)
		return;
	switch (w->kind) {
	case K_STOP:
	case K_TRY_STOP:
		w->result = dev_stop(d, w->kind == K_TRY_STOP);
		break;
	case K_QUIESCE:
		w->result = dev_quiesce(d, (uint32_t)w->arg);
		break;
	case K_UPDATE_SIZE:
		w->result = dev_update_size(d, w->arg);
		break;
	case K_PAUSE:
		w->result = dev_pause(d);
		break;
	case K_FLUSH:
		w->result = dev_flush(d);
		break;
	case K_MERGE:
		w->count = dev_merge_lower(d, (int)w->arg);
		w->result = w->count < 0 ? (int)w->count : 0;
		break;
	default:
		w->result = -EINVAL;
	}
	dev_put(d);
}

static napi_value make_error(napi_env env, struct work *w)
{
	int e = -w->result;
	const char *name = strerrorname_np(e);
	char msg[700];
	if (w->err[0])
		snprintf(msg, sizeof(msg), "%s: %s", kind_names[w->kind], w->err);
	else
		snprintf(msg, sizeof(msg), "%s(%u): %s", kind_names[w->kind], w->dev_id, strerror(e));
	napi_value m, code, errno_v, err;
	napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
	napi_create_string_utf8(env, name ? name : "EIO", NAPI_AUTO_LENGTH, &code);
	napi_create_error(env, code, m, &err);
	napi_create_int32(env, e, &errno_v);
	napi_set_named_property(env, err, "errno", errno_v);
	return err;
}

static void set_num(napi_env env, napi_value o, const char *k, double v)
{
	napi_value x;
	napi_create_double(env, v, &x);
	napi_set_named_property(env, o, k, x);
}

static void set_str(napi_env env, napi_value o, const char *k, const char *v)
{
	napi_value x;
	napi_create_string_utf8(env, v, NAPI_AUTO_LENGTH, &x);
	napi_set_named_property(env, o, k, x);
}

static void set_big(napi_env env, napi_value o, const char *k, uint64_t v)
{
	napi_value x;
	napi_create_bigint_uint64(env, v, &x);
	napi_set_named_property(env, o, k, x);
}

static void set_bool(napi_env env, napi_value o, const char *k, int v)
{
	napi_value x;
	napi_get_boolean(env, v, &x);
	napi_set_named_property(env, o, k, x);
}

static napi_value device_result(napi_env env, struct work *w)
{
	napi_value o;
	char path[64];
	napi_create_object(env, &o);
	set_num(env, o, "devId", w->dev_id);
	set_big(env, o, "flags", w->info.flags);
	snprintf(path, sizeof(path), "/dev/ublkb%u", w->dev_id);
	set_str(env, o, "blockPath", path);
	snprintf(path, sizeof(path), "/dev/ublkc%u", w->dev_id);
	set_str(env, o, "charPath", path);
	set_num(env, o, "queues", w->info.nr_hw_queues);
	set_num(env, o, "depth", w->info.queue_depth);
	set_num(env, o, "maxIoBytes", w->info.max_io_buf_bytes);
	return o;
}

static napi_value info_result(napi_env env, struct work *w)
{
	napi_value o;
	napi_create_object(env, &o);
	set_num(env, o, "devId", w->info.dev_id);
	set_str(env, o, "state", ublk_state_name(w->info.state));
	set_num(env, o, "queues", w->info.nr_hw_queues);
	set_num(env, o, "depth", w->info.queue_depth);
	set_num(env, o, "maxIoBytes", w->info.max_io_buf_bytes);
	set_num(env, o, "serverPid", w->info.ublksrv_pid);
	set_big(env, o, "flags", w->info.flags);
	struct ublk_device *d = dev_get(w->info.dev_id);
	set_bool(env, o, "servedHere", d != NULL);
	if (d)
		dev_put(d);
	if (w->params_ok) {
		set_num(env, o, "sizeBytes", (double)(w->params.basic.dev_sectors << 9));
		if (w->params.types & UBLK_PARAM_TYPE_DEVT) {
			char s[32];
			snprintf(s, sizeof(s), "%u:%u", w->params.devt.disk_major, w->params.devt.disk_minor);
			set_str(env, o, "blockDevt", s);
			snprintf(s, sizeof(s), "%u:%u", w->params.devt.char_major, w->params.devt.char_minor);
			set_str(env, o, "charDevt", s);
		}
	}
	return o;
}

static void complete(napi_env env, napi_status status, void *data)
{
	struct work *w = data;
	napi_value v = NULL;
	if (status != napi_ok && w->result >= 0) {
		w->result = -ECANCELED;
	}
	if (w->result < 0) {
		napi_reject_deferred(env, w->deferred, make_error(env, w));
	} else {
		switch (w->kind) {
		case K_CREATE:
		case K_RECOVER:
			v = device_result(env, w);
			break;
		case K_INFO:
			v = info_result(env, w);
			break;
		case K_MERGE:
			napi_create_double(env, (double)w->count, &v);
			break;
		default:
			napi_get_undefined(env, &v);
		}
		napi_resolve_deferred(env, w->deferred, v);
	}
	napi_delete_async_work(env, w->aw);
	free(w);
}

static napi_value queue_work(napi_env env, struct work *w)
{
	napi_value promise, name;
	if (napi_create_promise(env, &w->deferred, &promise) != napi_ok) {
		free(w);
		return NULL;
	}
	napi_create_string_utf8(env, kind_names[w->kind], NAPI_AUTO_LENGTH, &name);
	napi_create_async_work(env, NULL, name, execute, complete, w, &w->aw);
	napi_queue_async_work(env, w->aw);
	return promise;
}

static struct work *new_work(napi_env env, enum op_kind kind)
{
	struct work *w = calloc(1, sizeof(*w));
	if (!w)
		napi_throw_error(env, "ENOMEM", "out of memory");
	else
		w->kind = kind;
	return w;
}

static int require_probe(napi_env env)
{
	struct ublk_probe p;
	ublk_ctrl_probe(&p, !ublk_ctrl_ioctl_encode());
	if (!p.available) {
		char msg[300];
		snprintf(msg, sizeof(msg), "ublk unavailable: %s", p.reason);
		napi_throw_error(env, "EUBLKUNAVAILABLE", msg);
		return 0;
	}
	return 1;
}

/* ---- exported functions ---------------------------------------------------------------- */

static napi_value js_probe(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1], o;
	CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	int force_legacy = 0;
	if (argc >= 1) {
		napi_valuetype t;
		napi_typeof(env, argv[0], &t);
		if (t == napi_object)
			prop_bool(env, argv[0], "forceLegacy", &force_legacy);
	}
	struct ublk_probe p;
	ublk_ctrl_probe(&p, force_legacy);
	napi_create_object(env, &o);
	set_bool(env, o, "available", p.available);
	if (!p.available)
		set_str(env, o, "reason", p.reason);
	set_big(env, o, "features", p.features);
	set_bool(env, o, "haveFeatures", p.have_features);
	set_bool(env, o, "ioctlEncode", p.ioctl_encode);
	set_str(env, o, "kernel", p.kernel);
	return o;
}

/* cfg: { deltas, sizeBytes, queues?, depth?, maxIoBytes?, devId?, readOnly?, zeroCopy?,
 *        directRead?, debugDelayMs? } */
static napi_value create_or_recover(napi_env env, napi_callback_info info, enum op_kind kind)
{
	size_t argc = 2;
	napi_value argv[2];
	CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	napi_value cfgv = kind == K_CREATE ? argv[0] : argv[1];
	if (argc < (kind == K_CREATE ? 1u : 2u))
		return throw_inval(env, "missing configuration");
	napi_valuetype t;
	napi_typeof(env, cfgv, &t);
	if (t != napi_object)
		return throw_inval(env, "configuration must be an object");
	if (!require_probe(env))
		return NULL;
	uint32_t dev_id = UBLK_DEV_ID_ANY;
	if (kind == K_RECOVER && !arg_dev_id(env, argv[0], &dev_id))
		return throw_inval(env, "devId must be a device number");

	char err[256] = "";
	uint64_t size = 0, queues = 1, depth = 64, max_io = 0, id = UBLK_DEV_ID_ANY, delay = 0;
	if (!prop_u64(env, cfgv, "sizeBytes", &size, kind == K_CREATE, err, sizeof(err)) ||
	    !prop_u64(env, cfgv, "queues", &queues, 0, err, sizeof(err)) ||
	    !prop_u64(env, cfgv, "depth", &depth, 0, err, sizeof(err)) ||
	    !prop_u64(env, cfgv, "maxIoBytes", &max_io, 0, err, sizeof(err)) ||
	    !prop_u64(env, cfgv, "devId", &id, 0, err, sizeof(err)) ||
	    !prop_u64(env, cfgv, "debugDelayMs", &delay, 0, err, sizeof(err)))
		return throw_inval(env, err);
	if (kind == K_CREATE && (size == 0 || size % 4096))
		return throw_inval(env, "sizeBytes must be a positive multiple of 4096");
	if (queues < 1 || queues > 64 || depth < 1 || depth > UBLK_MAX_QUEUE_DEPTH)
		return throw_inval(env, "queues must be 1..64 and depth 1..4096");
	if (max_io && (max_io < 4096 || max_io > (32u << 20) || max_io % 4096))
		return throw_inval(env, "maxIoBytes must be a multiple of 4096 up to 32 MiB");
	if (id > UBLK_DEV_ID_ANY)
		return throw_inval(env, "devId out of range");
	int read_only = 0;
	prop_bool(env, cfgv, "readOnly", &read_only);
	int zero_copy = 1; /* by default, when the kernel has it */
	napi_value zv;
	if (has_prop(env, cfgv, "zeroCopy", &zv))
		prop_bool(env, cfgv, "zeroCopy", &zero_copy);
	int direct_read = 1;
	if (has_prop(env, cfgv, "directRead", &zv))
		prop_bool(env, cfgv, "directRead", &direct_read);
	napi_value deltas;
	if (!has_prop(env, cfgv, "deltas", &deltas))
		return throw_inval(env, "deltas is required");

	struct work *w = new_work(env, kind);
	if (!w)
		return NULL;
	w->dev = dev_alloc();
	if (!w->dev) {
		free(w);
		napi_throw_error(env, "ENOMEM", "out of memory");
		return NULL;
	}
	uint32_t cluster = 0;
	w->chain = parse_chain(env, deltas, size, &w->dev->stats, &cluster);
	if (!w->chain) {
		dev_free_unattached(w->dev);
		free(w);
		return NULL;
	}
	if (!read_only && w->chain->read_only) {
		pl_chain_close(w->chain);
		dev_free_unattached(w->dev);
		free(w);
		return throw_inval(env, "the top delta is not writable (set readOnly for a read-only device)");
	}
	w->dev_id = kind == K_CREATE ? (uint32_t)id : dev_id;
	w->cfg.dev_id = (uint32_t)id;
	w->cfg.queues = (uint16_t)queues;
	w->cfg.depth = (uint16_t)depth;
	w->cfg.max_io_bytes = (uint32_t)max_io;
	w->cfg.size = size;
	w->cfg.cluster = cluster;
	w->cfg.read_only = read_only;
	w->cfg.zero_copy = zero_copy;
	w->cfg.direct_read = direct_read;
	w->cfg.debug_delay_ms = (unsigned)delay;
	return queue_work(env, w);
}

static napi_value js_create(napi_env env, napi_callback_info info)
{
	return create_or_recover(env, info, K_CREATE);
}

static napi_value js_recover(napi_env env, napi_callback_info info)
{
	return create_or_recover(env, info, K_RECOVER);
}

/* (devId[, arg]) -> Promise */
static napi_value simple(napi_env env, napi_callback_info info, enum op_kind kind, int need_arg)
{
	size_t argc = 2;
	napi_value argv[2];
	CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	uint32_t id;
	if (argc < 1 || !arg_dev_id(env, argv[0], &id))
		return throw_inval(env, "devId must be a device number");
	uint64_t arg = 0;
	if (need_arg && (argc < 2 || !value_u64(env, argv[1], &arg)))
		return throw_inval(env, "second argument must be a non-negative integer");
	if (!require_probe(env))
		return NULL;
	struct work *w = new_work(env, kind);
	if (!w)
		return NULL;
	w->dev_id = id;
	w->arg = arg;
	return queue_work(env, w);
}

static napi_value js_stop(napi_env env, napi_callback_info i) { return simple(env, i, K_STOP, 0); }
static napi_value js_try_stop(napi_env env, napi_callback_info i) { return simple(env, i, K_TRY_STOP, 0); }
static napi_value js_delete(napi_env env, napi_callback_info i) { return simple(env, i, K_DELETE, 0); }
static napi_value js_quiesce(napi_env env, napi_callback_info i) { return simple(env, i, K_QUIESCE, 1); }
static napi_value js_update_size(napi_env env, napi_callback_info i) { return simple(env, i, K_UPDATE_SIZE, 1); }
static napi_value js_pause(napi_env env, napi_callback_info i) { return simple(env, i, K_PAUSE, 0); }
static napi_value js_flush(napi_env env, napi_callback_info i) { return simple(env, i, K_FLUSH, 0); }
static napi_value js_info(napi_env env, napi_callback_info i) { return simple(env, i, K_INFO, 0); }
static napi_value js_merge(napi_env env, napi_callback_info i) { return simple(env, i, K_MERGE, 1); }

/* resume(devId, deltas?) */
static napi_value js_resume(napi_env env, napi_callback_info info)
{
	size_t argc = 2;
	napi_value argv[2];
	CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	uint32_t id;
	if (argc < 1 || !arg_dev_id(env, argv[0], &id))
		return throw_inval(env, "devId must be a device number");
	struct ublk_device *d = dev_get(id);
	if (!d) {
		char msg[96];
		snprintf(msg, sizeof(msg), "device %u is not served by this process", id);
		napi_throw_error(env, "ENODEV", msg);
		return NULL;
	}
	struct pl_chain *chain = NULL;
	if (argc >= 2) {
		napi_valuetype t;
		napi_typeof(env, argv[1], &t);
		if (t != napi_undefined && t != napi_null) {
			uint32_t cluster = 0;
			pthread_mutex_lock(&d->gate_mtx);
			uint64_t cur_size = d->chain->size;
			int cur_ro = d->chain->read_only;
			uint32_t cur_cluster = d->chain->cluster;
			pthread_mutex_unlock(&d->gate_mtx);
			chain = parse_chain(env, argv[1], cur_size, &d->stats, &cluster);
			if (!chain) {
				dev_put(d);
				return NULL;
			}
			if (chain->read_only != cur_ro || cluster != cur_cluster) {
				pl_chain_close(chain);
				dev_put(d);
				return throw_inval(env, "the new chain must keep the cluster size and writability");
			}
		}
	}
	struct work *w = new_work(env, K_RESUME);
	if (!w) {
		pl_chain_close(chain);
		dev_put(d);
		return NULL;
	}
	w->dev_id = id;
	w->dev = d; /* reference released by execute */
	w->chain = chain;
	return queue_work(env, w);
}

static napi_value op_stats(napi_env env, const struct pl_op_stats *s)
{
	napi_value o, hist;
	napi_create_object(env, &o);
	set_num(env, o, "ops", (double)s->ops);
	set_num(env, o, "bytes", (double)s->bytes);
	set_num(env, o, "errors", (double)s->errors);
	set_num(env, o, "latencyUsTotal", (double)s->lat_us_total);
	napi_create_array_with_length(env, PL_LAT_BUCKETS, &hist);
	for (uint32_t i = 0; i < PL_LAT_BUCKETS; i++) {
		napi_value x;
		napi_create_double(env, (double)s->lat[i], &x);
		napi_set_element(env, hist, i, x);
	}
	napi_set_named_property(env, o, "latencyHistogram", hist);
	return o;
}

static napi_value js_stats(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1], o, ops;
	CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	uint32_t id;
	if (argc < 1 || !arg_dev_id(env, argv[0], &id))
		return throw_inval(env, "devId must be a device number");
	struct ublk_device *d = dev_get(id);
	if (!d) {
		napi_throw_error(env, "ENODEV", "device is not served by this process");
		return NULL;
	}
	struct pl_stats s;
	pl_stats_snapshot(&d->stats, &s);
	pthread_mutex_lock(&d->gate_mtx);
	int paused = d->paused, active = d->active, merging = d->merging;
	pthread_mutex_unlock(&d->gate_mtx);
	int running = d->running;
	dev_put(d);

	napi_create_object(env, &o);
	napi_create_object(env, &ops);
	for (int i = 0; i < PL_OP_COUNT; i++)
		napi_set_named_property(env, ops, pl_stat_op_name(i), op_stats(env, &s.op[i]));
	napi_set_named_property(env, o, "ops", ops);
	set_num(env, o, "allocatedClusters", (double)s.alloc_clusters);
	set_num(env, o, "copiedClusters", (double)s.cow_clusters);
	set_num(env, o, "zeroWritesSkipped", (double)s.zero_skips);
	set_num(env, o, "releasedClusters", (double)s.released_clusters);
	set_num(env, o, "punchedClusters", (double)s.punched_clusters);
	set_num(env, o, "batWrites", (double)s.bat_writes);
	set_num(env, o, "syncs", (double)s.syncs);
	set_num(env, o, "mergedClusters", (double)s.merged_clusters);
	set_num(env, o, "asyncReads", (double)s.async_reads);
	set_num(env, o, "asyncWrites", (double)s.async_writes);
	set_bool(env, o, "running", running);
	set_bool(env, o, "paused", paused);
	set_bool(env, o, "merging", merging);
	set_num(env, o, "inFlight", active);
	return o;
}

static napi_value js_list(napi_env env, napi_callback_info info)
{
	(void)info;
	uint32_t ids[1024];
	int n = dev_list(ids, 1024);
	napi_value arr;
	napi_create_array_with_length(env, (size_t)n, &arr);
	for (int i = 0; i < n; i++) {
		napi_value x;
		napi_create_uint32(env, ids[i], &x);
		napi_set_element(env, arr, (uint32_t)i, x);
	}
	return arr;
}

static napi_value init(napi_env env, napi_value exports)
{
	const struct {
		const char *name;
		napi_callback fn;
	} fns[] = {
		{ "probe", js_probe },
		{ "createDevice", js_create },
		{ "recoverDevice", js_recover },
		{ "stopDevice", js_stop },
		{ "tryStopDevice", js_try_stop },
		{ "deleteDevice", js_delete },
		{ "quiesceDevice", js_quiesce },
		{ "updateSize", js_update_size },
		{ "pause", js_pause },
		{ "resume", js_resume },
		{ "flush", js_flush },
		{ "stats", js_stats },
		{ "getInfo", js_info },
		{ "mergeLower", js_merge },
		{ "listDevices", js_list },
	};
	for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		napi_value f;
		CHECK(napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f));
		CHECK(napi_set_named_property(env, exports, fns[i].name, f));
	}
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
