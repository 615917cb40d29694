#  SPDX-License-Identifier: GPL-2.0-or-later
"""mdraid's methods for SPDK's rpc.py.

    PYTHONPATH=scripts $SPDK_DIR/scripts/rpc.py --plugin rpc_mdraid_plugin \\
        bdev_mdraid_create -n r1 -r raid1 -b "m0 m1"

Options follow SPDK's bdev_raid_* commands where they have one (-n, -r,
-b, -z, --uuid); md's own are long options. Only the options given are
sent, so the defaults are the server's (superblock on, md's layout and
strip size).
"""

import json

try:
    from spdk.rpc.cmd_parser import print_json
except ImportError:  # older or newer SPDK trees
    def print_json(obj):
        print(json.dumps(obj, indent=2))


def _call(args, method, params):
    return args.client.call(method, {k: v for k, v in params.items() if v is not None})


def _bitmap(args):
    """The create's `bitmap` param: None (the server's default), False,
    True, or the options given."""
    opts = {k: v for k, v in (('chunk_kb', args.bitmap_chunk_kb),
                              ('daemon_sleep_ms', args.bitmap_daemon_sleep_ms)) if v is not None}
    if args.no_bitmap:
        if opts:
            raise SystemExit('error: --no-bitmap with --bitmap-chunk-kb or --bitmap-daemon-sleep-ms')
        return False
    if opts:
        return opts
    return True if args.bitmap else None


def bdev_mdraid_create(args):
    bitmap = _bitmap(args)
    _call(args, 'bdev_mdraid_create', {
        'name': args.name,
        'raid_level': args.raid_level,
        'base_bdevs': args.base_bdevs,
        'strip_size_kb': args.strip_size_kb,
        'uuid': args.uuid,
        'superblock': False if args.no_superblock else None,
        'layout': args.layout,
        'bitmap': bitmap,
        'write_mostly': args.write_mostly,
        'write_behind': args.write_behind,
        'force': True if args.force else None,
        'assume_clean': True if args.assume_clean else None,
    })


def bdev_mdraid_delete(args):
    _call(args, 'bdev_mdraid_delete', {
        'name': args.name,
        'clear_sb': True if args.clear_sb else None,
    })


def bdev_mdraid_get_bdevs(args):
    print_json(_call(args, 'bdev_mdraid_get_bdevs', {
        'category': args.category,
        'name': args.name,
    }))


def bdev_mdraid_add_base_bdev(args):
    _call(args, 'bdev_mdraid_add_base_bdev', {
        'raid_bdev': args.raid_bdev,
        'base_bdev': args.base_bdev,
        'write_mostly': True if args.write_mostly else None,
    })


def bdev_mdraid_remove_base_bdev(args):
    _call(args, 'bdev_mdraid_remove_base_bdev', {'name': args.name})


def bdev_mdraid_examine(args):
    print_json(_call(args, 'bdev_mdraid_examine', {'name': args.name}))


def bdev_mdraid_zero_superblock(args):
    _call(args, 'bdev_mdraid_zero_superblock', {'name': args.name})


def bdev_mdraid_set_write_mostly(args):
    _call(args, 'bdev_mdraid_set_write_mostly', {
        'name': args.name,
        'base_bdev': args.base_bdev,
        'write_mostly': not args.clear,
    })


def bdev_mdraid_set_options(args):
    _call(args, 'bdev_mdraid_set_options', {
        'process_window_size_kb': args.process_window_size_kb,
        'process_max_bandwidth_mb_sec': args.process_max_bandwidth_mb_sec,
    })


def bdev_mdraid_sync_action(args):
    _call(args, 'bdev_mdraid_sync_action', {
        'name': args.name,
        'action': args.action,
    })


