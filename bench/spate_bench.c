/*
 * spate_bench: throughput and end-to-end latency of a Kafka-protocol broker, measured with a real
 * client (librdkafka), so the figures include everything a user's application would see.
 *
 *   spate_bench produce -b HOST:PORT -t TOPIC -n COUNT -s BYTES [-a 1|all] [-d MAX_SEND_SECONDS]
 *   spate_bench consume -b HOST:PORT -t TOPIC -n COUNT
 *   spate_bench latency -b HOST:PORT -t TOPIC -r MSGS_PER_S -d SECONDS [-s BYTES] [-a 1|all]
 *   common: [-p PARTITIONS] [-T HARD_TIMEOUT_S] [-X librdkafka.property=value ...]
 *
 * -b takes librdkafka's bootstrap list (HOST:PORT,HOST:PORT,...). With -p N, produce and latency
 * send message i to partition i % N (so N partitions get equal shares, in order), and latency's
 * consumer reads all N partitions; the topic must have at least N partitions. Default: 1.
 *
 * Every mode is bounded: a message count, and a hard timeout (SIGALRM) after which the process
 * exits by itself with status 3. The last line of stdout is machine-readable:
 *   RESULT mode=... key=value ...
 * Exit status: 0 ok, 1 delivery/consume errors or lost messages, 2 usage, 3 timeout.
 *
 * The broker may lack consumer-group APIs, so the consumer never subscribes or commits: it uses
 * rd_kafka_assign() with explicit offsets; group.id is set only because librdkafka requires one.
 *
 * Build: gcc -O2 -o target/bench/spate_bench bench/spate_bench.c -lrdkafka -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXTRA_CONF_MAX 32
#define LATENCY_MSGS_MAX 10000000 /* bounds the latency sample array (80 MB) */
#define PAYLOAD_BYTES_MAX (16 * 1024 * 1024)
#define PARTITIONS_MAX 10000

static const char *brokers = "127.0.0.1:9092";
static const char *topic = "spate-bench";
static const char *acks = "1";
static long count = 0;
static long msg_bytes = 1024;
static long rate = 10000;
static long duration_s = 10;
static int duration_set = 0;
static long timeout_s = 300;
static long partitions = 1;
static const char *extra_conf[EXTRA_CONF_MAX];
static int extra_conf_n = 0;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "spate_bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "spate_bench: hard timeout reached, giving up\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(3);
}

static void set_conf(rd_kafka_conf_t *conf, const char *key, const char *value) {
    char err[512];
    if (rd_kafka_conf_set(conf, key, value, err, sizeof err) != RD_KAFKA_CONF_OK)
        die("config %s=%s: %s", key, value, err);
}

/* Errors the client reports outside any one message (connection drops, unsupported APIs). Logged
 * with a cap so a broker refusing group APIs cannot flood the output; fatal ones end the run. */
static volatile long client_errors = 0;
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    (void)opaque;
    long n = __atomic_add_fetch(&client_errors, 1, __ATOMIC_RELAXED);
    if (n <= 10)
        fprintf(stderr, "spate_bench: client error %s: %s\n", rd_kafka_err2name(err), reason);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[512];
        rd_kafka_fatal_error(rk, buf, sizeof buf);
        die("fatal client error: %s", buf);
    }
}

static rd_kafka_conf_t *base_conf(void) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    set_conf(conf, "bootstrap.servers", brokers);
    set_conf(conf, "client.id", "spate-bench");
    set_conf(conf, "log_level", "4"); /* warnings and worse */
    rd_kafka_conf_set_error_cb(conf, on_error);
    return conf;
}

static void apply_extra_conf(rd_kafka_conf_t *conf) {
    for (int i = 0; i < extra_conf_n; i++) {
        char kv[512];
        snprintf(kv, sizeof kv, "%s", extra_conf[i]);
        char *eq = strchr(kv, '=');
        if (!eq) die("-X expects key=value, got %s", extra_conf[i]);
        *eq = '\0';
        set_conf(conf, kv, eq + 1);
    }
}

static rd_kafka_t *new_client(rd_kafka_type_t type, rd_kafka_conf_t *conf) {
    char err[512];
    apply_extra_conf(conf);
    rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof err);
    if (!rk) die("rd_kafka_new: %s", err);
    return rk;
}

/* Asks for the topic's metadata until it has partitions with leaders (the request auto-creates the
 * topic on a broker that allows it). Returns the partition count. Not part of any timed phase. */
