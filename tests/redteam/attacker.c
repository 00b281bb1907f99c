/*
 * The capture account turned hostile, for tests/test_redteam.py: it owns the capture directory
 * and races the root slimmer inside it. Every loop is bounded in count and in time; it prints
 * what it did on stdout ("swaps N", "seen N") and exits 0.
 *
 *   attacker swap DIR A B MAX SECONDS
 *       exchange the entries A and B of DIR (renameat2 RENAME_EXCHANGE) as fast as it can
 *   attacker swap-on-tmp DIR A B MAX SECONDS
 *       the same, but only once a *.tmp file appears in DIR (inotify), then spinning
 *   attacker replace-on-tmp DIR NAME TARGET SECONDS
 *       when the first *.tmp appears in DIR (inotify): rename NAME away and put a symlink to
 *       TARGET in its place (no race needed: the slimmer has listed the tree already)
 *   attacker watch-setid DIR NAME SECONDS
 *       stat DIR/NAME as fast as it can; count the times it is owned by root with a set-id bit
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int exchange(int dfd, const char *a, const char *b) {
    return (int)syscall(SYS_renameat2, dfd, a, dfd, b, RENAME_EXCHANGE);
}

/* wait (bounded) until a file whose name ends in ".tmp" is created in the watched directory */
static int wait_for_tmp(const char *dir, double deadline) {
    int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (in < 0 || inotify_add_watch(in, dir, IN_CREATE | IN_MOVED_TO) < 0) return -1;
    char buf[4096] __attribute__((aligned(8)));
    while (now() < deadline) {
        struct pollfd p = {in, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t n = read(in, buf, sizeof buf);
        for (char *at = buf; n > 0 && at < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)at;
            size_t len = ev->len ? strlen(ev->name) : 0;
            if (len > 4 && strcmp(ev->name + len - 4, ".tmp") == 0) {
                close(in);
                return 0;
            }
            at += sizeof *ev + ev->len;
        }
    }
    close(in);
    return -1;
}

static int swap_loop(const char *dir, const char *a, const char *b, long max, double until) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0) { perror("open"); return 1; }
    long swaps = 0;
    while (swaps < max && now() < until) {
        if (exchange(dfd, a, b) == 0) {
            swaps++;
        } else if (errno == ENOENT) {
            usleep(100);
        }
    }
    /* leave the names as they were found: an even number of exchanges */
    if (swaps % 2 && exchange(dfd, a, b) == 0) swaps++;
    printf("swaps %ld\n", swaps);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *mode = argv[1];
    if (strcmp(mode, "swap") == 0 && argc == 7) {
        return swap_loop(argv[2], argv[3], argv[4], atol(argv[5]), now() + atof(argv[6]));
    }
    if (strcmp(mode, "swap-on-tmp") == 0 && argc == 7) {
        double until = now() + atof(argv[6]);
        if (wait_for_tmp(argv[2], until) < 0) { printf("swaps 0\n"); return 0; }
        return swap_loop(argv[2], argv[3], argv[4], atol(argv[5]), until);
    }
    if (strcmp(mode, "replace-on-tmp") == 0 && argc == 6) {
        double until = now() + atof(argv[5]);
        if (wait_for_tmp(argv[2], until) < 0) { printf("replaced 0\n"); return 0; }
        int dfd = open(argv[2], O_RDONLY | O_DIRECTORY);
        char away[NAME_MAX + 1];
        snprintf(away, sizeof away, "%s.away", argv[3]);
        if (dfd < 0 || renameat(dfd, argv[3], dfd, away) < 0 ||
            symlinkat(argv[4], dfd, argv[3]) < 0) {
            perror("replace");
            return 1;
        }
        printf("replaced 1\n");
        return 0;
    }
    if (strcmp(mode, "watch-setid") == 0 && argc == 5) {
        double until = now() + atof(argv[4]);
        int dfd = open(argv[2], O_RDONLY | O_DIRECTORY);
        if (dfd < 0) { perror("open"); return 1; }
        long seen = 0, looks = 0;
        struct stat st;
        while (now() < until) {
            looks++;
            if (fstatat(dfd, argv[3], &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid == 0 &&
                (st.st_mode & (S_ISUID | S_ISGID)))
                seen++;
        }
        printf("seen %ld looks %ld\n", seen, looks);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of attacker.c\n");
    return 2;
}
