// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-diskcrypt: the "diskcrypt" device-mapper target.
 *
 * Sector encryption with AES-256-XTS and plain64 IVs whose ciphertext is
 * identical to dm-crypt's aes-xts-plain64, so that a stock dm-crypt can read
 * a diskcrypt volume. The key comes only from a logon key in the kernel
 * keyring, and the table never shows key bytes.
 */
#include <linux/module.h>
#include <linux/slab.h>

#include "diskcrypt.h"

static void dc_dtr(struct dm_target *ti)
{
	struct dc_config *dc = ti->private;

	if (!dc)
		return;
	ti->private = NULL;
	dc_io_exit(dc);
	if (dc->tfm) {
		/* Overwrite the key schedule before the tfm memory is freed. */
		if (test_bit(DC_KEY_VALID, &dc->flags))
			dc_wipe_key(dc);
		crypto_free_skcipher(dc->tfm);
	}
	if (dc->dev)
		dm_put_device(ti, dc->dev);
	kfree(dc->key_desc);
	kfree(dc->cipher_string);
	mutex_destroy(&dc->alloc_lock);
	mutex_destroy(&dc->key_lock);
	kfree_sensitive(dc);
}

static int dc_parse_sector_arg(struct dm_target *ti, const char *arg,
			       u64 *v, char *invalid, char *range)
{
	int r = dc_parse_u64(arg, v);

	if (r)
		ti->error = r == -ERANGE ? range : invalid;
	return r ? -EINVAL : 0;
}

/*
 * Construct a diskcrypt mapping:
 *
 *   <cipher> <key> <iv_offset> <dev_path> <dev_offset> [<#opts> <opt>...]
 *
 * <cipher>     aes-xts-plain64, or capi:<algorithm>-plain64 where the crypto
 *              API resolves <algorithm> to an xts(aes) implementation
 * <key>        :64:logon:<description>, a logon key the caller can search
 *              for in its keyrings; never a hex key
 * <iv_offset>  added to the sector number (512-byte units) to form the IV;
 *              a multiple of sector_size / 512
 * <dev_path>   the backing device, as a path or major:minor
 * <dev_offset> first sector of the encrypted data on <dev_path> (512-byte
 *              units); a multiple of sector_size / 512
 * <opt>        sector_size:<512|1024|2048|4096>, iv_large_sectors,
 *              allow_discards, zero_unwritten, read_workqueue,
 *              write_workqueue, inline_depth:<n> (each at most once)
 *
 * The target's length must be a multiple of sector_size and fit on the
 * device after <dev_offset>.
 */
