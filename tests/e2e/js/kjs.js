// kafkajs driver for Spate's end-to-end tests (run by tests/e2e/test_kafkajs.py).
//
//   node kjs.js BOOTSTRAP TOPIC COMMAND [JSON_ARG]
//
// Prints one JSON document on stdout; kafkajs logs go to stderr. Exits 1 on any error.
// Reads are done by the Python side (confluent-kafka with assign()) and here only via admin
// offsets; kafkajs consumer groups are driven by kjs_groups.js (test_groups_clients.py).
'use strict';

const { Kafka, logLevel, CompressionTypes } = require('kafkajs');

const [bootstrap, topic, command, rawArg] = process.argv.slice(2);
const arg = rawArg ? JSON.parse(rawArg) : {};

const kafka = new Kafka({
  clientId: 'spate-e2e-kafkajs',
  brokers: bootstrap.split(','),
  connectionTimeout: 5000,
  requestTimeout: 15000,
  retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 1000 },
  logLevel: logLevel.WARN,
  logCreator: () => ({ namespace, level, label, log }) => {
    process.stderr.write(`[kafkajs ${label} ${namespace}] ${JSON.stringify(log)}\n`);
  },
});

const commands = {
  // arg: {partitions, configs: {name: value}}
  async create() {
    const admin = kafka.admin();
    await admin.connect();
    try {
      const created = await admin.createTopics({
        waitForLeaders: true,
        timeout: 10000,
        topics: [{
          topic,
          numPartitions: arg.partitions || 1,
          replicationFactor: arg.replicationFactor || 1,
          configEntries: Object.entries(arg.configs || {}).map(([name, value]) => ({ name, value })),
        }],
      });
      const md = await admin.fetchTopicMetadata({ topics: [topic] });
      return { created, metadata: md.topics };
    } finally {
      await admin.disconnect();
    }
  },

  // arg: {messages: [{key, value, partition, headers, timestamp}], compression, idempotent, acks}
  async produce() {
    const producer = kafka.producer({
      idempotent: !!arg.idempotent,
      maxInFlightRequests: arg.idempotent ? 1 : undefined,
      allowAutoTopicCreation: false,
    });
    await producer.connect();
    try {
      const compression = CompressionTypes[arg.compression || 'None'];
      const results = await producer.sendBatch({
        acks: arg.acks === undefined ? -1 : arg.acks,
        compression,
        topicMessages: [{
          topic,
          messages: arg.messages.map((m) => ({
            key: m.key === undefined ? null : m.key,
            value: m.value === undefined ? null : m.value,
            partition: m.partition,
            headers: m.headers,
            timestamp: m.timestamp,
          })),
        }],
      });
      return results.map((r) => ({
        partition: r.partition, errorCode: r.errorCode, baseOffset: Number(r.baseOffset),
      }));
    } finally {
      await producer.disconnect();
    }
  },

  // One send() per message (idempotent, acks=all), `count` messages to partition 0, while the
  // test restarts the broker. Prints the acknowledged [offset, value] pairs and the failures.
  // arg: {count}
  async produceLoop() {
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false,
      retry: { retries: 30, initialRetryTime: 100, maxRetryTime: 1000 } });
    await producer.connect();
    const acked = [];
    const failed = [];
    try {
      for (let i = 0; i < arg.count; i++) {
        const value = `js-${String(i).padStart(6, '0')}`;
        try {
          const [r] = await producer.send({ topic, acks: -1, messages: [{ value, partition: 0 }] });
          acked.push([Number(r.baseOffset), value]);
        } catch (err) {
          failed.push([value, String(err && err.message)]);
        }
      }
    } finally {
      await producer.disconnect().catch(() => {});
    }
    return { acked, failed };
  },

  // Transactions, one after another, each committed or aborted.
  // arg: {transactionalId, transactions: [{values: [...], commit: bool}]}
  async transactions() {
    const producer = kafka.producer({
      transactionalId: arg.transactionalId,
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
    });
    await producer.connect();
    const ended = [];
    try {
      for (const t of arg.transactions) {
        const txn = await producer.transaction();
        await txn.send({ topic, acks: -1, messages: t.values.map((value) => ({ value, partition: 0 })) });
        if (t.commit) {
          await txn.commit();
        } else {
          await txn.abort();
        }
        ended.push(t.commit ? 'committed' : 'aborted');
      }
    } finally {
      await producer.disconnect().catch(() => {});
    }
    return { ended };
  },

  // arg: {timestamp} optional
  async offsets() {
    const admin = kafka.admin();
    await admin.connect();
    try {
      const offsets = await admin.fetchTopicOffsets(topic);
      const out = { offsets: offsets.map((o) => ({ partition: o.partition, low: Number(o.low), high: Number(o.high) })) };
      if (arg.timestamp !== undefined) {
        const byTs = await admin.fetchTopicOffsetsByTimestamp(topic, arg.timestamp);
        out.byTimestamp = byTs.map((o) => ({ partition: o.partition, offset: Number(o.offset) }));
      }
      return out;
    } finally {
      await admin.disconnect();
    }
  },

  // arg: {partitions, retention, deleteBefore: {partition: offset}}
  async adminMisc() {
    const admin = kafka.admin();
    await admin.connect();
    try {
      const out = {};
      await admin.createPartitions({ topicPartitions: [{ topic, count: arg.partitions }], timeout: 10000 });
      const md = await admin.fetchTopicMetadata({ topics: [topic] });
      out.partitions = md.topics[0].partitions.map((p) => p.partitionId).sort();
      await admin.alterConfigs({
        validateOnly: false,
        resources: [{ type: 2, name: topic, configEntries: [{ name: 'retention.ms', value: arg.retention }] }],
      });
      const described = await admin.describeConfigs({
        includeSynonyms: false,
        resources: [{ type: 2, name: topic, configNames: ['retention.ms'] }],
      });
      out.retention = described.resources[0].configEntries.map((e) => [e.configName, e.configValue]);
      if (arg.deleteBefore) {
        await admin.deleteTopicRecords({
          topic,
          partitions: Object.entries(arg.deleteBefore).map(([partition, offset]) => ({
            partition: Number(partition), offset: String(offset),
          })),
        });
        out.offsets = (await admin.fetchTopicOffsets(topic)).map((o) => ({
          partition: o.partition, low: Number(o.low), high: Number(o.high),
        }));
      }
      const cluster = await admin.describeCluster();
      out.cluster = { brokers: cluster.brokers.map((b) => [b.nodeId, b.host, b.port]), controller: cluster.controller };
      return out;
    } finally {
      await admin.disconnect();
    }
  },

  async delete() {
    const admin = kafka.admin();
    await admin.connect();
    try {
      await admin.deleteTopics({ topics: [topic], timeout: 10000 });
      return { topics: await admin.listTopics() };
    } finally {
      await admin.disconnect();
    }
  },
};

async function main() {
  if (!commands[command]) throw new Error(`unknown command ${command}`);
  const out = await commands[command]();
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`kjs.js ${command} failed: ${err && err.stack ? err.stack : err}\n`);
    if (err && err.type) process.stderr.write(`kafkajs error type: ${err.type}\n`);
    process.exit(1);
  },
);
