/*
 * spawnd: a tiny spawn server for the benchmark.
 *
 * Why: a process's ru_maxrss includes the address space it was forked or vforked from, because
 * exec records the old mm's high-water mark.  Spawned straight from the ~18 MB Python
 * benchmark, every runtime would report at least 18 MB.  Spawned from this ~1 MB program, the
 * peak RSS that wait4 reports is the runtime's own (with a floor of this server's size).  It
 * also keeps the clock tight: time is taken here, around posix_spawn and wait4 only.
 *
 * Protocol on stdin (fd 0 is the request pipe, fd 3 the response pipe):
 *   request:  u32 length, then `length` bytes: argc "\0"-terminated strings of argv, then the
 *             environment strings, each "\0"-terminated; the first string is argc in decimal.
 *   response: one int64, the pid (0 if the spawn failed) as soon as it is spawned, so that the
 *             caller can kill it on a timeout; then seven int64: wall_ns, utime_ns, stime_ns,
 *             maxrss_kb, wait status, spawn errno, pid
 * The child gets fd 4 as stdin and stdout (/dev/null) and fd 5 as stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int read_full(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t r = write(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int64_t ns_of(struct timeval tv)
{
	return (int64_t)tv.tv_sec * 1000000000 + (int64_t)tv.tv_usec * 1000;
}

int main(void)
{
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, 4, 0);
	posix_spawn_file_actions_adddup2(&fa, 4, 1);
	posix_spawn_file_actions_adddup2(&fa, 5, 2);
	for (int fd = 3; fd < 6; fd++)
		posix_spawn_file_actions_addclose(&fa, fd);

	for (;;) {
		uint32_t len;
		if (read_full(0, &len, sizeof len) < 0)
			return 0;
		char *buf = malloc((size_t)len + 1);
		if (!buf || read_full(0, buf, len) < 0)
			return 1;
		buf[len] = '\0';
		/* split into strings */
		size_t count = 0;
		for (uint32_t i = 0; i < len; i++)
			count += buf[i] == '\0';
		char **strs = calloc(count + 2, sizeof(char *));
		if (!strs)
			return 1;
		size_t n = 0;
		for (char *p = buf; p < buf + len; p += strlen(p) + 1)
			strs[n++] = p;
		int argc = n ? atoi(strs[0]) : 0;
		if (argc < 1 || (size_t)argc + 1 > n)
			return 1;
		char **argv = strs + 1;
		char **envp = strs + 1 + argc + 1; /* argv ends with a NULL slot below */
		/* shift env by one so argv can be NULL-terminated in place */
		memmove(envp, argv + argc, (n - 1 - (size_t)argc) * sizeof(char *));
		argv[argc] = NULL;
		envp[n - 1 - (size_t)argc] = NULL;

		int64_t out[7] = {0};
		struct timespec t0, t1;
		struct rusage ru;
		pid_t pid;
		int status = 0;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		int err = posix_spawn(&pid, argv[0], &fa, NULL, argv, envp);
		int64_t early = err == 0 ? pid : 0;
		if (write_full(3, &early, sizeof early) < 0)
			return 1;
		if (err == 0) {
			while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
				;
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (err == 0) {
			out[0] = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec);
			out[1] = ns_of(ru.ru_utime);
			out[2] = ns_of(ru.ru_stime);
			out[3] = ru.ru_maxrss;
			out[4] = status;
			out[6] = pid;
		}
		out[5] = err;
		free(strs);
		free(buf);
		if (write_full(3, out, sizeof out) < 0)
			return 1;
	}
}
