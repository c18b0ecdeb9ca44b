// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-diskcrypt: parsing of the table's cipher, key reference, numbers and
 * feature arguments. Every refusal names its own reason in *error.
 */
#include <linux/ctype.h>
#include <linux/kernel.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <crypto/algapi.h>

#include "diskcrypt.h"

/*
 * Parse an unsigned decimal number: digits only (no sign, no spaces, no
 * trailing characters). Returns -ERANGE when it does not fit in 64 bits.
 */
int dc_parse_u64(const char *s, u64 *v)
{
	if (!isdigit(*s))
		return -EINVAL;
	return kstrtoull(s, 10, v);
}

static int dc_parse_sector_size(struct dm_target *ti, struct dc_config *dc,
				const char *val)
{
	u64 v;

	if (dc_parse_u64(val, &v) || v < SECTOR_SIZE || v > 4096 ||
	    !is_power_of_2(v)) {
		ti->error = "Invalid sector_size: use 512, 1024, 2048 or 4096";
		return -EINVAL;
	}
	dc->sector_size = v;
	dc->sector_shift = __ffs(v) - SECTOR_SHIFT;
	return 0;
}

static int dc_parse_inline_depth(struct dm_target *ti, struct dc_config *dc,
				 const char *val)
{
	u64 v;

	if (dc_parse_u64(val, &v) || v > DC_MAX_INLINE_DEPTH) {
		ti->error = "Invalid inline_depth: use 0 to 65536";
		return -EINVAL;
	}
	dc->inline_depth = v;
	dc->inline_depth_set = true;
	return 0;
}

/*
 * Feature arguments, after the five positional ones:
 *   <#opts> <opt>...
 * where each <opt> appears at most once:
 *   sector_size:<512|1024|2048|4096>   crypto sector size (default 512)
 *   iv_large_sectors                   IV counts sector_size units
 *   allow_discards                     pass discards to the device
 *   zero_unwritten                     all-zero ciphertext reads as zeros
 *   read_workqueue                     decrypt in the workqueue, not inline
 *   write_workqueue                    encrypt in the workqueue, not inline
 *   inline_depth:<n>                   inline crypto only while at most n
 *                                      bios are in flight (default 1)
 */
int dc_parse_features(struct dm_target *ti, struct dc_config *dc,
		      unsigned int argc, char **argv)
{
	static const char sector_size_opt[] = "sector_size:";
	static const char depth_opt[] = "inline_depth:";
	unsigned long seen = 0;
	unsigned int i, bit;
	u64 count;
	int r;

	r = dc_parse_u64(argv[0], &count);
	if (r) {
		ti->error = "Invalid number of feature arguments";
		return -EINVAL;
	}
	/* Each flag feature, plus sector_size and inline_depth, at most once. */
	if (count > DC_NR_FEATURES + 2) {
		ti->error = "Too many feature arguments";
		return -EINVAL;
	}
	if (count > argc - 1) {
		ti->error = "Not enough feature arguments";
		return -EINVAL;
	}
	if (count < argc - 1) {
		ti->error = "Unexpected words after the feature arguments";
		return -EINVAL;
	}

	for (i = 1; i <= count; i++) {
		const char *opt = argv[i];

		if (!strncmp(opt, sector_size_opt, sizeof(sector_size_opt) - 1)) {
			bit = DC_NR_FEATURES;	/* not a flag of its own */
			r = dc_parse_sector_size(ti, dc,
						 opt + sizeof(sector_size_opt) - 1);
			if (r)
				return r;
		} else if (!strncmp(opt, depth_opt, sizeof(depth_opt) - 1)) {
			bit = DC_NR_FEATURES + 1;
			r = dc_parse_inline_depth(ti, dc,
						  opt + sizeof(depth_opt) - 1);
			if (r)
				return r;
		} else if (!strcmp(opt, "iv_large_sectors")) {
			bit = DC_IV_LARGE_SECTORS;
		} else if (!strcmp(opt, "allow_discards")) {
			bit = DC_ALLOW_DISCARDS;
		} else if (!strcmp(opt, "zero_unwritten")) {
			bit = DC_ZERO_UNWRITTEN;
		} else if (!strcmp(opt, "read_workqueue")) {
			bit = DC_READ_WORKQUEUE;
		} else if (!strcmp(opt, "write_workqueue")) {
			bit = DC_WRITE_WORKQUEUE;
		} else {
			ti->error = "Unknown feature argument";
			return -EINVAL;
		}
		if (__test_and_set_bit(bit, &seen)) {
			ti->error = "Duplicate feature argument";
			return -EINVAL;
		}
		if (bit < DC_NR_FEATURES)
			set_bit(bit, &dc->flags);
	}
	return 0;
}

/* "aes-xts-plain64", split into its three parts with specific refusals. */
static int dc_check_plain_cipher(struct dm_target *ti, const char *spec)
{
	const char *mode, *ivmode;

	mode = strchr(spec, '-');
	ivmode = mode ? strchr(mode + 1, '-') : NULL;
	if (!mode || !ivmode || strchr(ivmode + 1, '-')) {
		ti->error = "Invalid cipher: use aes-xts-plain64 or capi:<alg>-plain64";
		return -EINVAL;
	}
	if (mode - spec != 3 || strncmp(spec, "aes", 3)) {
		ti->error = "Unsupported cipher: only aes";
		return -EINVAL;
	}
	if (ivmode - mode - 1 != 3 || strncmp(mode + 1, "xts", 3)) {
		ti->error = "Unsupported chain mode: only xts";
		return -EINVAL;
	}
	if (!strcmp(ivmode + 1, "plain")) {
		ti->error = "IV mode plain wraps at 2^32 sectors: use plain64";
		return -EINVAL;
	}
	if (strcmp(ivmode + 1, "plain64")) {
		ti->error = "Unsupported IV mode: only plain64";
		return -EINVAL;
	}
	return 0;
}

