// SPDX-License-Identifier: GPL-2.0
/*
 * Minimal out-of-tree module for the harness self-test (tests/vm/selftest.sh): it
 * proves that mkinitramfs.sh --module, depmod and "modprobe NAME" work in the guest.
 */
#include <linux/init.h>
#include <linux/module.h>

static int __init dctest_dummy_init(void)
{
	pr_info("dctest_dummy: loaded\n");
	return 0;
}

static void __exit dctest_dummy_exit(void)
{
	pr_info("dctest_dummy: unloaded\n");
}

module_init(dctest_dummy_init);
module_exit(dctest_dummy_exit);

MODULE_DESCRIPTION("diskcrypt test harness self-test module");
MODULE_LICENSE("GPL");