static int wait_for_topic_any(rd_kafka_t *rk) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    uint64_t deadline = now_ns() + 30ull * 1000000000ull;
    rd_kafka_resp_err_t last = RD_KAFKA_RESP_ERR_NO_ERROR;
    while (now_ns() < deadline) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 5000);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 && md->topics[0].err == 0 &&
            md->topics[0].partition_cnt > 0) {
            int n = md->topics[0].partition_cnt, ok = 1;
            for (int i = 0; i < n; i++)
                if (md->topics[0].partitions[i].leader < 0) ok = 0;
            rd_kafka_metadata_destroy(md);
            if (ok) {
                rd_kafka_topic_destroy(rkt);
                return n;
            }
        } else {
            last = err ? err : (md && md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC);
            if (md) rd_kafka_metadata_destroy(md);
        }
        usleep(200 * 1000);
    }
    die("topic %s did not appear within 30 s (last error %s)", topic, rd_kafka_err2name(last));
    return 0;
}

/* As wait_for_topic_any, and checks that the topic has the -p partitions this run writes to. */
static int wait_for_topic(rd_kafka_t *rk) {
    int n = wait_for_topic_any(rk);
    if (n < partitions) die("topic %s has %d partitions, -p asks for %ld", topic, n, partitions);
    return n;
}

/* ---------------------------------------------------------------- produce */

static volatile long delivered = 0;
static volatile long delivery_errors = 0;
static volatile uint64_t last_delivery_ns = 0;
/* Latency mode only: send time per sequence number (from the message opaque), and the time from
 * send to delivery report (the producer's acknowledgement latency). */
static uint64_t *send_ns = NULL;
static uint64_t *ack_ns = NULL;
static long ack_slots = 0;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    if (ack_ns && !m->err) {
        uintptr_t seq = (uintptr_t)m->_private;
        if ((long)seq < ack_slots) ack_ns[seq] = now_ns() - send_ns[seq];
    }
    if (m->err) {
        if (delivery_errors < 10)
            fprintf(stderr, "spate_bench: delivery failed: %s\n", rd_kafka_err2str(m->err));
        delivery_errors++;
    } else {
        delivered++;
    }
    last_delivery_ns = now_ns();
}

static int run_produce(void) {
    if (count <= 0) die("produce needs -n COUNT > 0");
    rd_kafka_conf_t *conf = base_conf();
    set_conf(conf, "acks", acks);
    set_conf(conf, "linger.ms", "5");
    set_conf(conf, "batch.size", "1000000");
    set_conf(conf, "compression.type", "none");
    set_conf(conf, "queue.buffering.max.messages", "2000000");
    set_conf(conf, "queue.buffering.max.kbytes", "1048576");
    set_conf(conf, "message.timeout.ms", "60000");
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = new_client(RD_KAFKA_PRODUCER, conf);
    wait_for_topic(rk);

    /* One shared payload, never freed or copied by librdkafka (no F_COPY/F_FREE). Its content is
     * irrelevant with compression off, but is not all zeros in case a codec is forced via -X. */
    char *payload = malloc((size_t)msg_bytes);
    if (!payload) die("out of memory");
    for (long i = 0; i < msg_bytes; i++) payload[i] = (char)('a' + (i * 7919) % 26);

    /* With -d, sending stops after that many seconds even if fewer than COUNT were sent, so a
     * run on a slow machine stays short; throughput is then over the messages actually sent. */
    uint64_t start = now_ns();
    uint64_t send_until = duration_set ? start + (uint64_t)duration_s * 1000000000ull : UINT64_MAX;
    long sent = 0;
    for (long i = 0; i < count; i++) {
        if ((i & 255) == 0 && now_ns() > send_until) break;
        for (;;) {
            rd_kafka_resp_err_t err = rd_kafka_producev(
                rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION((int32_t)(i % partitions)),
                RD_KAFKA_V_VALUE(payload, (size_t)msg_bytes), RD_KAFKA_V_END);
            if (err == RD_KAFKA_RESP_ERR_NO_ERROR) break;
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) die("produce: %s", rd_kafka_err2str(err));
            rd_kafka_poll(rk, 10);
        }
        sent++;
        if ((i & 1023) == 0) rd_kafka_poll(rk, 0);
    }
    while (rd_kafka_outq_len(rk) > 0 && delivered + delivery_errors < sent) rd_kafka_poll(rk, 50);
    rd_kafka_flush(rk, 10000);
    uint64_t end = last_delivery_ns ? last_delivery_ns : now_ns();
    double secs = (double)(end - start) / 1e9;
    double mb = (double)delivered * (double)msg_bytes / 1e6;
    printf("produced %ld msgs of %ld B (acks=%s, %ld partitions) in %.3f s: %.1f MB/s, %.0f msgs/s, "
           "%ld delivery errors\n",
           delivered, msg_bytes, acks, partitions, secs, mb / secs, (double)delivered / secs, delivery_errors);
    printf("RESULT mode=produce acks=%s size=%ld partitions=%ld msgs=%ld secs=%.3f mb_s=%.1f msgs_s=%.0f "
           "errors=%ld\n",
           acks, msg_bytes, partitions, delivered, secs, mb / secs, (double)delivered / secs, delivery_errors);
    fflush(stdout);
    rd_kafka_destroy(rk);
    free(payload);
    return (delivery_errors == 0 && delivered == sent) ? 0 : 1;
}

