// SPDX-License-Identifier: GPL-2.0-only
/*
 * dctest_align: an xts(aes) driver for the kernel suite's align test
 * (tests/kmod/align.sh) that asks for what strict accelerators ask for, and
 * counts every request that breaks it:
 *   - an alignmask of 15: the IV must be 16-byte aligned (the crypto API
 *     leaves the IV of a request as the caller made it; only drivers that
 *     use the skcipher walk copy a misaligned one);
 *   - a request context whose size is not a multiple of 8, so that a caller
 *     who places requests back to back without rounding misaligns the next
 *     request (the request itself must stay aligned as struct
 *     skcipher_request).
 * It encrypts correctly either way (through a synchronous xts(aes), with
 * the IV copied to an aligned buffer: the crypto self-tests feed it
 * misaligned IVs on purpose), so a violation shows up in the counters, not
 * as data corruption:
 *   /sys/module/dctest_align/parameters/{requests,misaligned_iv,misaligned_req}
 * Its priority is the lowest: only a caller that names its driver,
 * "xts-aes-dctest-align", gets it.
 */
#include <crypto/internal/skcipher.h>
#include <linux/atomic.h>
#include <linux/module.h>
#include <linux/string.h>

#define DCTEST_IV_ALIGN 16
/* Makes the request context size 4 modulo 8. */
#define DCTEST_REQ_PAD 4

static atomic_t requests = ATOMIC_INIT(0);
static atomic_t misaligned_iv = ATOMIC_INIT(0);
static atomic_t misaligned_req = ATOMIC_INIT(0);

static int dctest_get_count(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%d\n", atomic_read(kp->arg));
}

static const struct kernel_param_ops dctest_count_ops = {
	.get = dctest_get_count,
};

module_param_cb(requests, &dctest_count_ops, &requests, 0444);
MODULE_PARM_DESC(requests, "encrypt and decrypt requests seen");
module_param_cb(misaligned_iv, &dctest_count_ops, &misaligned_iv, 0444);
MODULE_PARM_DESC(misaligned_iv, "requests whose IV was not 16-byte aligned");
module_param_cb(misaligned_req, &dctest_count_ops, &misaligned_req, 0444);
MODULE_PARM_DESC(misaligned_req, "requests not aligned as struct skcipher_request");

struct dctest_ctx {
	struct crypto_skcipher *child;
};

static int dctest_setkey(struct crypto_skcipher *tfm, const u8 *key,
			 unsigned int keylen)
{
	struct dctest_ctx *ctx = crypto_skcipher_ctx(tfm);

	crypto_skcipher_clear_flags(ctx->child, CRYPTO_TFM_REQ_MASK);
	crypto_skcipher_set_flags(ctx->child, crypto_skcipher_get_flags(tfm) &
				  CRYPTO_TFM_REQ_MASK);
	return crypto_skcipher_setkey(ctx->child, key, keylen);
}

static int dctest_crypt(struct skcipher_request *req, bool encrypt)
{
	struct crypto_skcipher *tfm = crypto_skcipher_reqtfm(req);
	struct dctest_ctx *ctx = crypto_skcipher_ctx(tfm);
	struct skcipher_request *subreq = skcipher_request_ctx(req);
	u8 iv[DCTEST_IV_ALIGN] __aligned(DCTEST_IV_ALIGN);
	int r;

	atomic_inc(&requests);
	if (!IS_ALIGNED((unsigned long)req->iv, DCTEST_IV_ALIGN))
		atomic_inc(&misaligned_iv);
	if (!IS_ALIGNED((unsigned long)req,
			__alignof__(struct skcipher_request)))
		atomic_inc(&misaligned_req);

	memcpy(iv, req->iv, sizeof(iv));
	skcipher_request_set_tfm(subreq, ctx->child);
	skcipher_request_set_callback(subreq, req->base.flags, NULL, NULL);
	skcipher_request_set_crypt(subreq, req->src, req->dst, req->cryptlen,
				   iv);
	r = encrypt ? crypto_skcipher_encrypt(subreq) :
		      crypto_skcipher_decrypt(subreq);
	memcpy(req->iv, iv, sizeof(iv));
	memzero_explicit(iv, sizeof(iv));
	return r;
}

static int dctest_encrypt(struct skcipher_request *req)
{
	return dctest_crypt(req, true);
}

static int dctest_decrypt(struct skcipher_request *req)
{
	return dctest_crypt(req, false);
}

static int dctest_init_tfm(struct crypto_skcipher *tfm)
{
	struct dctest_ctx *ctx = crypto_skcipher_ctx(tfm);
	struct crypto_skcipher *child;

	/* Synchronous, and never this driver (NEED_FALLBACK). */
	child = crypto_alloc_skcipher("xts(aes)", 0,
				      CRYPTO_ALG_ASYNC |
				      CRYPTO_ALG_NEED_FALLBACK |
				      CRYPTO_ALG_ALLOCATES_MEMORY);
	if (IS_ERR(child))
		return PTR_ERR(child);
	ctx->child = child;
	crypto_skcipher_set_reqsize(tfm, sizeof(struct skcipher_request) +
				    crypto_skcipher_reqsize(child) +
				    DCTEST_REQ_PAD);
	return 0;
}

static void dctest_exit_tfm(struct crypto_skcipher *tfm)
{
	struct dctest_ctx *ctx = crypto_skcipher_ctx(tfm);

	crypto_free_skcipher(ctx->child);
}

static struct skcipher_alg dctest_alg = {
	.base.cra_name		= "xts(aes)",
	.base.cra_driver_name	= "xts-aes-dctest-align",
	.base.cra_priority	= 1,
	.base.cra_flags		= CRYPTO_ALG_NEED_FALLBACK,
	.base.cra_blocksize	= 16,
	.base.cra_ctxsize	= sizeof(struct dctest_ctx),
	.base.cra_alignmask	= DCTEST_IV_ALIGN - 1,
	.base.cra_module	= THIS_MODULE,
	.min_keysize		= 32,
	.max_keysize		= 64,
	.ivsize			= 16,
	.setkey			= dctest_setkey,
	.encrypt		= dctest_encrypt,
	.decrypt		= dctest_decrypt,
	.init			= dctest_init_tfm,
	.exit			= dctest_exit_tfm,
};

static int __init dctest_align_init(void)
{
	return crypto_register_skcipher(&dctest_alg);
}

static void __exit dctest_align_exit(void)
{
	crypto_unregister_skcipher(&dctest_alg);
}

module_init(dctest_align_init);
module_exit(dctest_align_exit);

MODULE_DESCRIPTION("diskcrypt kernel suite: an xts(aes) driver that counts misaligned requests");
MODULE_LICENSE("GPL");
