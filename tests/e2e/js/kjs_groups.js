// kafkajs consumer-group driver for Spate's end-to-end tests (run by tests/e2e/test_groups_clients.py).
//
//   node kjs_groups.js BOOTSTRAP TOPIC COMMAND JSON_ARG
//
// Prints one JSON document on stdout; kafkajs logs go to stderr. Exits 1 on any error, or when
// arg.timeoutMs (default 45 s) passes before the command is done.
'use strict';

const { Kafka, logLevel } = require('kafkajs');

const [bootstrap, topic, command, rawArg] = process.argv.slice(2);
const arg = rawArg ? JSON.parse(rawArg) : {};
const timeoutMs = arg.timeoutMs || 45000;

const kafka = new Kafka({
  clientId: 'spate-e2e-kafkajs-groups',
  brokers: [bootstrap],
  connectionTimeout: 5000,
  requestTimeout: 15000,
  retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 1000 },
  logLevel: logLevel.WARN,
  logCreator: () => ({ namespace, level, label, log }) => {
    process.stderr.write(`[kafkajs ${label} ${namespace}] ${JSON.stringify(log)}\n`);
  },
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(what, cond, ms = timeoutMs) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function newConsumer(groupId) {
  return kafka.consumer({
    groupId,
    sessionTimeout: 10000,
    rebalanceTimeout: 10000,
    heartbeatInterval: 500,
    maxWaitTimeInMs: 100,
    allowAutoTopicCreation: false,
    retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 1000 },
  });
}

// One group member: records GROUP_JOIN events (time, generation, assignment) and every message.
// `accept(member, message)` decides whether a message is processed (recorded) or ignored.
async function startMember(name, groupId, accept = () => true) {
  const consumer = newConsumer(groupId);
  const m = { name, consumer, joins: [], records: [], crashed: null, memberId: null };
  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    m.memberId = e.payload.memberId;
    m.joins.push({ at: Date.now(), memberId: e.payload.memberId, isLeader: e.payload.isLeader,
      partitions: (e.payload.memberAssignment[topic] || []).slice().sort((a, b) => a - b) });
  });
  consumer.on(consumer.events.CRASH, (e) => { m.crashed = String(e.payload.error); });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      if (!accept(m, partition, message)) return;
      m.records.push([partition, Number(message.offset), message.key && message.key.toString(),
        message.value && message.value.toString()]);
    },
  });
  return m;
}

// Commit, for every partition a member processed records from, the offset after the last one.
async function commitProcessed(m, metadataPrefix) {
  const next = {};
  for (const [p, o] of m.records) next[p] = Math.max(next[p] === undefined ? 0 : next[p], o + 1);
  const offsets = Object.entries(next).map(([p, o]) => ({
    topic, partition: Number(p), offset: String(o), metadata: `${metadataPrefix}-${p}-${o}`,
  }));
  if (offsets.length) await m.consumer.commitOffsets(offsets);
  return offsets.map((x) => [x.partition, Number(x.offset)]);
}

async function fetchCommitted(groupId) {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const res = await admin.fetchOffsets({ groupId, topics: [topic] });
    return res[0].partitions
      .map((p) => [p.partition, Number(p.offset), p.metadata])
      .sort((a, b) => a[0] - b[0]);
  } finally {
    await admin.disconnect();
  }
}

function summary(m) {
  const last = m.joins[m.joins.length - 1];
  return { name: m.name, memberId: m.memberId, joins: m.joins.length, partitions: last ? last.partitions : [],
    records: m.records, crashed: m.crashed };
}

const commands = {
  // `members` consumers of one group split the topic; once their assignments have been stable
  // for 1.5 s, `count` keyed records are produced (record i to partition i % partitions) and
  // consumed; each member commits what it processed (metadata "js-P-OFFSET"), all disconnect.
  // arg: {group, members, partitions, count}
  async split() {
    const members = [];
    try {
      for (let i = 0; i < arg.members; i++) members.push(await startMember(`js${i}`, arg.group));
      const stable = () => {
        if (members.some((m) => m.crashed)) throw new Error(`member crashed: ${members.map((m) => m.crashed)}`);
        if (members.some((m) => !m.joins.length)) return false;
        const held = members.map((m) => m.joins[m.joins.length - 1].partitions);
        const flat = [].concat(...held).sort((a, b) => a - b);
        const lastJoin = Math.max(...members.map((m) => m.joins[m.joins.length - 1].at));
        return held.every((h) => h.length) && flat.length === arg.partitions
          && flat.every((p, i) => p === i) && Date.now() - lastJoin > 1500;
      };
      await waitFor('a stable split of the partitions', stable);
      const producer = kafka.producer({ allowAutoTopicCreation: false });
      await producer.connect();
      await producer.send({
        topic,
        acks: -1,
        messages: Array.from({ length: arg.count }, (_, i) => ({
          key: `js-k${i}`, value: `js-v${i}`, partition: i % arg.partitions,
        })),
      });
      await producer.disconnect();
      const total = () => members.reduce((n, m) => n + m.records.length, 0);
      await waitFor(`${arg.count} records`, () => total() >= arg.count);
      await sleep(1000); // anything more would be a duplicate
      const commits = [];
      for (const m of members) commits.push(await commitProcessed(m, 'js'));
      const out = { members: members.map(summary), commits };
      for (const m of members) await m.consumer.disconnect();
      members.length = 0;
      out.committed = await fetchCommitted(arg.group);
      return out;
    } finally {
      for (const m of members) await m.consumer.disconnect().catch(() => {});
    }
  },

  // One member processes the first `expect` records it is given (ignores the rest), commits
  // them (metadata "js-P-OFFSET") and disconnects (LeaveGroup). arg: {group, expect}
  async consume() {
    let m = null;
    try {
      m = await startMember('js-single', arg.group, (mem) => mem.records.length < arg.expect);
      await waitFor(`${arg.expect} records`, () => {
        if (m.crashed) throw new Error(`consumer crashed: ${m.crashed}`);
        return m.records.length >= arg.expect;
      });
      await m.consumer.pause([{ topic }]);
      const commits = await commitProcessed(m, 'js');
      await m.consumer.disconnect();
      const out = { member: summary(m), commits };
      m = null;
      out.committed = await fetchCommitted(arg.group);
      return out;
    } finally {
      if (m) await m.consumer.disconnect().catch(() => {});
    }
  },
};

async function main() {
  if (!commands[command]) throw new Error(`unknown command ${command}`);
  const timer = setTimeout(() => {
    process.stderr.write(`kjs_groups.js ${command}: no result after ${timeoutMs} ms\n`);
    process.exit(1);
  }, timeoutMs + 15000);
  const out = await commands[command]();
  clearTimeout(timer);
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`kjs_groups.js ${command} failed: ${err && err.stack ? err.stack : err}\n`);
    if (err && err.type) process.stderr.write(`kafkajs error type: ${err.type}\n`);
    process.exit(1);
  },
);