/* ---------------------------------------------------------------- consume */

static rd_kafka_t *new_consumer(const char *fetch_wait_max_ms) {
    rd_kafka_conf_t *conf = base_conf();
    set_conf(conf, "group.id", "spate-bench"); /* required by librdkafka; never used */
    set_conf(conf, "enable.auto.commit", "false");
    set_conf(conf, "enable.auto.offset.store", "false");
    set_conf(conf, "enable.partition.eof", "false");
    if (fetch_wait_max_ms) {
        set_conf(conf, "fetch.wait.max.ms", fetch_wait_max_ms);
        set_conf(conf, "fetch.min.bytes", "1");
    }
    rd_kafka_t *rk = new_client(RD_KAFKA_CONSUMER, conf);
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

static void assign_or_die(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts) {
    rd_kafka_resp_err_t err = rd_kafka_assign(rk, parts);
    if (err) die("assign: %s", rd_kafka_err2str(err));
}

static int run_consume(void) {
    if (count <= 0) die("consume needs -n COUNT > 0");
    rd_kafka_t *rk = new_consumer(NULL);
    int topic_partitions = wait_for_topic_any(rk);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(topic_partitions);
    for (int p = 0; p < topic_partitions; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;

    long got = 0, bytes = 0, errors = 0;
    uint64_t start = now_ns(), last = start, last_progress = start;
    assign_or_die(rk, parts);
    while (got < count) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        uint64_t t = now_ns();
        if (!m) {
            if (t - last_progress > 15ull * 1000000000ull)
                die("no message for 15 s after %ld of %ld", got, count);
            continue;
        }
        if (m->err) {
            if (errors < 10) fprintf(stderr, "spate_bench: consume error: %s\n", rd_kafka_message_errstr(m));
            errors++;
        } else {
            got++;
            bytes += (long)m->len;
            last = last_progress = t;
        }
        rd_kafka_message_destroy(m);
    }
    double secs = (double)(last - start) / 1e9;
    double mb = (double)bytes / 1e6;
    printf("consumed %ld msgs (%.1f MB) in %.3f s: %.1f MB/s, %.0f msgs/s, %ld errors\n", got, mb, secs,
           mb / secs, (double)got / secs, errors);
    printf("RESULT mode=consume msgs=%ld bytes=%ld secs=%.3f mb_s=%.1f msgs_s=%.0f errors=%ld\n", got, bytes,
           secs, mb / secs, (double)got / secs, errors);
    fflush(stdout);
    rd_kafka_assign(rk, NULL);
    rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return errors == 0 ? 0 : 1;
}

/* ---------------------------------------------------------------- latency */

struct latency_state {
    rd_kafka_t *consumer;
    long expected;
    uint64_t deadline_ns;
    uint64_t *samples_ns; /* indexed by sequence number; 0 = not received */
    long received;
    long duplicates;
    long errors;
    volatile int producer_done;
};

static void *latency_consumer(void *arg) {
    struct latency_state *st = arg;
    while (st->received < st->expected && now_ns() < st->deadline_ns) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(st->consumer, 50);
        if (!m) continue;
        uint64_t t = now_ns();
        if (m->err) {
            if (st->errors < 10)
                fprintf(stderr, "spate_bench: consume error: %s\n", rd_kafka_message_errstr(m));
            st->errors++;
        } else if (m->len >= 16) {
            uint64_t sent, seq;
            memcpy(&sent, m->payload, 8);
            memcpy(&seq, (const char *)m->payload + 8, 8);
            if (seq < (uint64_t)st->expected && st->samples_ns[seq] == 0) {
                st->samples_ns[seq] = t > sent ? t - sent : 1;
                st->received++;
            } else {
                st->duplicates++;
            }
        }
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(const uint64_t *sorted, long n, double q) {
    if (n == 0) return 0.0;
    long i = (long)(q * (double)n);
    if (i >= n) i = n - 1;
    return (double)sorted[i] / 1e6;
}

static int run_latency(void) {
    if (rate <= 0 || duration_s <= 0) die("latency needs -r RATE > 0 and -d SECONDS > 0");
    if (msg_bytes < 16) msg_bytes = 16;
    long total = rate * duration_s;
    if (total > LATENCY_MSGS_MAX) die("rate*duration above %d", LATENCY_MSGS_MAX);

    rd_kafka_conf_t *conf = base_conf();
    set_conf(conf, "acks", acks);
    set_conf(conf, "linger.ms", "0");
    set_conf(conf, "compression.type", "none");
    set_conf(conf, "queue.buffering.max.messages", "2000000");
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *producer = new_client(RD_KAFKA_PRODUCER, conf);
    wait_for_topic(producer);

    /* Position the consumer at the current end offsets explicitly (ListOffsets), so every message
     * produced from here on is read, with no race against OFFSET_END being resolved late. */
    rd_kafka_t *consumer = new_consumer("500");
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new((int)partitions);
    for (long p = 0; p < partitions; p++) {
        int64_t low = 0, high = 0;
        err = rd_kafka_query_watermark_offsets(consumer, topic, (int32_t)p, &low, &high, 10000);
        if (err) die("query_watermark_offsets partition %ld: %s", p, rd_kafka_err2str(err));
        rd_kafka_topic_partition_list_add(parts, topic, (int32_t)p)->offset = high;
    }
    assign_or_die(consumer, parts);
    /* Let the consumer connect and issue its first (long-poll) fetch before sending. */
    for (int i = 0; i < 10; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 100);
        if (m) rd_kafka_message_destroy(m);
    }

    struct latency_state st = {0};
    st.consumer = consumer;
    st.expected = total;
    st.deadline_ns = now_ns() + (uint64_t)(duration_s + 15) * 1000000000ull;
    st.samples_ns = calloc((size_t)total, sizeof(uint64_t));
    send_ns = calloc((size_t)total, sizeof(uint64_t));
    ack_ns = calloc((size_t)total, sizeof(uint64_t));
    if (!st.samples_ns || !send_ns || !ack_ns) die("out of memory");
    ack_slots = total;
    pthread_t thr;
    if (pthread_create(&thr, NULL, latency_consumer, &st) != 0) die("pthread_create failed");

    char *payload = calloc(1, (size_t)msg_bytes);
    if (!payload) die("out of memory");
    uint64_t start = now_ns(), interval = 1000000000ull / (uint64_t)rate;
    long late_1ms = 0; /* sends that left more than 1 ms after their slot: the producer lagged */
    for (long i = 0; i < total; i++) {
        uint64_t slot = start + (uint64_t)i * interval;
        struct timespec ts = {(time_t)(slot / 1000000000ull), (long)(slot % 1000000000ull)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
        uint64_t sent = now_ns(), seq = (uint64_t)i;
        if (sent > slot + 1000000ull) late_1ms++;
        memcpy(payload, &sent, 8);
        memcpy(payload + 8, &seq, 8);
        send_ns[i] = sent;
        for (;;) {
            err = rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic),
                                    RD_KAFKA_V_PARTITION((int32_t)(i % partitions)),
                                    RD_KAFKA_V_VALUE(payload, (size_t)msg_bytes),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    RD_KAFKA_V_OPAQUE((void *)(uintptr_t)i), RD_KAFKA_V_END);
            if (err == RD_KAFKA_RESP_ERR_NO_ERROR) break;
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) die("produce: %s", rd_kafka_err2str(err));
            rd_kafka_poll(producer, 1);
        }
        rd_kafka_poll(producer, 0);
    }
    rd_kafka_flush(producer, 15000);
    pthread_join(thr, NULL);

    uint64_t *sorted = malloc((size_t)total * sizeof(uint64_t));
    if (!sorted) die("out of memory");
    long n = 0;
    for (long i = 0; i < total; i++)
        if (st.samples_ns[i]) sorted[n++] = st.samples_ns[i];
    qsort(sorted, (size_t)n, sizeof(uint64_t), cmp_u64);
    long missing = total - n;
    double p50 = pct_ms(sorted, n, 0.50), p99 = pct_ms(sorted, n, 0.99), p999 = pct_ms(sorted, n, 0.999);
    double max = n ? (double)sorted[n - 1] / 1e6 : 0.0;
    long acked = 0;
    for (long i = 0; i < total; i++)
        if (ack_ns[i]) ack_ns[acked++] = ack_ns[i];
    qsort(ack_ns, (size_t)acked, sizeof(uint64_t), cmp_u64);
    double ack_p50 = pct_ms(ack_ns, acked, 0.50), ack_p99 = pct_ms(ack_ns, acked, 0.99);
    double ack_p999 = pct_ms(ack_ns, acked, 0.999), ack_max = acked ? (double)ack_ns[acked - 1] / 1e6 : 0.0;
    printf("latency at %ld msgs/s for %ld s (acks=%s, %ld B, %ld partitions): received %ld of %ld, p50 %.2f ms, "
           "p99 %.2f ms, p99.9 %.2f ms, max %.2f ms; producer ack p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, "
           "max %.2f ms; %ld sends >1 ms behind schedule; %ld delivery errors\n",
           rate, duration_s, acks, msg_bytes, partitions, n, total, p50, p99, p999, max, ack_p50, ack_p99,
           ack_p999, ack_max, late_1ms, delivery_errors);
    printf("RESULT mode=latency acks=%s partitions=%ld rate=%ld secs=%ld sent=%ld received=%ld missing=%ld "
           "p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f max_ms=%.2f ack_p50_ms=%.2f ack_p99_ms=%.2f ack_p999_ms=%.2f "
           "ack_max_ms=%.2f late_sends=%ld errors=%ld\n",
           acks, partitions, rate, duration_s, total, n, missing, p50, p99, p999, max, ack_p50, ack_p99, ack_p999,
           ack_max, late_1ms, delivery_errors + st.errors);
    fflush(stdout);

    rd_kafka_assign(consumer, NULL);
    rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_consumer_close(consumer);
    rd_kafka_destroy(consumer);
    rd_kafka_destroy(producer);
    free(sorted);
    free(st.samples_ns);
    free(send_ns);
    free(ack_ns);
    free(payload);
    return (missing == 0 && delivery_errors == 0 && st.errors == 0) ? 0 : 1;
}

