/*
 * mdraid's C shim. See wrapper.h. The functions named mdraid_* without
 * `shim` are defined in Rust (src/module.rs, src/rpc.rs); each of them
 * catches panics, so none unwinds into SPDK.
 */
#include "wrapper.h"

#include <spdk/rpc.h>
#include <spdk/jsonrpc.h>
#include <spdk/json.h>

/* Module callbacks (Rust). */
int mdraid_module_init(void);
void mdraid_module_fini(void);
void mdraid_examine_config(struct spdk_bdev *bdev);
void mdraid_examine_disk(struct spdk_bdev *bdev);
int mdraid_module_get_ctx_size(void);

/* Bdev callbacks (Rust). */
int mdraid_bdev_destruct(void *ctx);
void mdraid_bdev_submit_request(struct spdk_io_channel *ch, struct spdk_bdev_io *bdev_io);
bool mdraid_bdev_io_type_supported(void *ctx, enum spdk_bdev_io_type io_type);
struct spdk_io_channel *mdraid_bdev_get_io_channel(void *ctx);
int mdraid_bdev_dump_info_json(void *ctx, struct spdk_json_write_ctx *w);
void mdraid_bdev_write_config_json(struct spdk_bdev *bdev, struct spdk_json_write_ctx *w);

/* RPC methods (Rust). */
void mdraid_rpc_bdev_mdraid_create(struct spdk_jsonrpc_request *request,
				   const struct spdk_json_val *params);
void mdraid_rpc_bdev_mdraid_delete(struct spdk_jsonrpc_request *request,
				   const struct spdk_json_val *params);
void mdraid_rpc_bdev_mdraid_get_bdevs(struct spdk_jsonrpc_request *request,
				      const struct spdk_json_val *params);
void mdraid_rpc_bdev_mdraid_add_base_bdev(struct spdk_jsonrpc_request *request,
		const struct spdk_json_val *params);
void mdraid_rpc_bdev_mdraid_set_options(struct spdk_jsonrpc_request *request,
					const struct spdk_json_val *params);
void mdraid_rpc_bdev_mdraid_sync_action(struct spdk_jsonrpc_request *request,
					const struct spdk_json_val *params);
void mdraid_rpc_bdev_mdraid_remove_base_bdev(struct spdk_jsonrpc_request *request,
		const struct spdk_json_val *params);
void mdraid_rpc_bdev_mdraid_set_write_mostly(struct spdk_jsonrpc_request *request,
		const struct spdk_json_val *params);
void mdraid_rpc_bdev_mdraid_examine(struct spdk_jsonrpc_request *request,
				    const struct spdk_json_val *params);
void mdraid_rpc_bdev_mdraid_zero_superblock(struct spdk_jsonrpc_request *request,
		const struct spdk_json_val *params);
int mdraid_module_config_json(struct spdk_json_write_ctx *w);

static struct spdk_bdev_module g_mdraid_if = {
	.name = "mdraid",
	.module_init = mdraid_module_init,
	.module_fini = mdraid_module_fini,
	.examine_config = mdraid_examine_config,
	.examine_disk = mdraid_examine_disk,
	.get_ctx_size = mdraid_module_get_ctx_size,
	.config_json = mdraid_module_config_json,
};

SPDK_BDEV_MODULE_REGISTER(mdraid, &g_mdraid_if)

static const struct spdk_bdev_fn_table g_mdraid_fn_table = {
	.destruct = mdraid_bdev_destruct,
	.submit_request = mdraid_bdev_submit_request,
	.io_type_supported = mdraid_bdev_io_type_supported,
	.get_io_channel = mdraid_bdev_get_io_channel,
	.dump_info_json = mdraid_bdev_dump_info_json,
	.write_config_json = mdraid_bdev_write_config_json,
};

SPDK_RPC_REGISTER("bdev_mdraid_create", mdraid_rpc_bdev_mdraid_create, SPDK_RPC_RUNTIME)
SPDK_RPC_REGISTER("bdev_mdraid_delete", mdraid_rpc_bdev_mdraid_delete, SPDK_RPC_RUNTIME)
SPDK_RPC_REGISTER("bdev_mdraid_get_bdevs", mdraid_rpc_bdev_mdraid_get_bdevs, SPDK_RPC_RUNTIME)
SPDK_RPC_REGISTER("bdev_mdraid_add_base_bdev", mdraid_rpc_bdev_mdraid_add_base_bdev,
		  SPDK_RPC_RUNTIME)
SPDK_RPC_REGISTER("bdev_mdraid_set_options", mdraid_rpc_bdev_mdraid_set_options,
		  SPDK_RPC_STARTUP | SPDK_RPC_RUNTIME)
SPDK_RPC_REGISTER("bdev_mdraid_sync_action", mdraid_rpc_bdev_mdraid_sync_action,
		  SPDK_RPC_RUNTIME)
SPDK_RPC_REGISTER("bdev_mdraid_remove_base_bdev", mdraid_rpc_bdev_mdraid_remove_base_bdev,
		  SPDK_RPC_RUNTIME)
SPDK_RPC_REGISTER("bdev_mdraid_set_write_mostly", mdraid_rpc_bdev_mdraid_set_write_mostly,
		  SPDK_RPC_RUNTIME)
SPDK_RPC_REGISTER("bdev_mdraid_examine", mdraid_rpc_bdev_mdraid_examine, SPDK_RPC_RUNTIME)
SPDK_RPC_REGISTER("bdev_mdraid_zero_superblock", mdraid_rpc_bdev_mdraid_zero_superblock,
		  SPDK_RPC_RUNTIME)

struct spdk_bdev_module *
mdraid_shim_module(void)
{
	return &g_mdraid_if;
}

const struct spdk_bdev_fn_table *
mdraid_shim_fn_table(void)
{
	return &g_mdraid_fn_table;
}

void *
mdraid_shim_io_channel_get_ctx(struct spdk_io_channel *ch)
{
	return spdk_io_channel_get_ctx(ch);
}

struct spdk_bdev_io *
mdraid_shim_bdev_io_from_ctx(void *ctx)
{
	return spdk_bdev_io_from_ctx(ctx);
}

void
mdraid_shim_log(enum spdk_log_level level, const char *msg)
{
	/* No file/line: the message carries its level and names the array. */
	spdk_log(level, NULL, 0, NULL, "%s\n", msg);
}
