// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-diskcrypt: the data path.
 *
 * Writes are encrypted in the submitting context, inside map(), into bounce
 * pages from a page mempool reserved by the constructor (the caller's pages
 * are never modified), and the bounce bio is submitted from there. Reads are
 * cloned (sharing the caller's pages) and decrypted in place in the clone's
 * completion (softirq) context. While at most inline_depth bios are in
 * flight and the cipher completes synchronously (Debian's xts-aes-aesni
 * does whenever the FPU is usable, although it is registered as async),
 * neither path leaves the submitting or completing context for bios of up
 * to DC_INLINE_BYTES; the crypto of a larger bio beyond that continues on
 * io_wq.
 *
 * One crypto request is issued per crypto sector. A request that completes
 * synchronously is reused for the next sector; one that goes asynchronous
 * (-EINPROGRESS) or into the driver's backlog (-EBUSY) stays in flight and
 * the next sector takes a request from req_pool. io->pending counts the
 * requests in flight plus one reference held by the issuer; whoever drops
 * the last one finishes the bio. Work moves to the target's workqueue only
 * where the context forbids it, or when more than inline_depth bios are in
 * flight:
 *  - read completions in hard-IRQ context or with IRQs disabled go to a
 *    per-CPU tasklet (the crypto API refuses to walk scatterlists there),
 *  - no bounce pages or read clone without waiting: to wq, which may wait,
 *  - no crypto request without waiting, or a backlogged request, where
 *    waiting is not allowed: the rest of the bio's crypto goes to io_wq,
 *  - the crypto of a bio beyond DC_INLINE_BYTES, outside the workqueues:
 *    the rest of it to io_wq,
 *  - a write whose last request completed asynchronously: its submission
 *    moves out of the crypto driver's completion context, to io_wq,
 *  - the read_workqueue / write_workqueue table options: to wq.
 * REQ_NOWAIT bios never wait in map() either: what would wait goes to a
 * workqueue (the bio is not failed with BLK_STS_AGAIN).
 *
 * Forward progress under memory pressure (README.md has the argument):
 * work on wq may wait for memory that only completed I/O gives back (bounce
 * pages, bounce bios, read clones); work on io_wq never does (it waits for
 * the crypto driver at most), so a write that holds bounce pages never
 * waits behind work that waits for bounce pages. Nothing in the I/O path
 * lets the crypto driver allocate: no CRYPTO_TFM_REQ_MAY_SLEEP, and no
 * driver that allocates per request (CRYPTO_ALG_ALLOCATES_MEMORY).
 *
 * IVs are plain64: the little-endian sector number plus iv_offset, counted
 * in 512-byte units, or in sector_size units with iv_large_sectors, exactly
 * as dm-crypt computes them.
 */
#include <linux/blk-cgroup.h>
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/highmem.h>
#include <linux/interrupt.h>
#include <linux/llist.h>
#include <linux/percpu.h>
#include <linux/preempt.h>
#include <linux/scatterlist.h>
#include <linux/string.h>
#include <crypto/skcipher.h>

#include "diskcrypt.h"

/* Where the crypto code runs, which decides what it may wait for. */
enum dc_ctx {
	DC_CTX_ATOMIC,	/* completion paths: never sleep */
	DC_CTX_MAP,	/* map(): never wait for our own mempools */
	DC_CTX_WORK,	/* the workqueue: may sleep and wait */
};

/*
 * The most crypto one bio gets in map() or in a completion (softirq, which
 * it holds up for every other device on that CPU): the rest continues on
 * io_wq, which yields between sectors. 128 KiB is about 40 us with AES-NI
 * and about 1 ms with the generic C AES. A per-CPU tasklet run converts at
 * most DC_SOFTIRQ_BUDGET bytes before it lets other softirqs run.
 */
#define DC_INLINE_BYTES		(128U * 1024)
#define DC_SOFTIRQ_BUDGET	(2 * DC_INLINE_BYTES)

#define DC_REQ_POOL_SIZE	64
#define DC_MIN_IOS		64	/* reserve of each bio set */
/* Bounce pages: a ceiling of 2% of low memory, shared by all targets. */
#define DC_MEMORY_PERCENT	2
#define DC_MIN_PAGES		(8 * BIO_MAX_VECS)

/*
 * Read completions from hard-IRQ context wait in list for softirq context.
 * backlog holds those a tasklet run took but left for its next run (the
 * tasklet alone touches it: a tasklet never runs twice at once).
 */
struct dc_softirq {
	struct llist_head list;
	struct llist_node *backlog;
	struct tasklet_struct tasklet;
};

static DEFINE_PER_CPU(struct dc_softirq, dc_softirq);

/* Targets alive, and each one's share of the bounce page ceiling. */
static DEFINE_MUTEX(dc_clients_lock);
static unsigned int dc_clients;
static unsigned long dc_pages_per_client;

static void dc_run(struct dc_io *io, enum dc_ctx ctx);

static void dc_complete(struct dc_io *io, blk_status_t status)
{
	struct bio *bio = io->base_bio;

	atomic_dec(&io->dc->inflight);
	/* AGAIN from below is not a device error: the caller retries. */
	if (unlikely(status) && status != BLK_STS_AGAIN) {
		this_cpu_inc(io->dc->stats->errors);
		DMERR_LIMIT("%s: %s error %d at sector %llu", io->dc->name,
			    bio_data_dir(bio) == WRITE ? "write" : "read",
			    blk_status_to_errno(status),
			    (unsigned long long)io->sector);
	}
	bio->bi_status = status;
	bio_endio(bio);
}

static void dc_defer(struct dc_io *io, struct workqueue_struct *wq,
		     work_func_t fn)
{
	this_cpu_inc(io->dc->stats->deferred);
	INIT_WORK(&io->work, fn);
	queue_work(wq, &io->work);
}

static bool dc_sector_is_zero(struct page *page, unsigned int offset,
			      unsigned int len)
{
	void *addr = kmap_local_page(page);
	bool zero = !memchr_inv(addr + offset, 0, len);

	kunmap_local(addr);
	return zero;
}

/* Bounce pages: the page pool's allocator, with a ceiling */

/*
 * Beyond its share of the ceiling a target gets no new pages: the pool's
 * reserve, refilled as bounce writes complete, is all it has. The reserve
 * itself is allocated within the share, so this never starves a target.
 */
static void *dc_page_alloc(gfp_t gfp, void *data)
{
	struct dc_config *dc = data;
	struct page *page;

	if (unlikely(percpu_counter_read_positive(&dc->nr_pages) >=
		     READ_ONCE(dc_pages_per_client)))
		return NULL;
	page = alloc_page(gfp);
	if (likely(page))
		percpu_counter_inc(&dc->nr_pages);
	return page;
}

static void dc_page_free(void *page, void *data)
{
	struct dc_config *dc = data;

	__free_page(page);
	percpu_counter_dec(&dc->nr_pages);
}

static void dc_update_page_ceiling(int change)
{
	unsigned long pages;

	mutex_lock(&dc_clients_lock);
	dc_clients += change;
	pages = (totalram_pages() - totalhigh_pages()) * DC_MEMORY_PERCENT / 100;
	if (dc_clients)
		pages /= dc_clients;
	WRITE_ONCE(dc_pages_per_client, max_t(unsigned long, pages, DC_MIN_PAGES));
	mutex_unlock(&dc_clients_lock);
}

/* Bounce bios */

static void dc_free_bounce(struct dc_config *dc, struct bio *clone)
{
	struct bvec_iter_all iter_all;
	struct bio_vec *bv;

	bio_for_each_segment_all(bv, clone, iter_all)
		mempool_free(bv->bv_page, &dc->page_pool);
	bio_put(clone);
}

/*
 * A bio of @size bytes backed by pages of the target's page pool, or NULL if
 * that cannot be had without waiting (@wait false). With @wait, a first
 * attempt does not wait; if the pool is short, the pages taken are returned
 * and the allocation is repeated under alloc_lock, waiting for the pool, so
 * that only one bio at a time holds a partial set of pool pages (the pool
 * holds enough pages for the largest bio, so it always completes).
 */
static struct bio *dc_alloc_bounce(struct dc_io *io, unsigned int size,
				   bool wait)
{
	struct dc_config *dc = io->dc;
	unsigned int i, len, nr = DIV_ROUND_UP(size, PAGE_SIZE);
	gfp_t gfp = GFP_NOWAIT | __GFP_NOWARN | __GFP_HIGHMEM;
	unsigned int left;
	struct bio *clone;
	struct page *page;

retry:
	if (gfp & __GFP_DIRECT_RECLAIM)
		mutex_lock(&dc->alloc_lock);
	clone = bio_alloc_bioset(dc->dev->bdev, nr, io->base_bio->bi_opf,
				 wait ? GFP_NOIO : GFP_NOWAIT, &dc->bs);
	if (!clone)
		return NULL;
	for (i = 0, left = size; i < nr; i++, left -= len) {
		len = min_t(unsigned int, left, PAGE_SIZE);
		page = mempool_alloc(&dc->page_pool, gfp);
		if (!page) {
			dc_free_bounce(dc, clone);
			if (!wait)
				return NULL;
			gfp = GFP_NOIO | __GFP_HIGHMEM;
			goto retry;
		}
		__bio_add_page(clone, page, len, 0);
	}
	if (gfp & __GFP_DIRECT_RECLAIM)
		mutex_unlock(&dc->alloc_lock);

	/* Completed by interrupt: nobody polls for a bio we submit. */
	clone->bi_opf &= ~REQ_POLLED;
	clone->bi_iter.bi_sector = dc->start + io->sector;
	clone->bi_ioprio = io->base_bio->bi_ioprio;
	bio_clone_blkg_association(clone, io->base_bio);
	clone->bi_private = io;
	return clone;
}

/* Crypto requests */

static void dc_req_done(struct crypto_async_request *areq, int err);

/*
 * The request for the next sector, or NULL if @ctx may not wait for one.
 * Outside the workqueue, GFP_NOWAIT: the workqueue is the fallback, so
 * there is no reason to dip into the atomic reserves. Never
 * CRYPTO_TFM_REQ_MAY_SLEEP (as dm-crypt): with it, the crypto API may
 * allocate with GFP_KERNEL (skcipher walk buffers) in the I/O path.
 */
static struct dc_req *dc_get_req(struct dc_io *io, enum dc_ctx ctx)
{
	struct dc_config *dc = io->dc;
	struct dc_req *rq = io->free_req;

	if (!rq) {
		rq = mempool_alloc(&dc->req_pool, ctx == DC_CTX_WORK ? GFP_NOIO :
				   GFP_NOWAIT | __GFP_NOWARN);
		if (!rq)
			return NULL;
		rq->io = io;
		sg_init_table(&rq->sg_in, 1);
		sg_init_table(&rq->sg_out, 1);
		io->free_req = rq;
	}
	skcipher_request_set_tfm(dc_req_sk(rq), dc->tfm);
	skcipher_request_set_callback(dc_req_sk(rq), CRYPTO_TFM_REQ_MAY_BACKLOG,
				      dc_req_done, rq);
	return rq;
}

static void dc_put_req(struct dc_io *io, struct dc_req *rq)
{
	if (rq != dc_io_req(io))
		mempool_free(rq, &io->dc->req_pool);
}

static void dc_advance(struct dc_io *io)
{
	unsigned int ss = io->dc->sector_size;

	bio_advance_iter(io->bio_in, &io->iter_in, ss);
	bio_advance_iter(io->bio_out, &io->iter_out, ss);
	io->iv_sector += ss >> SECTOR_SHIFT;
}

/*
 * Issue crypto for the sectors from the cursor on. Returns false if the
 * rest must continue in the workqueue (the cursor says where).
 */
static bool dc_convert(struct dc_io *io, enum dc_ctx ctx)
{
	struct dc_config *dc = io->dc;
	unsigned int ss = dc->sector_size;
	bool write = bio_data_dir(io->base_bio) == WRITE;
	bool zeros = !write && test_bit(DC_ZERO_UNWRITTEN, &dc->flags);
	bool large = test_bit(DC_IV_LARGE_SECTORS, &dc->flags);
	unsigned int budget = DC_INLINE_BYTES;

	while (io->iter_in.bi_size && !READ_ONCE(io->error)) {
		struct bio_vec in = bio_iter_iovec(io->bio_in, io->iter_in);
		struct bio_vec out = bio_iter_iovec(io->bio_out, io->iter_out);
		struct skcipher_request *req;
		struct dc_req *rq;
		__le64 *iv;
		int r;

		if (unlikely(in.bv_len & (ss - 1) || out.bv_len & (ss - 1))) {
			DMERR_LIMIT("%s: segment not a multiple of sector_size at sector %llu",
				    dc->name, (unsigned long long)io->sector);
			io->error = BLK_STS_IOERR;
			break;
		}
		if (ctx != DC_CTX_WORK) {
			/* Bounded work outside the workqueue. */
			if (!budget)
				return false;
			budget -= min(budget, ss);
		}
		if (zeros && dc_sector_is_zero(in.bv_page, in.bv_offset, ss)) {
			/* Never written: reads as zeros (in == out on reads). */
			this_cpu_add(dc->stats->zero_sectors, ss >> SECTOR_SHIFT);
			dc_advance(io);
			continue;
		}

		rq = dc_get_req(io, ctx);
		if (!rq)
			return false;
		req = dc_req_sk(rq);
		iv = (__le64 *)dc_req_iv(dc, rq);
		iv[0] = cpu_to_le64(large ? io->iv_sector >> dc->sector_shift :
					    io->iv_sector);
		iv[1] = 0;
		sg_set_page(&rq->sg_in, in.bv_page, ss, in.bv_offset);
		sg_set_page(&rq->sg_out, out.bv_page, ss, out.bv_offset);
		skcipher_request_set_crypt(req, &rq->sg_in, &rq->sg_out, ss,
					   (u8 *)iv);

		atomic_inc(&io->pending);
		r = write ? crypto_skcipher_encrypt(req) :
			    crypto_skcipher_decrypt(req);
		dc_advance(io);
		switch (r) {
		case 0:
			/* Done already: reuse the request. */
			atomic_dec(&io->pending);
			break;
		case -EINPROGRESS:
			io->free_req = NULL;
			break;
		case -EBUSY:
			/*
			 * Backlogged: it completes later, but issue no more
			 * until the driver has accepted it.
			 */
			io->free_req = NULL;
			this_cpu_inc(dc->stats->backlogged);
			if (ctx == DC_CTX_WORK) {
				wait_for_completion(&io->restart);
			} else if (!try_wait_for_completion(&io->restart)) {
				io->wait_restart = true;
				return false;
			}
			break;
		default:
			atomic_dec(&io->pending);
			DMERR_LIMIT("%s: %s failed with %d at sector %llu",
				    dc->name, write ? "encryption" : "decryption",
				    r, (unsigned long long)io->sector);
			io->error = BLK_STS_IOERR;
			break;
		}
		if (ctx == DC_CTX_WORK)
			cond_resched();
	}
	return true;
}

/*
 * Encrypted writes whose last request completed in a crypto driver's
 * callback, where a bio may not be submitted: one work item per target
 * submits them all from io_wq. It allocates nothing and waits for nothing
 * but the device's own request tags, so it always makes progress, and with
 * it the bounce pages and bounce bios come back.
 */
static void dc_queue_submit(struct dc_io *io)
{
	struct dc_config *dc = io->dc;

	if (llist_add(&io->llnode, &dc->submit_list))
		queue_work(dc->io_wq, &dc->submit_work);
}

static void dc_submit_work(struct work_struct *work)
{
	struct dc_config *dc = container_of(work, struct dc_config, submit_work);
	struct llist_node *list;
	struct dc_io *io, *next;
	struct blk_plug plug;

	list = llist_reverse_order(llist_del_all(&dc->submit_list));
	blk_start_plug(&plug);
	llist_for_each_entry_safe(io, next, list, llnode)
		dm_submit_bio_remap(io->base_bio, io->clone);
	blk_finish_plug(&plug);
}

/* All crypto of the bio is done (or failed). */
static void dc_finish(struct dc_io *io, enum dc_ctx ctx)
{
	struct dc_req *rq = io->free_req;

	if (rq)
		dc_put_req(io, rq);
	if (bio_data_dir(io->base_bio) == READ) {
		dc_complete(io, io->error);
		return;
	}
	if (unlikely(io->error)) {
		dc_free_bounce(io->dc, io->clone);
		dc_complete(io, io->error);
		return;
	}
	if (ctx == DC_CTX_ATOMIC) {
		/* A crypto driver's completion context: submit from io_wq. */
		dc_queue_submit(io);
		return;
	}
	dm_submit_bio_remap(io->base_bio, io->clone);
}

static void dc_io_put(struct dc_io *io, enum dc_ctx ctx)
{
	if (atomic_dec_and_test(&io->pending))
		dc_finish(io, ctx);
}

static void dc_req_done(struct crypto_async_request *areq, int err)
{
	struct dc_req *rq = areq->data;
	struct dc_io *io = rq->io;

	if (err == -EINPROGRESS) {
		/* A backlogged request was accepted: issuing may go on. */
		complete(&io->restart);
		return;
	}
	this_cpu_inc(io->dc->stats->async);
	if (unlikely(err)) {
		DMERR_LIMIT("%s: async %s failed with %d at sector %llu",
			    io->dc->name, bio_data_dir(io->base_bio) == WRITE ?
			    "encryption" : "decryption", err,
			    (unsigned long long)io->sector);
		WRITE_ONCE(io->error, BLK_STS_IOERR);
	}
	dc_put_req(io, rq);
	dc_io_put(io, DC_CTX_ATOMIC);
}

static void dc_convert_work(struct work_struct *work)
{
	struct dc_io *io = container_of(work, struct dc_io, work);

	if (io->wait_restart) {
		io->wait_restart = false;
		wait_for_completion(&io->restart);
	}
	dc_run(io, DC_CTX_WORK);
}

/*
 * Convert from the cursor; continue in io_wq if need be. The bio may hold
 * bounce pages already, so it must not queue behind work that waits for
 * bounce pages (on wq); on io_wq it waits for the crypto driver at most.
 */
static void dc_run(struct dc_io *io, enum dc_ctx ctx)
{
	if (!dc_convert(io, ctx)) {
		dc_defer(io, io->dc->io_wq, dc_convert_work);
		return;
	}
	dc_io_put(io, ctx);
}

static void dc_start_convert(struct dc_io *io, struct bio *out)
{
	io->bio_in = io->base_bio;
	io->iter_in = io->iter;
	io->bio_out = out;
	io->iter_out = out == io->base_bio ? io->iter : out->bi_iter;
	io->iv_sector = io->sector + io->dc->iv_offset;
	io->free_req = dc_io_req(io);
	io->free_req->io = io;
	sg_init_table(&io->free_req->sg_in, 1);
	sg_init_table(&io->free_req->sg_out, 1);
	atomic_set(&io->pending, 1);
	io->error = BLK_STS_OK;
	io->wait_restart = false;
	init_completion(&io->restart);
}

/*
 * Inline crypto gives the lowest latency, but it does all of a submitter's
 * crypto on the submitter's CPU (and all of a completion queue's on that
 * queue's CPU, in softirq, where it also holds up the submitter). Once more
 * bios are in flight than inline_depth (default 1: a lone bio is always
 * inline), the device's queue, not the crypto, sets the latency, and the
 * unbound workqueue spreads the crypto over the idle CPUs.
 *
 * The count alone feeds on itself: a submitter that encrypts its writes
 * inline submits no faster than it encrypts, so its queue drains between
 * writes and the count stays low, which keeps the crypto inline (4 KiB
 * random writes at queue depth 32 ran at 0.92x dm-crypt's defaults, against
 * 1.07x with inline_depth:0). So a count above inline_depth, seen at any
 * map(), also keeps the crypto off the submitters for DC_BUSY_HOLD_MS
 * (dc->busy_until); a submitter that waits for each bio (queue depth 1)
 * never raises the count and stays inline.
 */
static bool dc_inline(struct dc_config *dc)
{
	return (unsigned int)atomic_read(&dc->inflight) <= dc->inline_depth &&
	       !time_before(jiffies, READ_ONCE(dc->busy_until));
}

/* At map(): a count above inline_depth starts (or extends) a busy spell. */
static void dc_note_inflight(struct dc_config *dc, unsigned int inflight)
{
	unsigned long until;

	if (likely(inflight <= dc->inline_depth))
		return;
	until = jiffies + msecs_to_jiffies(DC_BUSY_HOLD_MS);
	if (READ_ONCE(dc->busy_until) != until)
		WRITE_ONCE(dc->busy_until, until);
}

/* Writes */

static void dc_write_endio(struct bio *clone)
{
	struct dc_io *io = clone->bi_private;
	blk_status_t status = clone->bi_status;

	dc_free_bounce(io->dc, clone);
	dc_complete(io, status);
}

/* The write in wq, which may wait for bounce pages and a bounce bio. */
static void dc_write_work(struct work_struct *work)
{
	struct dc_io *io = container_of(work, struct dc_io, work);

	io->clone = dc_alloc_bounce(io, io->iter.bi_size, true);
	io->clone->bi_end_io = dc_write_endio;
	dc_start_convert(io, io->clone);
	dc_run(io, DC_CTX_WORK);
}

static void dc_map_write(struct dc_io *io)
{
	struct dc_config *dc = io->dc;

	if (test_bit(DC_WRITE_WORKQUEUE, &dc->flags) || !dc_inline(dc)) {
		dc_defer(io, dc->wq, dc_write_work);
		return;
	}
	io->clone = dc_alloc_bounce(io, io->iter.bi_size, false);
	if (!io->clone) {
		dc_defer(io, dc->wq, dc_write_work);
		return;
	}
	io->clone->bi_end_io = dc_write_endio;
	dc_start_convert(io, io->clone);
	dc_run(io, DC_CTX_MAP);
}

/* Reads */

static void dc_read_work(struct work_struct *work)
{
	struct dc_io *io = container_of(work, struct dc_io, work);

	dc_run(io, DC_CTX_WORK);
}

/*
 * Oldest first: the backlog of the last run, then what arrived since. Each
 * bio converts at most DC_INLINE_BYTES here (dc_convert() moves the rest to
 * io_wq); past DC_SOFTIRQ_BUDGET the rest waits for the next run, so that
 * other softirqs (and ksoftirqd, once softirq has run too long) get the CPU.
 */
static void dc_softirq_run(struct tasklet_struct *t)
{
	struct dc_softirq *q = from_tasklet(q, t, tasklet);
	struct llist_node *node = q->backlog;
	unsigned int budget = DC_SOFTIRQ_BUDGET;
	struct dc_io *io;

	while (budget) {
		if (!node) {
			node = llist_reverse_order(llist_del_all(&q->list));
			if (!node)
				break;
		}
		io = llist_entry(node, struct dc_io, llnode);
		node = node->next;
		budget -= min3(budget, io->iter.bi_size, DC_INLINE_BYTES);
		dc_run(io, DC_CTX_ATOMIC);
	}
	q->backlog = node;
	/*
	 * A bio added to an empty list after the last llist_del_all()
	 * scheduled this tasklet itself; one left in list or backlog here
	 * did not.
	 */
	if (node || !llist_empty(&q->list))
		tasklet_schedule(t);
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
	dc_start_convert(io, io->base_bio);
	if (test_bit(DC_READ_WORKQUEUE, &io->dc->flags) || !dc_inline(io->dc)) {
		dc_defer(io, io->dc->wq, dc_read_work);
		return;
	}
	if (in_hardirq() || irqs_disabled()) {
		struct dc_softirq *q = this_cpu_ptr(&dc_softirq);

		if (llist_add(&io->llnode, &q->list))
			tasklet_schedule(&q->tasklet);
		return;
	}
	dc_run(io, DC_CTX_ATOMIC);
}

/* Clone the read and send it down; false if no clone could be had. */
static bool dc_submit_read(struct dc_io *io, gfp_t gfp)
{
	struct dc_config *dc = io->dc;
	struct bio *clone;

	clone = bio_alloc_clone(dc->dev->bdev, io->base_bio, gfp, &dc->read_bs);
	if (!clone)
		return false;
	/* Completed by interrupt: nobody polls for a bio we submit. */
	clone->bi_opf &= ~REQ_POLLED;
	clone->bi_iter.bi_sector = dc->start + io->sector;
	clone->bi_private = io;
	clone->bi_end_io = dc_read_endio;
	dm_submit_bio_remap(io->base_bio, clone);
	return true;
}

/*
 * In wq: may wait for the read clone reserve, which read completions give
 * back before any crypto. Even waiting, bio_alloc_clone() fails if the
 * bio's integrity payload cannot be cloned: end the bio then.
 */
static void dc_read_submit_work(struct work_struct *work)
{
	struct dc_io *io = container_of(work, struct dc_io, work);

	if (unlikely(!dc_submit_read(io, GFP_NOIO)))
		dc_complete(io, BLK_STS_RESOURCE);
}

/* As dm-crypt: GFP_NOWAIT in map(), the workqueue waits if need be. */
static void dc_map_read(struct dc_io *io)
{
	if (!dc_submit_read(io, GFP_NOWAIT | __GFP_NOWARN))
		dc_defer(io, io->dc->wq, dc_read_submit_work);
}

/*
 * The most a write may carry: its bounce bio holds at most BIO_MAX_VECS
 * pages. A REQ_NOWAIT write must also fit the device's limits in one piece
 * (one page per segment), because the block layer ends a REQ_NOWAIT bio it
 * would have to split with BLK_STS_AGAIN, which would reach user space
 * after the other pieces of the write were done.
 */
static unsigned int dc_max_write_bytes(struct dc_config *dc, struct bio *bio)
{
	unsigned int max = BIO_MAX_VECS << PAGE_SHIFT;
	struct request_queue *q;

	if (likely(!(bio->bi_opf & REQ_NOWAIT)))
		return max;
	q = bdev_get_queue(dc->dev->bdev);
	max = min3(max, queue_max_segments(q) << PAGE_SHIFT,
		   queue_max_sectors(q) << SECTOR_SHIFT);
	return max_t(unsigned int, round_down(max, dc->sector_size),
		     dc->sector_size);
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

	if (bio_op(bio) == REQ_OP_WRITE) {
		unsigned int max = dc_max_write_bytes(dc, bio);

		if (unlikely(bio->bi_iter.bi_size > max))
			dm_accept_partial_bio(bio, max >> SECTOR_SHIFT);
	}

	if (unlikely(bio->bi_iter.bi_sector & (step - 1) ||
		     bio->bi_iter.bi_size & (dc->sector_size - 1))) {
		DMERR_LIMIT("%s: I/O not aligned to sector_size %u at sector %llu",
			    dc->name, dc->sector_size,
			    (unsigned long long)bio->bi_iter.bi_sector);
		return DM_MAPIO_KILL;
	}

	dc_note_inflight(dc, atomic_inc_return(&dc->inflight));
	io = dm_per_bio_data(bio, dc->per_io_size);
	io->dc = dc;
	io->base_bio = bio;
	io->sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
	io->iter = bio->bi_iter;

	if (bio_op(bio) == REQ_OP_READ) {
		this_cpu_inc(dc->stats->reads);
		this_cpu_add(dc->stats->read_sectors, bio_sectors(bio));
		dc_map_read(io);
	} else {
		this_cpu_inc(dc->stats->writes);
		this_cpu_add(dc->stats->write_sectors, bio_sectors(bio));
		dc_map_write(io);
	}
	return DM_MAPIO_SUBMITTED;
}

/*
 * The crypto request with the IV after it. The IV is aligned as the cipher
 * asks: a request starts CRYPTO_MINALIGN-aligned (kmalloc, or dm's per-bio
 * data, whose size is rounded for that), so a stricter alignment costs at
 * most alignmask bytes of padding.
 */
static void dc_req_layout(struct dc_config *dc)
{
	unsigned int mask = crypto_skcipher_alignmask(dc->tfm) |
			    (__alignof__(u64) - 1);

	dc->iv_align_mask = mask;
	dc->req_iv_offset = ALIGN(DC_REQ_SK_OFFSET +
				  sizeof(struct skcipher_request) +
				  crypto_skcipher_reqsize(dc->tfm),
				  __alignof__(u64));
	dc->req_size = dc->req_iv_offset + DC_IV_BYTES +
		       (mask >= CRYPTO_MINALIGN ? mask : 0);
}

/*
 * Reserve everything the data path needs, so that it never fails for
 * memory and always makes progress: a bio set each for bounce bios and
 * read clones (a read never waits for a write's bio, nor a write for a
 * read's), pages for the largest bounce bio, crypto requests.
 */
int dc_io_init(struct dm_target *ti, struct dc_config *dc)
{
	int r;

	dc->stats = alloc_percpu(struct dc_stats);
	if (!dc->stats) {
		ti->error = "Cannot allocate I/O counters";
		return -ENOMEM;
	}
	r = bioset_init(&dc->bs, DC_MIN_IOS, 0, BIOSET_NEED_BVECS);
	if (r) {
		ti->error = "Cannot allocate bio set";
		return r;
	}
	r = bioset_init(&dc->read_bs, DC_MIN_IOS, 0, 0);
	if (r) {
		ti->error = "Cannot allocate bio set";
		return r;
	}
	r = percpu_counter_init(&dc->nr_pages, 0, GFP_KERNEL);
	if (r) {
		ti->error = "Cannot allocate page counter";
		return r;
	}
	dc->page_client = true;
	dc_update_page_ceiling(1);
	r = mempool_init(&dc->page_pool, BIO_MAX_VECS, dc_page_alloc,
			 dc_page_free, dc);
	if (r) {
		ti->error = "Cannot allocate page pool";
		return r;
	}
	dc_req_layout(dc);
	r = mempool_init_kmalloc_pool(&dc->req_pool, DC_REQ_POOL_SIZE,
				      dc->req_size);
	if (r) {
		ti->error = "Cannot allocate crypto request pool";
		return r;
	}
	dc->name = dm_table_device_name(ti->table);
	init_llist_head(&dc->submit_list);
	INIT_WORK(&dc->submit_work, dc_submit_work);
	/*
	 * Not WQ_HIGHPRI: nice -20 workers preempt the submitters and the
	 * completions that feed them; with it, 1 MiB writes at queue depth 4
	 * ran at 74-83 MB/s against 117-123 MB/s without (-smp 2 guest).
	 */
	dc->wq = alloc_workqueue("kdiskcryptd/%s", WQ_UNBOUND | WQ_MEM_RECLAIM,
				 num_online_cpus(), dc->name);
	if (!dc->wq) {
		ti->error = "Cannot allocate workqueue";
		return -ENOMEM;
	}
	dc->io_wq = alloc_workqueue("kdiskcrypt_io/%s",
				    WQ_UNBOUND | WQ_MEM_RECLAIM,
				    num_online_cpus(), dc->name);
	if (!dc->io_wq) {
		ti->error = "Cannot allocate workqueue";
		return -ENOMEM;
	}
	/* Rounded, so that struct dc_io and the request stay aligned. */
	dc->per_io_size = ALIGN(DC_IO_REQ_OFFSET + dc->req_size,
				ARCH_KMALLOC_MINALIGN);
	ti->per_io_data_size = dc->per_io_size;
	return 0;
}

/* Release what dc_io_init() reserved; copes with a partial init. */
void dc_io_exit(struct dc_config *dc)
{
	if (dc->wq)
		destroy_workqueue(dc->wq);
	if (dc->io_wq)
		destroy_workqueue(dc->io_wq);
	mempool_exit(&dc->req_pool);
	mempool_exit(&dc->page_pool);
	if (dc->page_client) {
		WARN_ON(percpu_counter_sum(&dc->nr_pages));
		percpu_counter_destroy(&dc->nr_pages);
		dc_update_page_ceiling(-1);
	}
	bioset_exit(&dc->read_bs);
	bioset_exit(&dc->bs);
	free_percpu(dc->stats);
}

void dc_io_module_init(void)
{
	int cpu;

	for_each_possible_cpu(cpu) {
		struct dc_softirq *q = per_cpu_ptr(&dc_softirq, cpu);

		init_llist_head(&q->list);
		q->backlog = NULL;
		tasklet_setup(&q->tasklet, dc_softirq_run);
	}
}

void dc_io_module_exit(void)
{
	int cpu;

	for_each_possible_cpu(cpu)
		tasklet_kill(&per_cpu_ptr(&dc_softirq, cpu)->tasklet);
}
