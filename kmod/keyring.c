// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-diskcrypt: the key. It comes only from a logon key in the caller's
 * keyrings, is copied into the cipher transform and nowhere else, and every
 * temporary copy is wiped with memzero_explicit().
 */
#include <linux/err.h>
#include <linux/key.h>
#include <linux/lockdep.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <keys/user-type.h>

#include "diskcrypt.h"

static char *dc_key_lookup_error(int err)
{
	switch (err) {
	case -ENOKEY:
		return "Key not found in the caller's keyrings";
	case -EKEYREVOKED:
		return "Key has been revoked";
	case -EKEYEXPIRED:
		return "Key has expired";
	case -EACCES:
		return "Key is not accessible to the caller";
	default:
		return "Key lookup failed";
	}
}

/*
 * Look up the logon key @desc and make it the transform's key. The key stays
 * valid only if every step succeeds; on failure *error says why.
 */
int dc_load_key(struct dc_config *dc, const char *desc, char **error)
{
	const struct user_key_payload *ukp;
	u8 buf[DC_KEY_BYTES];
	struct key *key;
	int r = 0;

	key = request_key(&key_type_logon, desc, NULL);
	if (IS_ERR(key)) {
		*error = dc_key_lookup_error(PTR_ERR(key));
		return PTR_ERR(key);
	}

	down_read(&key->sem);
	ukp = user_key_payload_locked(key);
	if (!ukp) {
		*error = "Key has been revoked";
		r = -EKEYREVOKED;
	} else if (ukp->datalen != DC_KEY_BYTES) {
		*error = "Keyring key payload is not 64 bytes";
		r = -EINVAL;
	} else {
		memcpy(buf, ukp->data, DC_KEY_BYTES);
	}
	up_read(&key->sem);
	key_put(key);

	if (!r) {
		clear_bit(DC_KEY_VALID, &dc->flags);
		r = crypto_skcipher_setkey(dc->tfm, buf, DC_KEY_BYTES);
		if (r)
			*error = "Cipher refused the key (XTS key halves must differ)";
		else
			set_bit(DC_KEY_VALID, &dc->flags);
	}
	memzero_explicit(buf, sizeof(buf));
	return r;
}

/*
 * The "key set <keyref>" message: load the key, then remember its name.
 * The caller holds key_lock, which TABLE status takes to print key_desc.
 */
int dc_set_key(struct dc_config *dc, const char *keyref, char **error)
{
	const char *desc;
	char *new_desc;
	int r;

	lockdep_assert_held(&dc->key_lock);
	r = dc_parse_keyref(keyref, &desc, error);
	if (r)
		return r;
	new_desc = kstrdup(desc, GFP_KERNEL);
	if (!new_desc) {
		*error = "Cannot allocate key description";
		return -ENOMEM;
	}
	r = dc_load_key(dc, desc, error);
	if (r) {
		kfree(new_desc);
		return r;
	}
	kfree(dc->key_desc);
	dc->key_desc = new_desc;
	return 0;
}

/*
 * Replace the transform's key schedule with random bytes and mark the key
 * invalid, so that resume is refused until "key set".
 */
int dc_wipe_key(struct dc_config *dc)
{
	u8 junk[DC_KEY_BYTES];
	int r;

	clear_bit(DC_KEY_VALID, &dc->flags);
	get_random_bytes(junk, sizeof(junk));
	/* Weak-key checks refuse equal halves: make them differ. */
	junk[DC_KEY_BYTES / 2] = ~junk[0];
	r = crypto_skcipher_setkey(dc->tfm, junk, sizeof(junk));
	memzero_explicit(junk, sizeof(junk));
	return r;
}
