// SPDX-License-Identifier: GPL-2.0-only
/*
 * dmrace: device-mapper messages or status reads in a tight loop, straight
 * through the dm ioctls (dmsetup takes a large fraction of a second per call
 * under TCG, too slow to make two requests meet in the kernel). Built
 * statically on the host and run in the test guest.
 *
 *   dmrace msg    NAME SECONDS MESSAGE1 MESSAGE2
 *       send MESSAGE1 and MESSAGE2 in turn to sector 0 of NAME
 *   dmrace status NAME SECONDS WORD1 WORD2
 *       read the table and the status of NAME in turn; every table must
 *       hold " WORD1 " or " WORD2 "
 *
 * Prints "<requests> <failures>" on stdout, the first failure on stderr.
 * Exit: 0 no failure, 1 some request failed, 2 usage or setup error.
 *
 *   dmrace table NAME SECTORS TYPE PARAMS
 *       create NAME, load the one-target table "0 SECTORS TYPE PARAMS" with
 *       PARAMS exactly as given (dmsetup escapes backslashes, so it cannot
 *       send an escaped space), then remove NAME. Exit 0 if the table was
 *       accepted, 1 if refused (the errno on stderr), 2 on other errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/dm-ioctl.h>

#define BUF_SIZE 16384

static union {
	struct dm_ioctl io;
	char bytes[BUF_SIZE];
} buf;

static void prepare(const char *name, unsigned int flags)
{
	memset(&buf, 0, sizeof(buf));
	buf.io.version[0] = DM_VERSION_MAJOR;
	buf.io.version[1] = 0;
	buf.io.version[2] = 0;
	buf.io.data_size = sizeof(buf);
	buf.io.data_start = sizeof(struct dm_ioctl);
	buf.io.flags = flags;
	snprintf(buf.io.name, sizeof(buf.io.name), "%s", name);
}

static int send_message(int fd, const char *name, const char *msg)
{
	struct dm_target_msg *tmsg;

	prepare(name, 0);
	tmsg = (struct dm_target_msg *)(buf.bytes + buf.io.data_start);
	tmsg->sector = 0;
	if (strlen(msg) + 1 > sizeof(buf) - buf.io.data_start - sizeof(*tmsg))
		return -E2BIG;
	strcpy(tmsg->message, msg);
	return ioctl(fd, DM_TARGET_MSG, &buf) ? -errno : 0;
}

/* One TABLE or INFO status; for TABLE, *params points at the target's line. */
static int read_status(int fd, const char *name, unsigned int flags,
		       const char **params)
{
	struct dm_target_spec *spec;

	prepare(name, flags);
	if (ioctl(fd, DM_TABLE_STATUS, &buf))
		return -errno;
	if (buf.io.flags & DM_BUFFER_FULL_FLAG || buf.io.target_count != 1)
		return -EMSGSIZE;
	spec = (struct dm_target_spec *)(buf.bytes + buf.io.data_start);
	*params = (const char *)(spec + 1);
	return 0;
}

static int load_table(int fd, const char *name, const char *sectors,
		      const char *type, const char *params)
{
	struct dm_target_spec *spec;
	int r = 0;

	prepare(name, 0);
	if (ioctl(fd, DM_DEV_CREATE, &buf)) {
		perror("dmrace: create");
		return 2;
	}
	prepare(name, 0);
	buf.io.target_count = 1;
	spec = (struct dm_target_spec *)(buf.bytes + buf.io.data_start);
	spec->sector_start = 0;
	spec->length = strtoull(sectors, NULL, 10);
	snprintf(spec->target_type, sizeof(spec->target_type), "%s", type);
	if (strlen(params) + 1 > sizeof(buf) - buf.io.data_start - sizeof(*spec)) {
		fprintf(stderr, "dmrace: table too long\n");
		r = 2;
	} else {
		strcpy((char *)(spec + 1), params);
		spec->next = sizeof(*spec) + strlen(params) + 1;
		if (ioctl(fd, DM_TABLE_LOAD, &buf)) {
			fprintf(stderr, "dmrace: table refused: %s\n", strerror(errno));
			r = 1;
		}
	}
	prepare(name, 0);
	if (ioctl(fd, DM_DEV_REMOVE, &buf)) {
		perror("dmrace: remove");
		r = 2;
	}
	return r;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	unsigned long n = 0, bad = 0;
	char word[2][256];
	double end;
	int fd, r, i;

	if (argc != 6 || (strcmp(argv[1], "msg") && strcmp(argv[1], "status") &&
			  strcmp(argv[1], "table"))) {
		fprintf(stderr, "usage: dmrace msg|status NAME SECONDS ARG1 ARG2\n"
			"       dmrace table NAME SECTORS TYPE PARAMS\n");
		return 2;
	}
	fd = open("/dev/mapper/control", O_RDWR);
	if (fd < 0) {
		perror("dmrace: /dev/mapper/control");
		return 2;
	}
	if (!strcmp(argv[1], "table"))
		return load_table(fd, argv[2], argv[3], argv[4], argv[5]);
	for (i = 0; i < 2; i++)
		snprintf(word[i], sizeof(word[i]), " %s ", argv[4 + i]);
	end = now() + atof(argv[3]);

	while (now() < end) {
		const char *params = "";

		if (!strcmp(argv[1], "msg")) {
			r = send_message(fd, argv[2], argv[4 + n % 2]);
		} else if (n % 2) {
			r = read_status(fd, argv[2], 0, &params);
		} else {
			r = read_status(fd, argv[2], DM_STATUS_TABLE_FLAG, &params);
			if (!r && !strstr(params, word[0]) && !strstr(params, word[1]))
				r = -EBADMSG;
		}
		n++;
		if (r && !bad++)
			fprintf(stderr, "dmrace: %s %s: %s [%s]\n", argv[1],
				argv[2], strerror(-r), params);
	}
	printf("%lu %lu\n", n, bad);
	return bad ? 1 : 0;
}
