/* rtpload: the media bench's load generator, cheap enough to leave the CPU to the relay it loads.
 *
 *   rtpload --base-port P --streams S --seconds T [--drain MS] [--address 127.0.0.1] < destinations
 *
 * Stream k (0 <= k < S) is one UDP socket bound to address:(P + 2k) (the odd port above is left for
 * RTCP, never bound). Standard input gives one "ip port" line per stream: where stream k sends.
 * Every stream sends a G.711 (PCMU) RTP packet with a 160-byte payload every 20 ms for T seconds,
 * the streams spread evenly over the 20 ms; the payload carries a magic, the stream's index, a
 * sequence number and the CLOCK_MONOTONIC time of the send. Every socket also receives (epoll): a
 * packet with the magic counts for the stream that sent it, whichever socket it arrives on (so a
 * relay that crosses two streams and an echo that returns them both work), once per sequence
 * number; its latency (now - send time) goes into a 10 us histogram. After T seconds it waits
 * --drain ms for packets in flight, then prints one JSON line of results. Before the first packet
 * it prints {"event":"start"} so the caller can sample the relay's CPU over the same window.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 160
#define HEADER 12
#define MAGIC 0x52544c44u /* "RTLD" */
#define PERIOD_NS 20000000LL
#define BUCKET_NS 10000LL /* 10 us */
#define BUCKETS 100000    /* up to 1 s; later packets go in the last bucket */