/*
 * <cipher>: "aes-xts-plain64", or "capi:<algorithm>-plain64" where the
 * crypto API resolves <algorithm> to an implementation of xts(aes), e.g.
 * "capi:xts(ecb(aes-generic))-plain64", or the same made asynchronous,
 * "capi:cryptd(xts(ecb(aes-generic)))-plain64" (cryptd instances are named
 * after their inner driver, not after xts(aes)).
 */
int dc_parse_cipher(struct dm_target *ti, struct dc_config *dc,
		    const char *spec)
{
	char alg[CRYPTO_MAX_ALG_NAME];
	struct crypto_skcipher *tfm;
	const char *name = DC_ALG_NAME;
	int r;

	if (!strncmp(spec, "capi:", 5)) {
		const char *start = spec + 5, *dash = strrchr(start, '-');

		if (!dash || dash == start) {
			ti->error = "Invalid capi cipher: use capi:<algorithm>-plain64";
			return -EINVAL;
		}
		if (strcmp(dash + 1, "plain64")) {
			ti->error = "Unsupported IV mode: only plain64";
			return -EINVAL;
		}
		if (dash - start >= CRYPTO_MAX_ALG_NAME) {
			ti->error = "Cipher algorithm name too long";
			return -ENAMETOOLONG;
		}
		strscpy(alg, start, dash - start + 1);
		name = alg;
	} else {
		r = dc_check_plain_cipher(ti, spec);
		if (r)
			return r;
	}

	/*
	 * As dm-crypt: never a driver that allocates memory per request, which
	 * could fail or recurse into writeback on this very device.
	 */
	tfm = crypto_alloc_skcipher(name, 0, CRYPTO_ALG_ALLOCATES_MEMORY);
	if (IS_ERR(tfm)) {
		ti->error = "Cannot allocate cipher: algorithm unknown to the crypto API";
		return PTR_ERR(tfm);
	}
	dc->tfm = tfm;
	if (strcmp(crypto_tfm_alg_name(crypto_skcipher_tfm(tfm)), DC_ALG_NAME)) {
		ti->error = "Cipher algorithm is not an xts(aes) implementation";
		return -EINVAL;
	}
	if (crypto_skcipher_ivsize(tfm) != DC_IV_BYTES ||
	    crypto_skcipher_max_keysize(tfm) < DC_KEY_BYTES) {
		ti->error = "Cipher algorithm has an unexpected IV or key size";
		return -EINVAL;
	}
	/* Refuse XTS keys whose two halves are equal. */
	crypto_skcipher_set_flags(tfm, CRYPTO_TFM_REQ_FORBID_WEAK_KEYS);

	dc->cipher_string = kstrdup(spec, GFP_KERNEL);
	if (!dc->cipher_string) {
		ti->error = "Cannot allocate cipher string";
		return -ENOMEM;
	}
	return 0;
}

/*
 * TABLE status prints the description as it is, and dm splits table lines
 * at whitespace (isspace(), Latin-1 no-break space included) and takes a
 * backslash as an escape: a description with either would not read back the
 * same, nor would one with ASCII control characters (tools print them raw).
 * Other bytes, UTF-8 included, are printed back unchanged.
 */
static bool dc_desc_prints_back(const char *desc)
{
	const unsigned char *p;

	for (p = (const unsigned char *)desc; *p; p++)
		if (*p < 0x20 || *p == 0x7f || isspace(*p) || *p == '\\')
			return false;
	return true;
}

/*
 * <key>: ":64:logon:<description>", a reference to a logon key in the
 * caller's keyrings. Hex keys, other sizes and other key types are refused,
 * and so are descriptions that the table could not print back.
 * On success *desc points into @keyref.
 */
int dc_parse_keyref(const char *keyref, const char **desc, char **error)
{
	char size[21];
	const char *p, *type, *colon;
	u64 bytes;

	if (keyref[0] != ':') {
		*error = !strcmp(keyref, "-") ?
			"Missing key: use a keyring reference :64:logon:<description>" :
			"Hex keys are refused: use a keyring reference :64:logon:<description>";
		return -EINVAL;
	}
	p = keyref + 1;
	colon = strchr(p, ':');
	if (!colon) {
		*error = "Invalid key reference: use :64:logon:<description>";
		return -EINVAL;
	}
	if (colon == p || colon - p >= sizeof(size)) {
		*error = "Invalid key size in key reference";
		return -EINVAL;
	}
	strscpy(size, p, colon - p + 1);
	if (dc_parse_u64(size, &bytes)) {
		*error = "Invalid key size in key reference";
		return -EINVAL;
	}
	if (bytes != DC_KEY_BYTES) {
		*error = "Key size must be 64 bytes for AES-256-XTS";
		return -EINVAL;
	}

	type = colon + 1;
	colon = strchr(type, ':');
	if (!colon) {
		*error = "Invalid key reference: use :64:logon:<description>";
		return -EINVAL;
	}
	if (colon - type == 4 && !strncmp(type, "user", 4)) {
		*error = "Key type user is refused: use a logon key";
		return -EINVAL;
	}
	if (colon - type != 5 || strncmp(type, "logon", 5)) {
		*error = "Unsupported key type: only logon";
		return -EINVAL;
	}
	if (!colon[1]) {
		*error = "Missing key description";
		return -EINVAL;
	}
	if (!dc_desc_prints_back(colon + 1)) {
		*error = "Key description must be printable, without whitespace or backslashes";
		return -EINVAL;
	}
	*desc = colon + 1;
	return 0;
}
