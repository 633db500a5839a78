// The official Chat21 client library (chat21client.js v0.1.11, from @chat21/chat21-server
// 0.2.21) driving the engine end to end: MQTT over WebSocket and the HTTP API, exactly as the
// web widget calls them. Run by tests/e2e/real_client.rs with the engine's addresses and
// three users' tokens in the environment; exits 0 when every step saw what it must, 1 with
// the failing step otherwise. Nothing here is ours but the scenario.
'use strict';

global.XMLHttpRequest = require('xhr2'); // lastConversations/lastMessages use the browser's XHR
const assert = require('assert');
const { Chat21Client } = require('@chat21/chat21-server/mqttclient/chat21client.js');

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing ${k}`);
  return v;
};
const API = env('API_ENDPOINT');
const MQTT = env('MQTT_ENDPOINT');
const users = ['U1', 'U2', 'U3'].map((k) => ({ id: env(`${k}_ID`), jwt: env(`${k}_JWT`) }));
const GROUP = env('GROUP_ID');

const STEP_MS = 15000;
let step = 'start';
const within = (what, promise) => {
  step = what;
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), STEP_MS)),
  ]);
};
const call = (f) => new Promise((resolve, reject) => f((err, v) => (err ? reject(err) : resolve(v))));

/// Everything a client's callbacks saw, and a way to wait for what has not come yet.
function watch(client) {
  const seen = { messages: [], groups: [] };
  const waiters = [];
  const check = () => {
    for (const w of waiters.slice()) {
      const found = w.pick(seen);
      if (found) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(found);
      }
    }
  };
  client.onMessageAdded((m, topic) => {
    seen.messages.push(m);
    check();
  });
  client.onGroupUpdated((g, topic) => {
    seen.groups.push(g);
    check();
  });
  seen.until = (what, pick) =>
    within(
      what,
      new Promise((resolve) => {
        waiters.push({ pick, resolve });
        check();
      }),
    );
  return seen;
}

async function connect(u) {
  const c = new Chat21Client({ appId: 'tilechat', MQTTendpoint: MQTT, APIendpoint: API, log: false });
  await within(`connect ${u.id}`, call((cb) => c.connect(u.id, u.jwt, () => cb(null))));
  // The client's connect callback does not wait for its inbox SUBACK: subscribe once more
  // and wait for that SUBACK (the broker answers SUBSCRIBEs in order) before anything is sent.
  await within(`inbox of ${u.id}`, call((cb) => c.client.subscribe(`apps/tilechat/users/${u.id}/#`, cb)));
  return c;
}

/// Call `f` until its result satisfies `ok` (every 100 ms).
const until = (f, ok) =>
  new Promise((resolve, reject) => {
    const poll = () => f((err, v) => (err ? reject(err) : ok(v) ? resolve(v) : setTimeout(poll, 100)));
    poll();
  });

const label = (m) => m.attributes && m.attributes.messagelabel && m.attributes.messagelabel.key;
const systemIn = (g, key, member) => (s) =>
  s.messages.filter(
    (m) =>
      m.recipient === g &&
      m.sender === 'system' &&
      label(m) === key &&
      (!member || m.attributes.messagelabel.parameters.member_id === member),
  ).length > 0;