static int dc_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dc_config *dc;
	const char *desc;
	u64 v, mask;
	int r;

	if (argc < 5) {
		ti->error = "Not enough arguments";
		return -EINVAL;
	}

	dc = kzalloc(sizeof(*dc), GFP_KERNEL);
	if (!dc) {
		ti->error = "Cannot allocate target context";
		return -ENOMEM;
	}
	ti->private = dc;
	dc->sector_size = SECTOR_SIZE;
	dc->inline_depth = DC_DEFAULT_INLINE_DEPTH;
	atomic_set(&dc->inflight, 0);
	dc->busy_until = jiffies;
	mutex_init(&dc->alloc_lock);
	mutex_init(&dc->key_lock);

	if (argc > 5) {
		r = dc_parse_features(ti, dc, argc - 5, argv + 5);
		if (r)
			goto bad;
	}
	mask = (dc->sector_size >> SECTOR_SHIFT) - 1;
	r = -EINVAL;
	if (ti->len & mask) {
		ti->error = "Length is not a multiple of sector_size";
		goto bad;
	}
	if (ti->begin & mask) {
		ti->error = "Target start is not a multiple of sector_size";
		goto bad;
	}

	r = dc_parse_cipher(ti, dc, argv[0]);
	if (r)
		goto bad;

	r = dc_parse_keyref(argv[1], &desc, &ti->error);
	if (r)
		goto bad;
	dc->key_desc = kstrdup(desc, GFP_KERNEL);
	if (!dc->key_desc) {
		ti->error = "Cannot allocate key description";
		r = -ENOMEM;
		goto bad;
	}

	r = dc_parse_sector_arg(ti, argv[2], &v, "Invalid iv_offset",
				"iv_offset out of range");
	if (r)
		goto bad;
	r = -EINVAL;
	if (v & mask) {
		ti->error = "iv_offset is not a multiple of sector_size";
		goto bad;
	}
	dc->iv_offset = v;

	r = dm_get_device(ti, argv[3], dm_table_get_mode(ti->table), &dc->dev);
	if (r) {
		ti->error = "Device lookup failed";
		goto bad;
	}

	r = dc_parse_sector_arg(ti, argv[4], &v, "Invalid device offset",
				"Device offset out of range");
	if (r)
		goto bad;
	r = -EINVAL;
	if (v & mask) {
		ti->error = "Device offset is not a multiple of sector_size";
		goto bad;
	}
	if (v > bdev_nr_sectors(dc->dev->bdev) ||
	    ti->len > bdev_nr_sectors(dc->dev->bdev) - v) {
		ti->error = "Device too small for the offset and length";
		goto bad;
	}
	dc->start = v;

	r = dc_load_key(dc, dc->key_desc, &ti->error);
	if (r)
		goto bad;

	r = dc_io_init(ti, dc);
	if (r)
		goto bad;

	ti->num_flush_bios = 1;
	ti->accounts_remapped_io = true;
	/*
	 * Swap writes need bounce pages to get memory back: let dm bound
	 * how many are in flight (the swap_bios module parameter).
	 */
	ti->limit_swap_bios = true;
	if (test_bit(DC_ALLOW_DISCARDS, &dc->flags))
		ti->num_discard_bios = 1;
	return 0;

bad:
	dc_dtr(ti);
	return r;
}

static void dc_postsuspend(struct dm_target *ti)
{
	struct dc_config *dc = ti->private;

	set_bit(DC_SUSPENDED, &dc->flags);
}

/*
 * The last step that may refuse a resume. Once the key is found valid,
 * DC_SUSPENDED is cleared under key_lock, so that no key message can start
 * between this check and the first bio. (If another target of the table
 * refuses to resume, the device stays suspended but refuses key messages
 * until it is resumed.)
 */
static int dc_preresume(struct dm_target *ti)
{
	struct dc_config *dc = ti->private;
	int r = 0;

	mutex_lock(&dc->key_lock);
	if (test_bit(DC_KEY_VALID, &dc->flags)) {
		clear_bit(DC_SUSPENDED, &dc->flags);
	} else {
		DMERR("%s: resume refused: the key was wiped; send \"key set\" first",
		      dm_table_device_name(ti->table));
		r = -ENOKEY;
	}
	mutex_unlock(&dc->key_lock);
	return r;
}

static int dc_iterate_devices(struct dm_target *ti,
			      iterate_devices_callout_fn fn, void *data)
{
	struct dc_config *dc = ti->private;

	return fn(ti, dc->dev, dc->start, ti->len, data);
}

static struct target_type dc_target = {
	.name			= "diskcrypt",
	.version		= {1, 1, 0},
	.module			= THIS_MODULE,
	.features		= DM_TARGET_NOWAIT,
	.ctr			= dc_ctr,
	.dtr			= dc_dtr,
	.map			= dc_map,
	.status			= dc_status,
	.postsuspend		= dc_postsuspend,
	.preresume		= dc_preresume,
	.message		= dc_message,
	.iterate_devices	= dc_iterate_devices,
	.io_hints		= dc_io_hints,
};

static int __init dc_init(void)
{
	int r;

	dc_io_module_init();
	r = dm_register_target(&dc_target);
	if (r < 0) {
		DMERR("register failed %d", r);
		dc_io_module_exit();
	}
	return r;
}

static void __exit dc_exit(void)
{
	dm_unregister_target(&dc_target);
	dc_io_module_exit();
}

module_init(dc_init);
module_exit(dc_exit);

MODULE_AUTHOR("diskcrypt developers");
MODULE_DESCRIPTION(DM_NAME " target for host-side disk encryption with keyring keys");
MODULE_LICENSE("GPL");
