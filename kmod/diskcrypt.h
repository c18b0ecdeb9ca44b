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
#include <linux/llist.h>
#include <linux/mempool.h>
#include <linux/mutex.h>
#include <linux/percpu_counter.h>
#include <linux/scatterlist.h>
#include <linux/types.h>
#include <linux/workqueue.h>
#include <crypto/skcipher.h>

#define DM_MSG_PREFIX		"diskcrypt"

#define DC_KEY_BYTES		64	/* AES-256-XTS: two 256-bit keys */
#define DC_IV_BYTES		16
#define DC_MAX_INLINE_DEPTH	65536
#define DC_DEFAULT_INLINE_DEPTH	1
#define DC_BUSY_HOLD_MS		10	/* see dc_inline() */
#define DC_CIPHER_DEFAULT	"aes-xts-plain64"
#define DC_ALG_NAME		"xts(aes)"

/* Bits in dc_config.flags */
enum dc_flag {
	DC_IV_LARGE_SECTORS,	/* IV counts sector_size units, not 512B */
	DC_ALLOW_DISCARDS,	/* pass discards down to the device */
	DC_ZERO_UNWRITTEN,	/* all-zero ciphertext sectors read as zeros */
	DC_READ_WORKQUEUE,	/* decrypt reads in the workqueue, not inline */
	DC_WRITE_WORKQUEUE,	/* encrypt writes in the workqueue, not inline */
	DC_NR_FEATURES,		/* bits above are table features */
	DC_KEY_VALID = DC_NR_FEATURES,	/* the tfm holds the table's key */
	DC_SUSPENDED,		/* between postsuspend and resume */
};

/* Per-CPU I/O counters, summed by the status handler. */
struct dc_stats {
	u64 reads;
	u64 writes;
	u64 read_sectors;
	u64 write_sectors;
	u64 zero_sectors;	/* sectors returned as zeros (zero_unwritten) */
	u64 errors;		/* bios completed with an error */
	u64 async;		/* crypto requests that completed asynchronously */
	u64 backlogged;		/* of those, requests the driver backlogged */
	u64 deferred;		/* bios whose crypto moved to the workqueue */
};

/*
 * One instance per target. Read only after the constructor, except for
 * flags (atomic bitops) and the key, which changes only while suspended and
 * under key_lock.
 */
struct dc_config {
	const char *name;		/* the mapped device, "major:minor" */
	struct dm_dev *dev;
	sector_t start;			/* data offset on dev, 512B sectors */
	u64 iv_offset;			/* added to the sector before the IV */
	unsigned int sector_size;	/* crypto sector size in bytes */
	unsigned int sector_shift;	/* log2(sector_size / 512) */
	unsigned int inline_depth;	/* see dc_inline() */
	bool inline_depth_set;		/* given in the table */
	unsigned long flags;
	atomic_t inflight;		/* read and write bios not yet completed */
	unsigned long busy_until;	/* jiffies: no inline crypto before */

	char *cipher_string;		/* as given in the table */
	char *key_desc;			/* keyring description, never key bytes */
	struct crypto_skcipher *tfm;
	/*
	 * dm-ioctl holds only SRCU around messages and status: key_lock
	 * serialises key changes (setkey, key_desc, DC_KEY_VALID), the
	 * DC_SUSPENDED checks that allow them, and TABLE status.
	 */
	struct mutex key_lock;

	/*
	 * Two queues, so that work that waits for memory never stands in
	 * front of work that gives memory back (see io.c and README.md):
	 * wq allocates (bounce bios, read clones) and may wait for it;
	 * io_wq only continues crypto and submits finished writes.
	 */
	struct workqueue_struct *wq;
	struct workqueue_struct *io_wq;
	struct llist_head submit_list;	/* encrypted writes to submit */
	struct work_struct submit_work;	/* drains submit_list on io_wq */
	struct bio_set bs;		/* bounce bios for writes */
	struct bio_set read_bs;		/* clones for reads */
	mempool_t page_pool;		/* bounce pages for writes */
	struct percpu_counter nr_pages;	/* bounce pages allocated */
	bool page_client;		/* counted in the page ceiling */
	mempool_t req_pool;		/* crypto requests beyond the inline one */
	struct mutex alloc_lock;	/* serialises blocking page allocation */
	unsigned int req_size;		/* struct dc_req + skcipher request + IV */
	unsigned int req_iv_offset;	/* IV, before alignment, in a dc_req */
	unsigned int iv_align_mask;	/* crypto_skcipher_alignmask() */

	struct dc_stats __percpu *stats;
	unsigned int per_io_size;	/* ti->per_io_data_size */
};

/*
 * One crypto request: one sector in flight. The skcipher request, with the
 * tfm's context after it, follows at DC_REQ_SK_OFFSET; the IV follows that,
 * aligned as the cipher asks (dc_req_iv()).
 */
struct dc_req {
	struct dc_io *io;
	struct scatterlist sg_in;
	struct scatterlist sg_out;
};

#define DC_REQ_SK_OFFSET \
	ALIGN(sizeof(struct dc_req), __alignof__(struct skcipher_request))

static inline struct skcipher_request *dc_req_sk(struct dc_req *rq)
{
	return (struct skcipher_request *)((u8 *)rq + DC_REQ_SK_OFFSET);
}

static inline u8 *dc_req_iv(struct dc_config *dc, struct dc_req *rq)
{
	return PTR_ALIGN((u8 *)rq + dc->req_iv_offset, dc->iv_align_mask + 1);
}

/*
 * Per-bio state, in dm's per-bio data; the first crypto request (struct
 * dc_req) follows it at DC_IO_REQ_OFFSET.
 */
struct dc_io {
	struct dc_config *dc;
	struct bio *base_bio;		/* the bio dm gave us */
	struct bio *clone;		/* writes: the bounce bio */
	struct bvec_iter iter;		/* base_bio's data, saved at map time */
	sector_t sector;		/* target-relative start sector */

	/* Conversion cursor: where the next sector comes from and goes to. */
	struct bio *bio_in;
	struct bio *bio_out;
	struct bvec_iter iter_in;
	struct bvec_iter iter_out;
	u64 iv_sector;			/* next sector + iv_offset, 512B units */
	struct dc_req *free_req;	/* a request not in flight, or NULL */

	atomic_t pending;		/* requests in flight + 1 for the issuer */
	blk_status_t error;
	bool wait_restart;		/* a backlog restart is still owed */
	struct completion restart;	/* a backlogged request was accepted */
	struct work_struct work;
	struct llist_node llnode;	/* on the per-CPU softirq list */
};

#define DC_IO_REQ_OFFSET \
	ALIGN(sizeof(struct dc_io), __alignof__(struct skcipher_request))

static inline struct dc_req *dc_io_req(struct dc_io *io)
{
	return (struct dc_req *)((u8 *)io + DC_IO_REQ_OFFSET);
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
void dc_io_module_init(void);
void dc_io_module_exit(void);

/* status.c */
void dc_status(struct dm_target *ti, status_type_t type,
	       unsigned int status_flags, char *result, unsigned int maxlen);
int dc_message(struct dm_target *ti, unsigned int argc, char **argv,
	       char *result, unsigned int maxlen);
void dc_io_hints(struct dm_target *ti, struct queue_limits *limits);

#endif /* DM_DISKCRYPT_H */
