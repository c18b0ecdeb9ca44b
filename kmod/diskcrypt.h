/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-diskcrypt: shared definitions of the diskcrypt device-mapper target.
 *
 * The target encrypts sectors with AES-256-XTS and a plain64 IV, producing
 * the same ciphertext as dm-crypt's aes-xts-plain64, but takes its key only
 * from the kernel keyring (a "logon" key) and never prints key material.
 */
#ifndef DM_DISKCRYPT_H
#define DM_DISKCRYPT_H

#include <linux/bio.h>
#include <linux/blk_types.h>
#include <linux/device-mapper.h>
#include <linux/mempool.h>
#include <linux/mutex.h>
#include <linux/types.h>
#include <linux/workqueue.h>
#include <crypto/skcipher.h>

#define DM_MSG_PREFIX		"diskcrypt"

#define DC_KEY_BYTES		64	/* AES-256-XTS: two 256-bit keys */
#define DC_IV_BYTES		16
#define DC_MAX_FEATURES		4
#define DC_CIPHER_DEFAULT	"aes-xts-plain64"
#define DC_ALG_NAME		"xts(aes)"

/* Bits in dc_config.flags */
enum dc_flag {
	DC_IV_LARGE_SECTORS,	/* IV counts sector_size units, not 512B */
	DC_ALLOW_DISCARDS,	/* pass discards down to the device */
	DC_ZERO_UNWRITTEN,	/* all-zero ciphertext sectors read as zeros */
	DC_KEY_VALID,		/* the tfm holds the table's key */
	DC_SUSPENDED,		/* between postsuspend and resume */
};

/* Per-CPU I/O counters, summed by the status handler. */
struct dc_stats {
	u64 reads;
	u64 writes;
	u64 read_sectors;
	u64 write_sectors;
	u64 zero_sectors;	/* sectors returned as zeros (zero_unwritten) */
	u64 errors;
};

/*
 * One instance per target. Read only after the constructor, except for
 * flags (atomic bitops) and the key, which changes only while suspended.
 */
struct dc_config {
	struct dm_dev *dev;
	sector_t start;			/* data offset on dev, 512B sectors */
	u64 iv_offset;			/* added to the sector before the IV */
	unsigned int sector_size;	/* crypto sector size in bytes */
	unsigned int sector_shift;	/* log2(sector_size / 512) */
	unsigned long flags;

	char *cipher_string;		/* as given in the table */
	char *key_desc;			/* keyring description, never key bytes */
	struct crypto_skcipher *tfm;

	struct workqueue_struct *wq;
	struct bio_set bs;
	mempool_t page_pool;
	struct mutex alloc_lock;	/* serialises blocking page allocation */

	struct dc_stats __percpu *stats;
	unsigned int per_io_size;	/* ti->per_io_data_size */
};

/*
 * Per-bio state, in dm's per-bio data. A struct skcipher_request follows it,
 * sized for the tfm at construction (see dc_io_req()).
 */
struct dc_io {
	struct dc_config *dc;
	struct bio *base_bio;		/* the bio dm gave us */
	struct bvec_iter iter;		/* base_bio's data, saved at map time */
	sector_t sector;		/* target-relative start sector */
	struct work_struct work;
	u8 iv[DC_IV_BYTES] __aligned(8);
};

#define DC_IO_REQ_OFFSET \
	ALIGN(sizeof(struct dc_io), __alignof__(struct skcipher_request))

static inline struct skcipher_request *dc_io_req(struct dc_io *io)
{
	return (struct skcipher_request *)((u8 *)io + DC_IO_REQ_OFFSET);
}

static inline unsigned int dc_per_io_size(struct crypto_skcipher *tfm)
{
	return DC_IO_REQ_OFFSET + sizeof(struct skcipher_request) +
	       crypto_skcipher_reqsize(tfm);
}

/* table.c */
int dc_parse_u64(const char *s, u64 *v);
int dc_parse_features(struct dm_target *ti, struct dc_config *dc,
		      unsigned int argc, char **argv);
int dc_parse_cipher(struct dm_target *ti, struct dc_config *dc,
		    const char *spec);
int dc_parse_keyref(const char *keyref, const char **desc, char **error);

/* keyring.c */
int dc_load_key(struct dc_config *dc, const char *desc, char **error);
int dc_set_key(struct dc_config *dc, const char *keyref, char **error);
int dc_wipe_key(struct dc_config *dc);

/* io.c */
int dc_map(struct dm_target *ti, struct bio *bio);
int dc_io_init(struct dm_target *ti, struct dc_config *dc);
void dc_io_exit(struct dc_config *dc);

/* status.c */
void dc_status(struct dm_target *ti, status_type_t type,
	       unsigned int status_flags, char *result, unsigned int maxlen);
int dc_message(struct dm_target *ti, unsigned int argc, char **argv,
	       char *result, unsigned int maxlen);
void dc_io_hints(struct dm_target *ti, struct queue_limits *limits);

#endif /* DM_DISKCRYPT_H */