def spdk_rpc_plugin_initialize(subparsers):
    p = subparsers.add_parser('bdev_mdraid_create',
                              help='Create an mdraid array (md v1.2 superblocks on the members)')
    p.add_argument('-n', '--name', help='array bdev name', required=True)
    p.add_argument('-r', '--raid-level', required=True,
                   help='linear, raid0, raid1, raid4, raid5, raid6 or raid10')
    p.add_argument('-b', '--base-bdevs', required=True, type=str.split,
                   help='member bdev names in role order, whitespace separated, in quotes')
    p.add_argument('-z', '--strip-size-kb', type=int, help='strip (md chunk) size in KiB')
    p.add_argument('--uuid', help='array UUID (default: a new one)')
    p.add_argument('--no-superblock', action='store_true',
                   help='write no md superblock on the members')
    p.add_argument('--layout', help="md layout (e.g. left-symmetric, n2, f2)")
    g = p.add_mutually_exclusive_group()
    g.add_argument('--bitmap', action='store_true',
                   help='internal write-intent bitmap (the default on levels with redundancy)')
    g.add_argument('--no-bitmap', action='store_true', help='no write-intent bitmap')
    p.add_argument('--bitmap-chunk-kb', type=int,
                   help="bitmap chunk size in KiB (default mdadm's, at least 64 MiB)")
    p.add_argument('--bitmap-daemon-sleep-ms', type=int,
                   help='how often idle bitmap bits are cleared (default 5000)')
    p.add_argument('--write-mostly', type=str.split,
                   help='members read only when no other copy can serve (raid1, raid10)')
    p.add_argument('--write-behind', type=int,
                   help='most writes to write-mostly members left in flight (needs the bitmap)')
    p.add_argument('--force', action='store_true',
                   help='start an array that was not shut down cleanly although degraded')
    p.add_argument('--assume-clean', action='store_true',
                   help='no initial resync of a new array (members that read back zeros)')
    p.set_defaults(func=bdev_mdraid_create)

    p = subparsers.add_parser('bdev_mdraid_delete', help='Delete an mdraid array')
    p.add_argument('name', help='array bdev name')
    p.add_argument('-c', '--clear-sb', action='store_true',
                   help='wipe the md superblock on every member')
    p.set_defaults(func=bdev_mdraid_delete)

    p = subparsers.add_parser('bdev_mdraid_get_bdevs', help='List mdraid arrays')
    p.add_argument('category', nargs='?', choices=['all', 'online', 'configuring', 'offline'],
                   help='which arrays (default: all)')
    p.add_argument('-n', '--name', help='only this array')
    p.set_defaults(func=bdev_mdraid_get_bdevs)

    p = subparsers.add_parser('bdev_mdraid_add_base_bdev',
                              help='Bring a bdev into a faulty or missing role (it is rebuilt)')
    p.add_argument('raid_bdev', help='array bdev name')
    p.add_argument('base_bdev', help='the bdev to add')
    p.add_argument('--write-mostly', action='store_true', help='add it write-mostly')
    p.set_defaults(func=bdev_mdraid_add_base_bdev)

    p = subparsers.add_parser('bdev_mdraid_remove_base_bdev',
                              help='Fail a member and release it (recorded in the superblocks)')
    p.add_argument('name', help='the member bdev')
    p.set_defaults(func=bdev_mdraid_remove_base_bdev)

    p = subparsers.add_parser('bdev_mdraid_examine',
                              help="Read bdevs' md superblocks (mdadm --examine); "
                              'complete arrays are assembled as examine does')
    p.add_argument('-n', '--name', help='only this bdev (default: every bdev)')
    p.set_defaults(func=bdev_mdraid_examine)

    p = subparsers.add_parser('bdev_mdraid_zero_superblock',
                              help='Wipe the md superblock of a bdev no array holds '
                              '(mdadm --zero-superblock)')
    p.add_argument('name', help='the bdev')
    p.set_defaults(func=bdev_mdraid_zero_superblock)

    p = subparsers.add_parser('bdev_mdraid_set_write_mostly',
                              help='Make a member write-mostly (or not, with --clear)')
    p.add_argument('name', help='array bdev name')
    p.add_argument('base_bdev', help='the member')
    p.add_argument('--clear', action='store_true', help='no longer write-mostly')
    p.set_defaults(func=bdev_mdraid_set_write_mostly)

    p = subparsers.add_parser('bdev_mdraid_set_options',
                              help='Window and bandwidth of resyncs and rebuilds')
    p.add_argument('-w', '--process-window-size-kb', type=int,
                   help='member data a rebuild window covers, in KiB')
    p.add_argument('-b', '--process-max-bandwidth-mb-sec', type=int,
                   help='bandwidth cap of a background process in MiB/s (0: none)')
    p.set_defaults(func=bdev_mdraid_set_options)

    p = subparsers.add_parser('bdev_mdraid_sync_action', help="md's sync_action")
    p.add_argument('name', help='array bdev name')
    p.add_argument('action', choices=['check', 'repair', 'resync', 'idle', 'frozen'])
    p.set_defaults(func=bdev_mdraid_sync_action)