/* ---------------------------------------------------------------- main */

static void usage(void) {
    fprintf(stderr,
            "usage: spate_bench produce|consume|latency [-b brokers] [-t topic] [-n count] [-s bytes]\n"
            "                   [-a 1|all] [-r msgs_per_s] [-d seconds] [-p partitions] [-T hard_timeout_s]\n"
            "                   [-X k=v]...\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "b:t:n:s:a:r:d:p:T:X:")) != -1) {
        switch (opt) {
        case 'b': brokers = optarg; break;
        case 't': topic = optarg; break;
        case 'n': count = atol(optarg); break;
        case 's': msg_bytes = atol(optarg); break;
        case 'a': acks = optarg; break;
        case 'r': rate = atol(optarg); break;
        case 'd': duration_s = atol(optarg); duration_set = 1; break;
        case 'p': partitions = atol(optarg); break;
        case 'T': timeout_s = atol(optarg); break;
        case 'X':
            if (extra_conf_n >= EXTRA_CONF_MAX) die("too many -X");
            extra_conf[extra_conf_n++] = optarg;
            break;
        default: usage();
        }
    }
    if (msg_bytes <= 0 || msg_bytes > PAYLOAD_BYTES_MAX) die("-s must be in 1..%d", PAYLOAD_BYTES_MAX);
    if (timeout_s <= 0) die("-T must be positive");
    if (partitions < 1 || partitions > PARTITIONS_MAX) die("-p must be in 1..%d", PARTITIONS_MAX);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)timeout_s);

    if (strcmp(mode, "produce") == 0) return run_produce();
    if (strcmp(mode, "consume") == 0) return run_consume();
    if (strcmp(mode, "latency") == 0) return run_latency();
    usage();
    return 2;
}
