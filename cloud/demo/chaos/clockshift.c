/* A step of this process's wall clock, for the chaos scenario (cloud/demo/chaos).

   LD_PRELOAD'ed into one edge: CLOCK_REALTIME (clock_gettime, gettimeofday, time)
   reads the real clock plus the offset in seconds written in the file named by
   CLOCKSHIFT_FILE, re-read at most once a second of real monotonic time. The
   monotonic clocks are left alone: a real clock step (NTP, an RTC reset) moves
   only the wall clock, and timeouts and sleeps run on the monotonic one. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
static clock_gettime_fn real_clock_gettime;
static volatile long offset_s;
static volatile time_t read_at = -10;

static void refresh(void) {
    struct timespec now;
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - read_at < 1) return;
    read_at = now.tv_sec;
    const char *path = getenv("CLOCKSHIFT_FILE");
    if (!path) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    long s;
    if (fscanf(f, "%ld", &s) == 1) offset_s = s;
    fclose(f);
}

int clock_gettime(clockid_t clk, struct timespec *tp) {
    if (!real_clock_gettime) real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock_gettime(clk, tp);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        refresh();
        tp->tv_sec += offset_s;
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
