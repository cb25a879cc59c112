/*
 * memwriter: a process with a fixed working set that dirties memory at a
 * fixed rate and checks its own memory, for pre-dump / lazy-pages tests
 * and benchmarks (built static, copied into busybox bundles).
 *
 *   memwriter MIB PAGES_PER_SEC [STATUS_FILE]
 *
 * Every page of the working set holds a write counter; `total` is the sum
 * of all writes. Each second the whole set is summed: if the sum differs
 * from `total` (a page lost or stale after a restore), the status says
 * ok=0 for good. The status file (default /tmp/count) is replaced
 * atomically every tick (10 ms):
 *   "<ticks> <total> <ok>\n"
 * ticks counts 10 ms steps, so a restored process continues from its
 * checkpointed value.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: memwriter MIB PAGES_PER_SEC [STATUS_FILE]\n");
		return 2;
	}
	size_t mib = strtoul(argv[1], NULL, 10);
	unsigned long rate = strtoul(argv[2], NULL, 10);
	const char *status = argc > 3 ? argv[3] : "/tmp/count";
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", status);

	size_t npages = mib * 1024 * 1024 / PAGE;
	uint64_t *mem = malloc(npages * PAGE);
	if (!mem) {
		perror("malloc");
		return 1;
	}
	/* Touch every page: the whole set is resident and counted. */
	for (size_t p = 0; p < npages; p++) {
		uint64_t *pg = mem + p * (PAGE / 8);
		memset(pg, 0xa5, PAGE);
		pg[0] = 1;
	}
	uint64_t total = npages, ticks = 0;
	size_t next = 0;
	int ok = 1;
	double carry = 0;
	struct timespec step = { 0, 10 * 1000 * 1000 };

	for (;;) {
		carry += rate / 100.0;
		while (carry >= 1 && npages) {
			mem[next * (PAGE / 8)] += 1;
			total++;
			next = (next + 1) % npages;
			carry -= 1;
		}
		ticks++;
		if (ticks % 100 == 0 && ok) {
			uint64_t sum = 0;
			for (size_t p = 0; p < npages; p++)
				sum += mem[p * (PAGE / 8)];
			if (sum != total)
				ok = 0;
		}
		{
			FILE *f = fopen(tmp, "w");
			if (f) {
				fprintf(f, "%llu %llu %d\n", (unsigned long long)ticks,
					(unsigned long long)total, ok);
				fclose(f);
				rename(tmp, status);
			}
		}
		nanosleep(&step, NULL);
	}
}
