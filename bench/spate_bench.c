/*
 * spate_bench: throughput and end-to-end latency of a Kafka-protocol broker, measured with a real
 * client (librdkafka), so the figures include everything a user's application would see.
 *
 *   spate_bench produce -b HOST:PORT -t TOPIC -n COUNT -s BYTES [-a 1|all] [-d MAX_SEND_SECONDS]
 *   spate_bench consume -b HOST:PORT -t TOPIC -n COUNT
 *   spate_bench latency -b HOST:PORT -t TOPIC -r MSGS_PER_S -d SECONDS [-s BYTES] [-a 1|all]
 *   spate_bench txn -b HOST:PORT -t TOPIC -n COUNT -s BYTES -x RECORDS_PER_TXN [-d MAX_SEND_SECONDS]
 *   common: [-p PARTITIONS] [-T HARD_TIMEOUT_S] [-X librdkafka.property=value ...]
 *
 * -b takes librdkafka's bootstrap list (HOST:PORT,HOST:PORT,...). With -p N, produce, latency and
 * txn send message i to partition i % N (so N partitions get equal shares, in order), and
 * latency's consumer reads all N partitions; the topic must have at least N partitions. Default: 1.
 *
 * txn is a transactional producer (a transactional.id unique to the run, so idempotent and
 * acks=all; otherwise produce's settings): init_transactions, then begin_transaction, RECORDS_PER_TXN
 * records, commit_transaction, until COUNT records are committed (the last transaction may be
 * smaller) or, with -d, no transaction begins after that many seconds. It reports records/s over
 * first begin -> last commit returned, the time spent in commit_transaction (which includes
 * flushing the transaction's outstanding records) and the whole transaction (begin -> commit
 * returned). An abortable error aborts the transaction, which is counted (its records are
 * produced again in the next one); any abort fails the run.
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
#define TXNS_MAX 1000000 /* bounds txn's two sample arrays (16 MB) */
#define RECORDS_PER_TXN_MAX 1000000
#define TXN_ABORTS_MAX 10 /* txn gives up after this many aborted transactions */
#define TXN_RETRIES_MAX 5 /* retriable errors of one init/commit/abort call before txn gives up */

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
static long records_per_txn = 0;
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

/* ---------------------------------------------------------------- txn */

/* Destroys err; dies unless it is one the caller may retry (retriable, not fatal). */
static void txn_retriable_or_die(rd_kafka_error_t *err, const char *what) {
    int retry = rd_kafka_error_is_retriable(err) && !rd_kafka_error_is_fatal(err);
    fprintf(stderr, "spate_bench: %s: %s (%s)%s\n", what, rd_kafka_error_string(err), rd_kafka_error_name(err),
            retry ? ", retrying" : "");
    rd_kafka_error_destroy(err);
    if (!retry) die("%s failed", what);
    usleep(100 * 1000);
}

/* Aborts the current transaction; retries retriable errors, dies on any other. */
static void txn_abort(rd_kafka_t *rk) {
    for (int attempt = 0;; attempt++) {
        rd_kafka_error_t *err = rd_kafka_abort_transaction(rk, -1);
        if (!err) return;
        if (attempt >= TXN_RETRIES_MAX) die("abort_transaction: %s", rd_kafka_error_string(err));
        txn_retriable_or_die(err, "abort_transaction");
    }
}

/* Commits the current transaction. Returns 1 on success, 0 if the transaction had to be aborted
 * (an abortable error); retries retriable errors, dies on fatal ones. */
static int txn_commit(rd_kafka_t *rk) {
    for (int attempt = 0;; attempt++) {
        rd_kafka_error_t *err = rd_kafka_commit_transaction(rk, -1);
        if (!err) return 1;
        if (rd_kafka_error_txn_requires_abort(err)) {
            fprintf(stderr, "spate_bench: commit_transaction: %s (%s), aborting\n", rd_kafka_error_string(err),
                    rd_kafka_error_name(err));
            rd_kafka_error_destroy(err);
            txn_abort(rk);
            return 0;
        }
        if (attempt >= TXN_RETRIES_MAX) die("commit_transaction: %s", rd_kafka_error_string(err));
        txn_retriable_or_die(err, "commit_transaction");
    }
}

