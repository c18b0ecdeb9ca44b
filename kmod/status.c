// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-diskcrypt: status, messages and queue limits.
 */
#include <linux/blkdev.h>
#include <linux/kernel.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/string.h>

#include "diskcrypt.h"

static void dc_sum_stats(struct dc_config *dc, struct dc_stats *sum)
{
	int cpu;

	memset(sum, 0, sizeof(*sum));
	for_each_possible_cpu(cpu) {
		const struct dc_stats *s = per_cpu_ptr(dc->stats, cpu);

		sum->reads += s->reads;
		sum->writes += s->writes;
		sum->read_sectors += s->read_sectors;
		sum->write_sectors += s->write_sectors;
		sum->zero_sectors += s->zero_sectors;
		sum->errors += s->errors;
		sum->async += s->async;
		sum->backlogged += s->backlogged;
		sum->deferred += s->deferred;
	}
}

static const char *dc_key_state(struct dc_config *dc)
{
	return test_bit(DC_KEY_VALID, &dc->flags) ? "valid" : "wiped";
}

/*
 * INFO:  key:<valid|wiped> reads:<n> writes:<n> read_sectors:<n>
 *        write_sectors:<n> zero_sectors:<n> errors:<n> async:<n>
 *        backlogged:<n> deferred:<n>
 *        (sectors are 512-byte units; async and backlogged count crypto
 *        requests, deferred counts bios whose crypto ran in the workqueue)
 * TABLE: the constructor's grammar, with the key as :64:logon:<description>.
 */
void dc_status(struct dm_target *ti, status_type_t type,
	       unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct dc_config *dc = ti->private;
	unsigned int sz = 0, nr_features;
	struct dc_stats st;
	bool large = test_bit(DC_IV_LARGE_SECTORS, &dc->flags);
	bool discards = test_bit(DC_ALLOW_DISCARDS, &dc->flags);
	bool zeros = test_bit(DC_ZERO_UNWRITTEN, &dc->flags);
	bool rwq = test_bit(DC_READ_WORKQUEUE, &dc->flags);
	bool wwq = test_bit(DC_WRITE_WORKQUEUE, &dc->flags);

	switch (type) {
	case STATUSTYPE_INFO:
		dc_sum_stats(dc, &st);
		DMEMIT("key:%s reads:%llu writes:%llu", dc_key_state(dc),
		       st.reads, st.writes);
		DMEMIT(" read_sectors:%llu write_sectors:%llu", st.read_sectors,
		       st.write_sectors);
		DMEMIT(" zero_sectors:%llu errors:%llu", st.zero_sectors,
		       st.errors);
		DMEMIT(" async:%llu backlogged:%llu deferred:%llu", st.async,
		       st.backlogged, st.deferred);
		break;

	case STATUSTYPE_TABLE:
		/*
		 * Only dm-ioctl asks for TABLE, in process context: it may
		 * sleep on the lock that "key set" holds while it replaces
		 * key_desc. INFO and IMA read no key_desc and take no lock.
		 */
		mutex_lock(&dc->key_lock);
		DMEMIT("%s :%u:logon:%s %llu %s %llu", dc->cipher_string,
		       DC_KEY_BYTES, dc->key_desc,
		       (unsigned long long)dc->iv_offset, dc->dev->name,
		       (unsigned long long)dc->start);
		mutex_unlock(&dc->key_lock);
		nr_features = (dc->sector_size != SECTOR_SIZE) + large +
			      discards + zeros + rwq + wwq +
			      dc->inline_depth_set;
		if (!nr_features)
			break;
		DMEMIT(" %u", nr_features);
		if (dc->sector_size != SECTOR_SIZE)
			DMEMIT(" sector_size:%u", dc->sector_size);
		if (large)
			DMEMIT(" iv_large_sectors");
		if (discards)
			DMEMIT(" allow_discards");
		if (zeros)
			DMEMIT(" zero_unwritten");
		if (rwq)
			DMEMIT(" read_workqueue");
		if (wwq)
			DMEMIT(" write_workqueue");
		if (dc->inline_depth_set)
			DMEMIT(" inline_depth:%u", dc->inline_depth);
		break;

	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",cipher_string=%s,key_size=%u,key_state=%s",
		       dc->cipher_string, DC_KEY_BYTES, dc_key_state(dc));
		DMEMIT(",sector_size=%u,iv_large_sectors=%c", dc->sector_size,
		       large ? 'y' : 'n');
		DMEMIT(",allow_discards=%c,zero_unwritten=%c;",
		       discards ? 'y' : 'n', zeros ? 'y' : 'n');
		break;
	}
}

/*
 * Messages, accepted only while the device is suspended:
 *   key wipe                      forget the key; resume is refused
 *   key set :64:logon:<desc>      load a key from the keyring
 * dm-ioctl may run several messages, and status, at once: key_lock makes
 * each key change whole (no two setkeys on the tfm at once, key_desc never
 * freed under a reader), and keeps resume from starting I/O in the middle
 * of one (see dc_preresume()).
 */
int dc_message(struct dm_target *ti, unsigned int argc, char **argv,
	       char *result, unsigned int maxlen)
{
	struct dc_config *dc = ti->private;
	char *error = NULL;
	bool wipe;
	int r;

	if (argc < 2 || strcasecmp(argv[0], "key"))
		goto unknown;
	wipe = argc == 2 && !strcasecmp(argv[1], "wipe");
	if (!wipe && (argc != 3 || strcasecmp(argv[1], "set")))
		goto unknown;

	mutex_lock(&dc->key_lock);
	if (!test_bit(DC_SUSPENDED, &dc->flags)) {
		DMERR("%s: key messages need a suspended device",
		      dm_table_device_name(ti->table));
		r = -EBUSY;
	} else if (wipe) {
		r = dc_wipe_key(dc);
	} else {
		r = dc_set_key(dc, argv[2], &error);
		if (r)
			DMERR("%s: key set refused: %s",
			      dm_table_device_name(ti->table), error);
	}
	mutex_unlock(&dc->key_lock);
	return r;

unknown:
	DMERR("%s: unrecognised message", dm_table_device_name(ti->table));
	return -EINVAL;
}

void dc_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct dc_config *dc = ti->private;

	/* Bounce bios hold one page per segment. */
	limits->max_segment_size = PAGE_SIZE;
	limits->logical_block_size = max_t(unsigned int,
					   limits->logical_block_size,
					   dc->sector_size);
	limits->physical_block_size = max_t(unsigned int,
					    limits->physical_block_size,
					    dc->sector_size);
	limits->io_min = max_t(unsigned int, limits->io_min, dc->sector_size);
	limits->dma_alignment = limits->logical_block_size - 1;
}
