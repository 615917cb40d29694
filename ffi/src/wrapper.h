/*
 * mdraid's C shim: what Rust cannot call directly (SPDK's static inline
 * helpers, a log call without varargs) and what is easier to state in C
 * (the module and function tables, constructor registration).
 */
#ifndef MDRAID_SPDK_WRAPPER_H
#define MDRAID_SPDK_WRAPPER_H

#include <spdk/stdinc.h>
#include <spdk/bdev_module.h>
#include <spdk/thread.h>
#include <spdk/log.h>

/* The `mdraid` bdev module (registered by a constructor in the shim). */
struct spdk_bdev_module *mdraid_shim_module(void);
/* The function table of every mdraid array bdev. */
const struct spdk_bdev_fn_table *mdraid_shim_fn_table(void);
/* spdk_io_channel_get_ctx (static inline in thread.h). */
void *mdraid_shim_io_channel_get_ctx(struct spdk_io_channel *ch);
/* spdk_bdev_io_from_ctx (static inline in bdev_module.h). */
struct spdk_bdev_io *mdraid_shim_bdev_io_from_ctx(void *ctx);
/* SPDK_*LOG with a preformatted message. */
void mdraid_shim_log(enum spdk_log_level level, const char *msg);

#endif
