// SPDX-License-Identifier: GPL-2.0-only
/*
 * bioshapes: random-shaped O_DIRECT I/O against a block device, checked
 * against an in-memory model of its contents. Built statically on the host
 * and run in the test guest.
 *
 *   bioshapes DEVICE SECTOR_SIZE REGION_MIB ITERATIONS SEED
 *
 * Each iteration reads or writes a random run of sectors (one sector to
 * 8 MiB) with preadv/pwritev over 1..16 buffers placed at sector-aligned
 * but mostly not page-aligned addresses. After every write it checks that
 * the caller's buffers still hold what was written (the target must encrypt
 * into its own pages); every read is compared with the model.
 *
 * Exit: 0 all good, 1 data mismatch, 2 usage or I/O error, 3 a caller's
 * buffer was modified by a write.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_IOV 16
#define MAX_IO (8u << 20)

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: reproducible from the seed, good enough for shapes */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static uint64_t rnd_below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static void fill_random(unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (unsigned char)rnd();
}

struct shape {
	struct iovec iov[MAX_IOV];
	int n;
};

/*
 * Split @len bytes into 1..MAX_IOV pieces, each a multiple of @ss, placed in
 * @arena at sector-aligned offsets (so usually not page-aligned).
 */
static void make_shape(struct shape *s, unsigned char *arena, size_t len,
		       size_t ss)
{
	size_t sectors = len / ss, left = sectors, pos = ss * rnd_below(8);
	int want = 1 + (int)rnd_below(MAX_IOV);

	if ((size_t)want > sectors)
		want = (int)sectors;
	s->n = 0;
	while (left) {
		size_t take = s->n == want - 1 ? left : 1 + rnd_below(left);

		if (take > left)
			take = left;
		s->iov[s->n].iov_base = arena + pos;
		s->iov[s->n].iov_len = take * ss;
		pos += take * ss + ss * rnd_below(3);
		left -= take;
		s->n++;
	}
}

static size_t pick_len(size_t ss, size_t region)
{
	uint64_t r = rnd_below(100);
	size_t max;

	if (r < 50)
		max = 16 * ss;
	else if (r < 80)
		max = 256u << 10;
	else
		max = MAX_IO;
	if (max > region)
		max = region;
	return ss * (1 + rnd_below(max / ss));
}

int main(int argc, char **argv)
{
	unsigned char *model, *arena, *copy;
	size_t ss, region, arena_size;
	unsigned long iterations, writes = 0, reads = 0;
	int fd;

	if (argc != 6) {
		fprintf(stderr, "usage: bioshapes DEVICE SECTOR_SIZE REGION_MIB ITERATIONS SEED\n");
		return 2;
	}
	ss = strtoul(argv[2], NULL, 10);
	region = strtoul(argv[3], NULL, 10) << 20;
	iterations = strtoul(argv[4], NULL, 10);
	rng_state = strtoull(argv[5], NULL, 10) | 1;
	if (ss < 512 || ss > 4096 || (ss & (ss - 1)) || !region) {
		fprintf(stderr, "bioshapes: bad sector size or region\n");
		return 2;
	}
	fd = open(argv[1], O_RDWR | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "bioshapes: %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	/* Room for MAX_IO plus the gaps make_shape() leaves. */
	arena_size = MAX_IO + (MAX_IOV * 3 + 8) * 4096;
	model = malloc(region);
	copy = malloc(arena_size);
	if (!model || !copy || posix_memalign((void **)&arena, 4096, arena_size)) {
		fprintf(stderr, "bioshapes: out of memory\n");
		return 2;
	}

	/* Start from known contents. */
	fill_random(model, region);
	for (size_t off = 0; off < region; off += MAX_IO) {
		size_t len = region - off < MAX_IO ? region - off : MAX_IO;

		memcpy(arena, model + off, len);
		if (pwrite(fd, arena, len, (off_t)off) != (ssize_t)len) {
			fprintf(stderr, "bioshapes: initial write: %s\n", strerror(errno));
			return 2;
		}
	}

	for (unsigned long it = 0; it < iterations; it++) {
		size_t len = pick_len(ss, region);
		size_t off = ss * rnd_below((region - len) / ss + 1);
		int write = (int)rnd_below(2);
		struct shape s;
		size_t done = 0;
		ssize_t r;

		make_shape(&s, arena, len, ss);
		if (write) {
			for (int i = 0; i < s.n; i++) {
				fill_random(s.iov[i].iov_base, s.iov[i].iov_len);
				memcpy(model + off + done, s.iov[i].iov_base, s.iov[i].iov_len);
				memcpy(copy + done, s.iov[i].iov_base, s.iov[i].iov_len);
				done += s.iov[i].iov_len;
			}
			r = pwritev(fd, s.iov, s.n, (off_t)off);
			writes++;
		} else {
			r = preadv(fd, s.iov, s.n, (off_t)off);
			reads++;
		}
		if (r != (ssize_t)len) {
			fprintf(stderr, "bioshapes: %s of %zu bytes at %zu: %s\n",
				write ? "write" : "read", len, off,
				r < 0 ? strerror(errno) : "short");
			return 2;
		}
		done = 0;
		for (int i = 0; i < s.n; i++) {
			const unsigned char *want = write ? copy + done : model + off + done;

			if (memcmp(s.iov[i].iov_base, want, s.iov[i].iov_len)) {
				fprintf(stderr, "bioshapes: %s at byte %zu (iteration %lu, %d buffers)\n",
					write ? "the caller's buffer changed during a write" :
						"read data differs from what was written",
					off + done, it, s.n);
				return write ? 3 : 1;
			}
			done += s.iov[i].iov_len;
		}
	}

	/* Everything, read back in one pass. */
	for (size_t off = 0; off < region; off += MAX_IO) {
		size_t len = region - off < MAX_IO ? region - off : MAX_IO;

		if (pread(fd, arena, len, (off_t)off) != (ssize_t)len ||
		    memcmp(arena, model + off, len)) {
			fprintf(stderr, "bioshapes: final read differs at %zu\n", off);
			return 1;
		}
	}
	printf("bioshapes: %lu writes, %lu reads, all data and caller buffers as expected\n",
	       writes, reads);
	close(fd);
	return 0;
}