struct stream {
    int fd;
    struct sockaddr_in dest;
    uint32_t seq;      /* next sequence number to send */
    uint64_t sent;
    uint64_t received; /* unique */
    uint8_t *seen;     /* one bit per sequence number */
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void put32(uint8_t *p, uint32_t v) { uint32_t n = htonl(v); memcpy(p, &n, 4); }
static uint32_t get32(const uint8_t *p) { uint32_t n; memcpy(&n, p, 4); return ntohl(n); }

static void die(const char *what) {
    fprintf(stderr, "rtpload: %s: %s\n", what, strerror(errno));
    exit(2);
}

int main(int argc, char **argv) {
    int base_port = 0, streams = 0, drain_ms = 300;
    double seconds = 0;
    const char *address = "127.0.0.1";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--base-port")) base_port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--streams")) streams = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--drain")) drain_ms = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--address")) address = argv[i + 1];
        else { fprintf(stderr, "rtpload: unknown option %s\n", argv[i]); return 2; }
    }
    if (base_port <= 0 || streams <= 0 || seconds <= 0) {
        fprintf(stderr, "usage: rtpload --base-port P --streams S --seconds T [--drain MS] < destinations\n");
        return 2;
    }
    uint32_t packets_per_stream = (uint32_t)(seconds * 1e9 / PERIOD_NS);
    size_t seen_bytes = packets_per_stream / 8 + 1;
    struct stream *st = calloc((size_t)streams, sizeof *st);
    uint64_t *histogram = calloc(BUCKETS, sizeof *histogram);
    if (!st || !histogram) die("calloc");

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int k = 0; k < streams; k++) {
        char ip[64];
        int port;
        if (scanf("%63s %d", ip, &port) != 2) { fprintf(stderr, "rtpload: destination %d missing\n", k); return 2; }
        st[k].dest.sin_family = AF_INET;
        st[k].dest.sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, ip, &st[k].dest.sin_addr) != 1) { fprintf(stderr, "rtpload: bad ip %s\n", ip); return 2; }
        st[k].fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (st[k].fd < 0) die("socket");
        struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(base_port + 2 * k))};
        inet_pton(AF_INET, address, &local.sin_addr);
        if (bind(st[k].fd, (struct sockaddr *)&local, sizeof local) < 0) die("bind");
        st[k].seen = calloc(seen_bytes, 1);
        if (!st[k].seen) die("calloc");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, st[k].fd, &ev) < 0) die("epoll_ctl");
    }
    /* A 1 ms tick: each tick sends the packets that have come due; the send time is in the packet,
     * so the tick's jitter never shows in the latency. */
    int tick = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (tick < 0) die("timerfd_create");
    struct itimerspec its = {.it_interval = {0, 1000000}, .it_value = {0, 1000000}};
    if (timerfd_settime(tick, 0, &its, NULL) < 0) die("timerfd_settime");
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tick, &tev) < 0) die("epoll_ctl tick");

    printf("{\"event\":\"start\"}\n");
    fflush(stdout);
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);

    uint8_t out[HEADER + PAYLOAD], in[2048];
    memset(out, 0xff, sizeof out); /* PCMU silence */
    out[0] = 0x80;
    out[1] = 0; /* PT 0 */
    int64_t start = now_ns();
    int64_t send_end = start + (int64_t)packets_per_stream * PERIOD_NS;
    int64_t end = send_end + (int64_t)drain_ms * 1000000LL;
    uint64_t foreign = 0, duplicates = 0, late = 0, send_errors = 0;
    int64_t max_latency = 0;
    long total_sent_packets = 0, total_due = (long)packets_per_stream * streams;
    struct epoll_event events[256];
    for (;;) {
        int64_t t = now_ns();
        if (t >= end) break;
        /* Send every packet due by now: packet n of stream k is due at start + n*20ms + k*20ms/S. */
        while (total_sent_packets < total_due) {
            long n = total_sent_packets / streams;
            int k = (int)(total_sent_packets % streams);
            int64_t due = start + n * PERIOD_NS + (int64_t)k * PERIOD_NS / streams;
            if (due > t) break;
            struct stream *s = &st[k];
            uint16_t seq16 = (uint16_t)s->seq;
            out[2] = (uint8_t)(seq16 >> 8);
            out[3] = (uint8_t)seq16;
            put32(out + 4, s->seq * 160u);
            put32(out + 8, 0x1000u + (uint32_t)k);
            put32(out + HEADER, MAGIC);
            put32(out + HEADER + 4, (uint32_t)k);
            put32(out + HEADER + 8, s->seq);
            int64_t stamp = now_ns();
            memcpy(out + HEADER + 12, &stamp, 8);
            if (sendto(s->fd, out, sizeof out, 0, (struct sockaddr *)&s->dest, sizeof s->dest) < 0) send_errors++;
            s->seq++;
            s->sent++;
            total_sent_packets++;
        }
        int timeout = (int)((end - t) / 1000000) + 1;
        int n = epoll_wait(ep, events, 256, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == UINT32_MAX) {
                uint64_t expirations;
                if (read(tick, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("read tick");
                continue;
            }
            int fd = st[events[i].data.u32].fd;
            for (;;) {
                ssize_t len = recv(fd, in, sizeof in, 0);
                if (len < 0) break; /* EAGAIN, or ICMP errors reported on the socket */
                int64_t arrived = now_ns();
                if (len < HEADER + 20 || get32(in + HEADER) != MAGIC) { foreign++; continue; }
                uint32_t k = get32(in + HEADER + 4), seq = get32(in + HEADER + 8);
                if (k >= (uint32_t)streams || seq >= packets_per_stream) { foreign++; continue; }
                struct stream *s = &st[k];
                if (s->seen[seq / 8] & (1u << (seq % 8))) { duplicates++; continue; }
                s->seen[seq / 8] |= (uint8_t)(1u << (seq % 8));
                s->received++;
                int64_t stamp;
                memcpy(&stamp, in + HEADER + 12, 8);
                int64_t latency = arrived - stamp;
                if (latency < 0) latency = 0;
                if (latency > max_latency) max_latency = latency;
                int64_t bucket = latency / BUCKET_NS;
                if (bucket >= BUCKETS) { bucket = BUCKETS - 1; late++; }
                histogram[bucket]++;
            }
        }
    }
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;

    uint64_t sent = 0, received = 0;
    int streams_with_loss = 0;
    for (int k = 0; k < streams; k++) {
        sent += st[k].sent;
        received += st[k].received;
        if (st[k].received < st[k].sent) streams_with_loss++;
    }
    /* Percentiles from the histogram (nearest rank), in microseconds: the bucket's upper edge. */
    double quantiles[] = {0.50, 0.90, 0.99, 0.999};
    double values_us[4] = {0, 0, 0, 0};
    for (int q = 0; q < 4 && received > 0; q++) {
        uint64_t rank = (uint64_t)(quantiles[q] * (double)received + 0.999999);
        if (rank < 1) rank = 1;
        uint64_t cumulative = 0;
        for (int b = 0; b < BUCKETS; b++) {
            cumulative += histogram[b];
            if (cumulative >= rank) { values_us[q] = (double)(b + 1) * BUCKET_NS / 1000.0; break; }
        }
    }
    printf("{\"streams\":%d,\"seconds\":%.3f,\"sent\":%llu,\"received\":%llu,\"lost\":%llu,"
           "\"streams_with_loss\":%d,\"duplicates\":%llu,\"foreign\":%llu,\"send_errors\":%llu,\"late\":%llu,"
           "\"p50_us\":%.0f,\"p90_us\":%.0f,\"p99_us\":%.0f,\"p999_us\":%.0f,\"max_us\":%.0f,\"cpu_s\":%.3f}\n",
           streams, (double)(now_ns() - start) / 1e9, (unsigned long long)sent, (unsigned long long)received,
           (unsigned long long)(sent - received), streams_with_loss, (unsigned long long)duplicates,
           (unsigned long long)foreign, (unsigned long long)send_errors, (unsigned long long)late, values_us[0],
           values_us[1], values_us[2], values_us[3], (double)max_latency / 1000.0, cpu);
    return 0;
}