async function main() {
  const [u1, u2, u3] = users;
  const [c1, c2, c3] = [await connect(u1), await connect(u2), await connect(u3)];
  const [s1, s2, s3] = [watch(c1), watch(c2), watch(c3)];

  // groupCreate → 201 {success, group}; the members see GROUP_CREATED and MEMBER_JOINED_GROUP.
  const created = await within('groupCreate', call((cb) => c1.groupCreate('Team', GROUP, { [u2.id]: 1 }, cb)));
  assert.strictEqual(created.success, true);
  assert.strictEqual(created.group.name, 'Team');
  assert.strictEqual(created.group.members[u1.id], 1);
  assert.strictEqual(created.group.members[u2.id], 1);
  await s2.until('GROUP_CREATED at U2', systemIn(GROUP, 'GROUP_CREATED'));
  await s2.until('MEMBER_JOINED_GROUP(U1) at U2', systemIn(GROUP, 'MEMBER_JOINED_GROUP', u1.id));
  await s2.until('MEMBER_JOINED_GROUP(U2) at U2', systemIn(GROUP, 'MEMBER_JOINED_GROUP', u2.id));

  // groupData → {success, result: group}.
  const data = await within('groupData', call((cb) => c2.groupData(GROUP, cb)));
  assert.strictEqual(data.success, true);
  assert.strictEqual(data.result.uid, GROUP);
  assert.strictEqual(data.result.owner, u1.id);

  // A message into the group, over MQTT.
  await within('send to group', call((cb) => c1.sendMessage('hello team', 'text', GROUP, 'Team', 'User 1', {}, null, 'group', cb)));
  await s2.until('the group message at U2', (s) => s.messages.find((m) => m.text === 'hello team'));

  // The replay reads the store: wait until the message is committed, not only delivered (the
  // engine publishes copies while their commit is on its way; README, HTTP API).
  for (let i = 0; ; i++) {
    const mine = await within('lastMessages U1/group', call((cb) => c1.lastMessages(GROUP, cb)));
    if (mine.find((m) => m.text === 'hello team')) break;
    if (i > 100) throw new Error('hello team never committed');
    await new Promise((r) => setTimeout(r, 50));
  }

  // groupJoin: the update with MEMBER_JOINED_GROUP, the system message, then the history.
  const joined = await within('groupJoin', call((cb) => c1.groupJoin(GROUP, u3.id, cb)));
  assert.strictEqual(joined.success, true);
  const update = await s3.until('group update at U3', (s) => s.groups.find((g) => g.notification));
  assert.strictEqual(update.notification.messagelabel.key, 'MEMBER_JOINED_GROUP');
  assert.strictEqual(update.notification.messagelabel.parameters.member_id, u3.id);
  await s1.until('group update at U1', (s) => s.groups.find((g) => g.notification && g.members[u3.id]));
  await s3.until('MEMBER_JOINED_GROUP(U3) at U3', systemIn(GROUP, 'MEMBER_JOINED_GROUP', u3.id));
  const replayed = await s3.until('history at U3', (s) => s.messages.find((m) => m.text === 'hello team'));
  assert.strictEqual(replayed.__history, 'true');
  assert.strictEqual(replayed.status, 150);

  // groupLeave: the old members are told MEMBER_LEFT_GROUP.
  const left = await within('groupLeave', call((cb) => c3.groupLeave(GROUP, u3.id, cb)));
  assert.strictEqual(left.success, true);
  await s2.until('MEMBER_LEFT_GROUP at U2', (s) =>
    s.groups.find((g) => g.notification && g.notification.messagelabel.key === 'MEMBER_LEFT_GROUP'),
  );

  // groupSetMembers: U3 back in, welcomed again.
  const set = await within('groupSetMembers', call((cb) => c1.groupSetMembers(GROUP, { [u1.id]: 1, [u2.id]: 1, [u3.id]: 1 }, cb)));
  assert.strictEqual(set.success, true);
  await s3.until('welcomed again', (s) => s.messages.filter((m) => label(m) === 'MEMBER_JOINED_GROUP' && m.attributes.messagelabel.parameters.member_id === u3.id && !m.__history).length >= 2);

  // A direct message, then the reads the widget makes.
  await within('send direct', call((cb) => c1.sendMessage('hi two', 'text', u2.id, 'User 2', 'User 1', {}, null, 'direct', cb)));
  await s2.until('the direct message at U2', (s) => s.messages.find((m) => m.text === 'hi two'));
  // The engine publishes a copy while its commit is on the way (both before the input is
  // acked), so a read right after delivery may be a few milliseconds early: ask again.
  const conv = await within('conversationDetail', until((cb) => c2.conversationDetail(u1.id, cb), (c) => c && c.last_message_text === 'hi two'));
  assert.strictEqual(conv.conversWith, u1.id);
  assert.strictEqual(conv.last_message_text, 'hi two');
  const convs = await within('lastConversations', call((cb) => c2.lastConversations(false, cb)));
  assert.ok(convs.find((c) => c.conversWith === u1.id), 'lastConversations');
  assert.ok(convs.find((c) => c.conversWith === GROUP), 'the group conversation too');
  const msgs = await within('lastMessages', call((cb) => c2.lastMessages(u1.id, cb)));
  assert.strictEqual(msgs[0].text, 'hi two', 'newest first');

  // Archive over MQTT (as the client does), then the archived reads.
  await within('archiveConversation', call((cb) => c2.archiveConversation(u1.id, cb)));
  const archived = await within('archivedConversationDetail', until((cb) => c2.archivedConversationDetail(u1.id, cb), (c) => c));
  assert.strictEqual(archived.archived, true);
  const archivedList = await within('lastArchivedConversations', call((cb) => c2.lastArchivedConversations(cb)));
  assert.ok(archivedList.find((c) => c.conversWith === u1.id));
  // (lastConversations calls back on HTTP 200 only, so this cannot pass on an error.)
  const active = await within('lastConversations after archive', call((cb) => c2.lastConversations(false, cb)));
  assert.ok(!active.find((c) => c.conversWith === u1.id), 'no longer active');
  assert.ok(active.find((c) => c.conversWith === GROUP), 'the group conversation still is');

  // A device instance.
  const saved = await within('saveInstance', call((cb) => c1.saveInstance('instance-1', { device_model: 'node', language: 'en', platform: 'test', platform_version: process.version }, cb)));
  assert.strictEqual(saved.success, true);

  for (const c of [c1, c2, c3]) c.client.end(true);
  console.log('real client: every step passed');
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`real client failed at "${step}": ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