static int run_txn(void) {
    if (count <= 0) die("txn needs -n COUNT > 0");
    if (records_per_txn < 1 || records_per_txn > RECORDS_PER_TXN_MAX)
        die("txn needs -x RECORDS_PER_TXN in 1..%d", RECORDS_PER_TXN_MAX);
    long txns_max = (count + records_per_txn - 1) / records_per_txn;
    if (txns_max > TXNS_MAX) die("COUNT / RECORDS_PER_TXN above %d transactions", TXNS_MAX);

    char txn_id[128];
    snprintf(txn_id, sizeof txn_id, "spate-bench-txn-%ld-%" PRIu64, (long)getpid(), now_ns());
    rd_kafka_conf_t *conf = base_conf();
    set_conf(conf, "transactional.id", txn_id); /* implies enable.idempotence=true, so acks=all */
    set_conf(conf, "acks", "all");
    set_conf(conf, "linger.ms", "5");
    set_conf(conf, "batch.size", "1000000");
    set_conf(conf, "compression.type", "none");
    set_conf(conf, "queue.buffering.max.messages", "2000000");
    set_conf(conf, "queue.buffering.max.kbytes", "1048576");
    set_conf(conf, "message.timeout.ms", "60000"); /* must not exceed transaction.timeout.ms (60 s) */
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = new_client(RD_KAFKA_PRODUCER, conf);
    wait_for_topic(rk);

    /* init_transactions (FindCoordinator, InitProducerId) is not part of the timed phase. */
    uint64_t init_start = now_ns();
    for (int attempt = 0;; attempt++) {
        rd_kafka_error_t *err = rd_kafka_init_transactions(rk, 30000);
        if (!err) break;
        if (attempt >= TXN_RETRIES_MAX) die("init_transactions: %s", rd_kafka_error_string(err));
        txn_retriable_or_die(err, "init_transactions");
    }
    double init_ms = (double)(now_ns() - init_start) / 1e6;

    char *payload = malloc((size_t)msg_bytes);
    uint64_t *commit_ns = calloc((size_t)txns_max, sizeof(uint64_t));
    uint64_t *whole_ns = calloc((size_t)txns_max, sizeof(uint64_t));
    if (!payload || !commit_ns || !whole_ns) die("out of memory");
    for (long i = 0; i < msg_bytes; i++) payload[i] = (char)('a' + (i * 7919) % 26);

    /* With -d, no transaction begins after that many seconds, so a run on a slow machine (or with
     * slow transactions) stays short; throughput is then over the records actually committed. */
    long committed = 0, txns = 0, aborts = 0, seq = 0; /* seq: records produced, aborted ones too */
    int capped = 0;
    uint64_t start = now_ns(), end = start;
    uint64_t send_until = duration_set ? start + (uint64_t)duration_s * 1000000000ull : UINT64_MAX;
    while (committed < count && aborts < TXN_ABORTS_MAX) {
        if (now_ns() > send_until) {
            capped = 1;
            break;
        }
        long n = count - committed < records_per_txn ? count - committed : records_per_txn;
        uint64_t t_begin = now_ns();
        rd_kafka_error_t *err = rd_kafka_begin_transaction(rk);
        if (err) die("begin_transaction: %s", rd_kafka_error_string(err));
        int ok = 1;
        for (long i = 0; i < n && ok; i++, seq++) {
            for (;;) {
                rd_kafka_resp_err_t perr = rd_kafka_producev(
                    rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION((int32_t)(seq % partitions)),
                    RD_KAFKA_V_VALUE(payload, (size_t)msg_bytes), RD_KAFKA_V_END);
                if (perr == RD_KAFKA_RESP_ERR_NO_ERROR) break;
                if (perr != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                    /* __STATE: the transaction already failed (an abortable error). */
                    fprintf(stderr, "spate_bench: produce in transaction: %s, aborting\n", rd_kafka_err2str(perr));
                    ok = 0;
                    break;
                }
                rd_kafka_poll(rk, 10);
            }
            if ((seq & 1023) == 0) rd_kafka_poll(rk, 0);
        }
        uint64_t t_commit = now_ns();
        if (ok) {
            ok = txn_commit(rk);
        } else {
            txn_abort(rk);
        }
        end = now_ns();
        if (ok) {
            commit_ns[txns] = end - t_commit;
            whole_ns[txns] = end - t_begin;
            txns++;
            committed += n;
        } else {
            aborts++;
        }
    }
    rd_kafka_flush(rk, 10000); /* nothing is outstanding after a commit; serves the last reports */
    double secs = (double)(end - start) / 1e9;
    double mb = (double)committed * (double)msg_bytes / 1e6;
    qsort(commit_ns, (size_t)txns, sizeof(uint64_t), cmp_u64);
    qsort(whole_ns, (size_t)txns, sizeof(uint64_t), cmp_u64);
    double c50 = pct_ms(commit_ns, txns, 0.50), c99 = pct_ms(commit_ns, txns, 0.99);
    double cmax = txns ? (double)commit_ns[txns - 1] / 1e6 : 0.0;
    double w50 = pct_ms(whole_ns, txns, 0.50), w99 = pct_ms(whole_ns, txns, 0.99);
    double wmax = txns ? (double)whole_ns[txns - 1] / 1e6 : 0.0;
    printf("committed %ld of %ld records of %ld B%s in %ld transactions of up to %ld (acks=all, idempotent, "
           "%ld partitions) in %.3f s: %.1f MB/s, %.0f records/s; %ld aborted transactions, %ld delivery errors; "
           "init_transactions %.1f ms (not timed)\n",
           committed, count, msg_bytes, capped ? " (stopped by -d)" : "", txns, records_per_txn, partitions, secs,
           mb / secs, (double)committed / secs, aborts, delivery_errors, init_ms);
    printf("commit latency (time in rd_kafka_commit_transaction, which includes flushing the transaction's "
           "outstanding records): p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
           c50, c99, cmax);
    printf("whole transaction (begin_transaction -> commit_transaction returned): p50 %.2f ms, p99 %.2f ms, "
           "max %.2f ms\n",
           w50, w99, wmax);
    printf("RESULT mode=txn size=%ld partitions=%ld per_txn=%ld count=%ld msgs=%ld capped=%d txns=%ld aborts=%ld "
           "secs=%.3f mb_s=%.1f msgs_s=%.0f commit_p50_ms=%.2f commit_p99_ms=%.2f commit_max_ms=%.2f "
           "txn_p50_ms=%.2f txn_p99_ms=%.2f txn_max_ms=%.2f init_ms=%.1f errors=%ld\n",
           msg_bytes, partitions, records_per_txn, count, committed, capped, txns, aborts, secs, mb / secs,
           (double)committed / secs, c50, c99, cmax, w50, w99, wmax, init_ms, delivery_errors);
    fflush(stdout);
    rd_kafka_destroy(rk);
    free(payload);
    free(commit_ns);
    free(whole_ns);
    return ((committed == count || (capped && committed > 0)) && aborts == 0 && delivery_errors == 0) ? 0 : 1;
}

/* ---------------------------------------------------------------- main */

static void usage(void) {
    fprintf(stderr,
            "usage: spate_bench produce|consume|latency|txn [-b brokers] [-t topic] [-n count] [-s bytes]\n"
            "                   [-a 1|all] [-r msgs_per_s] [-d seconds] [-x records_per_txn] [-p partitions]\n"
            "                   [-T hard_timeout_s] [-X k=v]...\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "b:t:n:s:a:r:d:x:p:T:X:")) != -1) {
        switch (opt) {
        case 'b': brokers = optarg; break;
        case 't': topic = optarg; break;
        case 'n': count = atol(optarg); break;
        case 's': msg_bytes = atol(optarg); break;
        case 'a': acks = optarg; break;
        case 'r': rate = atol(optarg); break;
        case 'd': duration_s = atol(optarg); duration_set = 1; break;
        case 'x': records_per_txn = atol(optarg); break;
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
    if (strcmp(mode, "txn") == 0) return run_txn();
    usage();
    return 2;
}
