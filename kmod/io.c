// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-diskcrypt: the data path.
 *
 * Writes: the data is encrypted into bounce pages taken from a mempool that
 * the constructor reserved (the caller's pages are never modified), and the
 * bounce bio is submitted to the device. Reads: a clone of the bio (sharing
 * the caller's pages) is submitted; on completion the data is decrypted in
 * place. Crypto runs in the target's workqueue, where it may sleep.
 *
 * IVs are plain64: the little-endian sector number plus iv_offset, counted
 * in 512-byte units, or in sector_size units with iv_large_sectors, exactly
 * as dm-crypt computes them.
 */
#include <linux/blkdev.h>
#include <linux/highmem.h>
#include <linux/percpu.h>
#include <linux/scatterlist.h>
#include <linux/string.h>
#include <crypto/skcipher.h>

#include "diskcrypt.h"

static void dc_complete(struct dc_io *io, blk_status_t status)
{
	struct bio *bio = io->base_bio;

	if (unlikely(status)) {
		this_cpu_inc(io->dc->stats->errors);
		DMERR_LIMIT("%s error %d at sector %llu",
			    bio_data_dir(bio) == WRITE ? "write" : "read",
			    blk_status_to_errno(status),
			    (unsigned long long)io->sector);
	}
	bio->bi_status = status;
	bio_endio(bio);
}

static bool dc_sector_is_zero(struct page *page, unsigned int offset,
			      unsigned int len)
{
	void *addr = kmap_local_page(page);
	bool zero = !memchr_inv(addr + offset, 0, len);

	kunmap_local(addr);
	return zero;
}

/*
 * Encrypt or decrypt the data of @in (at @in_iter) into @out (at @out_iter),
 * one crypto sector at a time. @in and @out may be the same bio. May sleep.
 */
static blk_status_t dc_convert(struct dc_io *io, struct bio *in,
			       struct bvec_iter in_iter, struct bio *out,
			       struct bvec_iter out_iter, bool encrypt)
{
	struct dc_config *dc = io->dc;
	struct skcipher_request *req = dc_io_req(io);
	unsigned int ss = dc->sector_size;
	bool large = test_bit(DC_IV_LARGE_SECTORS, &dc->flags);
	bool zero_unwritten = !encrypt &&
			      test_bit(DC_ZERO_UNWRITTEN, &dc->flags);
	u64 sector = io->sector + dc->iv_offset;
	struct scatterlist sg_in, sg_out;
	DECLARE_CRYPTO_WAIT(wait);
	__le64 *iv = (__le64 *)io->iv;
	int r;

	skcipher_request_set_tfm(req, dc->tfm);
	skcipher_request_set_callback(req, CRYPTO_TFM_REQ_MAY_BACKLOG |
				      CRYPTO_TFM_REQ_MAY_SLEEP,
				      crypto_req_done, &wait);
	sg_init_table(&sg_in, 1);
	sg_init_table(&sg_out, 1);

	while (in_iter.bi_size) {
		struct bio_vec bv_in = bio_iter_iovec(in, in_iter);
		struct bio_vec bv_out = bio_iter_iovec(out, out_iter);

		if (unlikely(bv_in.bv_len & (ss - 1) ||
			     bv_out.bv_len & (ss - 1))) {
			DMERR_LIMIT("segment not a multiple of sector_size at sector %llu",
				    (unsigned long long)io->sector);
			return BLK_STS_IOERR;
		}

		if (zero_unwritten &&
		    dc_sector_is_zero(bv_in.bv_page, bv_in.bv_offset, ss)) {
			/* Never written: reads as zeros (in == out on reads). */
			this_cpu_add(dc->stats->zero_sectors, ss >> SECTOR_SHIFT);
		} else {
			iv[0] = cpu_to_le64(large ? sector >> dc->sector_shift :
						    sector);
			iv[1] = 0;
			sg_set_page(&sg_in, bv_in.bv_page, ss, bv_in.bv_offset);
			sg_set_page(&sg_out, bv_out.bv_page, ss,
				    bv_out.bv_offset);
			skcipher_request_set_crypt(req, &sg_in, &sg_out, ss,
						   io->iv);
			r = crypto_wait_req(encrypt ?
					    crypto_skcipher_encrypt(req) :
					    crypto_skcipher_decrypt(req),
					    &wait);
			if (unlikely(r)) {
				DMERR_LIMIT("%s failed with %d at sector %llu",
					    encrypt ? "encryption" : "decryption",
					    r, (unsigned long long)io->sector);
				return BLK_STS_IOERR;
			}
		}
		bio_advance_iter(in, &in_iter, ss);
		bio_advance_iter(out, &out_iter, ss);
		sector += ss >> SECTOR_SHIFT;
	}
	return BLK_STS_OK;
}

static void dc_free_bounce(struct dc_config *dc, struct bio *clone)
{
	struct bvec_iter_all iter_all;
	struct bio_vec *bv;

	bio_for_each_segment_all(bv, clone, iter_all)
		mempool_free(bv->bv_page, &dc->page_pool);
	bio_put(clone);
}

/*
 * A bio of @size bytes backed by pages of the target's page pool. The first
 * attempt does not wait; if the pool is short, the pages taken are returned
 * and the allocation is repeated under alloc_lock, waiting for the pool, so
 * that only one bio at a time holds a partial set of pool pages (the pool
 * holds enough pages for the largest bio, so it always completes).
 */
static struct bio *dc_alloc_bounce(struct dc_io *io, unsigned int size)
{
	struct dc_config *dc = io->dc;
	unsigned int i, nr = DIV_ROUND_UP(size, PAGE_SIZE);
	gfp_t gfp = GFP_NOWAIT | __GFP_HIGHMEM;
	struct bio *clone;
	struct page *page;

retry:
	if (gfp & __GFP_DIRECT_RECLAIM)
		mutex_lock(&dc->alloc_lock);

	clone = bio_alloc_bioset(dc->dev->bdev, nr, io->base_bio->bi_opf,
				 GFP_NOIO, &dc->bs);
	for (i = 0; i < nr; i++) {
		unsigned int len = min_t(unsigned int, size, PAGE_SIZE);

		page = mempool_alloc(&dc->page_pool, gfp);
		if (!page) {
			dc_free_bounce(dc, clone);
			gfp |= __GFP_DIRECT_RECLAIM;
			goto retry;
		}
		__bio_add_page(clone, page, len, 0);
		size -= len;
	}

	if (gfp & __GFP_DIRECT_RECLAIM)
		mutex_unlock(&dc->alloc_lock);
	return clone;
}

static void dc_write_endio(struct bio *clone)
{
	struct dc_io *io = clone->bi_private;
	blk_status_t status = clone->bi_status;

	dc_free_bounce(io->dc, clone);
	dc_complete(io, status);
}

static void dc_write_work(struct work_struct *work)
{
	struct dc_io *io = container_of(work, struct dc_io, work);
	struct dc_config *dc = io->dc;
	blk_status_t status;
	struct bio *clone;

	clone = dc_alloc_bounce(io, io->iter.bi_size);
	status = dc_convert(io, io->base_bio, io->iter, clone, clone->bi_iter,
			    true);
	if (unlikely(status)) {
		dc_free_bounce(dc, clone);
		dc_complete(io, status);
		return;
	}
	clone->bi_iter.bi_sector = dc->start + io->sector;
	clone->bi_ioprio = io->base_bio->bi_ioprio;
	clone->bi_private = io;
	clone->bi_end_io = dc_write_endio;
	dm_submit_bio_remap(io->base_bio, clone);
}

static void dc_read_work(struct work_struct *work)
{
	struct dc_io *io = container_of(work, struct dc_io, work);

	dc_complete(io, dc_convert(io, io->base_bio, io->iter, io->base_bio,
				   io->iter, false));
}

static void dc_read_endio(struct bio *clone)
{
	struct dc_io *io = clone->bi_private;
	blk_status_t status = clone->bi_status;

	bio_put(clone);
	if (unlikely(status)) {
		dc_complete(io, status);
		return;
	}
	INIT_WORK(&io->work, dc_read_work);
	queue_work(io->dc->wq, &io->work);
}

/* Clone the read and send it down; false if no clone could be had. */
static bool dc_submit_read(struct dc_io *io, gfp_t gfp)
{
	struct dc_config *dc = io->dc;
	struct bio *clone;

	clone = bio_alloc_clone(dc->dev->bdev, io->base_bio, gfp, &dc->bs);
	if (!clone)
		return false;
	clone->bi_iter.bi_sector = dc->start + io->sector;
	clone->bi_private = io;
	clone->bi_end_io = dc_read_endio;
	dm_submit_bio_remap(io->base_bio, clone);
	return true;
}

static void dc_read_submit_work(struct work_struct *work)
{
	struct dc_io *io = container_of(work, struct dc_io, work);

	dc_submit_read(io, GFP_NOIO);
}

int dc_map(struct dm_target *ti, struct bio *bio)
{
	struct dc_config *dc = ti->private;
	unsigned int step = dc->sector_size >> SECTOR_SHIFT;
	struct dc_io *io;

	/* Empty flushes, and discards when allowed, go straight down. */
	if (unlikely(bio->bi_opf & REQ_PREFLUSH ||
		     bio_op(bio) == REQ_OP_DISCARD)) {
		bio_set_dev(bio, dc->dev->bdev);
		if (bio_sectors(bio))
			bio->bi_iter.bi_sector = dc->start +
				dm_target_offset(ti, bio->bi_iter.bi_sector);
		return DM_MAPIO_REMAPPED;
	}
	if (unlikely(bio_op(bio) != REQ_OP_READ &&
		     bio_op(bio) != REQ_OP_WRITE))
		return DM_MAPIO_KILL;

	/* A write's bounce bio holds at most BIO_MAX_VECS pages. */
	if (bio_op(bio) == REQ_OP_WRITE &&
	    unlikely(bio->bi_iter.bi_size > (BIO_MAX_VECS << PAGE_SHIFT)))
		dm_accept_partial_bio(bio, (BIO_MAX_VECS << PAGE_SHIFT) >>
					   SECTOR_SHIFT);

	if (unlikely(bio->bi_iter.bi_sector & (step - 1) ||
		     bio->bi_iter.bi_size & (dc->sector_size - 1))) {
		DMERR_LIMIT("I/O not aligned to sector_size %u at sector %llu",
			    dc->sector_size,
			    (unsigned long long)bio->bi_iter.bi_sector);
		return DM_MAPIO_KILL;
	}

	io = dm_per_bio_data(bio, dc->per_io_size);
	io->dc = dc;
	io->base_bio = bio;
	io->sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
	io->iter = bio->bi_iter;

	if (bio_op(bio) == REQ_OP_READ) {
		this_cpu_inc(dc->stats->reads);
		this_cpu_add(dc->stats->read_sectors, bio_sectors(bio));
		if (!dc_submit_read(io, GFP_NOWAIT)) {
			INIT_WORK(&io->work, dc_read_submit_work);
			queue_work(dc->wq, &io->work);
		}
		return DM_MAPIO_SUBMITTED;
	}

	this_cpu_inc(dc->stats->writes);
	this_cpu_add(dc->stats->write_sectors, bio_sectors(bio));
	INIT_WORK(&io->work, dc_write_work);
	queue_work(dc->wq, &io->work);
	return DM_MAPIO_SUBMITTED;
}

/* Reserve everything the data path needs, so that it never fails for memory. */
int dc_io_init(struct dm_target *ti, struct dc_config *dc)
{
	int r;

	dc->stats = alloc_percpu(struct dc_stats);
	if (!dc->stats) {
		ti->error = "Cannot allocate I/O counters";
		return -ENOMEM;
	}
	r = bioset_init(&dc->bs, BIO_POOL_SIZE, 0, BIOSET_NEED_BVECS);
	if (r) {
		ti->error = "Cannot allocate bio set";
		return r;
	}
	r = mempool_init_page_pool(&dc->page_pool, BIO_MAX_VECS, 0);
	if (r) {
		ti->error = "Cannot allocate page pool";
		return r;
	}
	dc->wq = alloc_workqueue("kdiskcryptd/%s", WQ_UNBOUND | WQ_MEM_RECLAIM,
				 num_online_cpus(),
				 dm_table_device_name(ti->table));
	if (!dc->wq) {
		ti->error = "Cannot allocate workqueue";
		return -ENOMEM;
	}
	dc->per_io_size = dc_per_io_size(dc->tfm);
	ti->per_io_data_size = dc->per_io_size;
	return 0;
}

/* Release what dc_io_init() reserved; copes with a partial init. */
void dc_io_exit(struct dc_config *dc)
{
	if (dc->wq)
		destroy_workqueue(dc->wq);
	mempool_exit(&dc->page_pool);
	bioset_exit(&dc->bs);
	free_percpu(dc->stats);
}
