// MQTT.js from node: `node node_client.mjs '<json options>'`.
// Options: url, ca (PEM path, for wss), sub (topic), pub (topic), protocolVersion.
// Prints one JSON line per event: subscribed, message, published; exits 0 after
// publishing "echo:<payload>" to `pub` for the first message received on `sub`.
import fs from "node:fs";
import mqtt from "mqtt";

const opt = JSON.parse(process.argv[2]);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const conn = { protocolVersion: opt.protocolVersion || 4, reconnectPeriod: 0, connectTimeout: 20000 };
if (opt.ca) conn.ca = fs.readFileSync(opt.ca);
const client = mqtt.connect(opt.url, conn);
client.on("error", (e) => { say({ event: "error", error: String(e) }); process.exit(2); });
client.on("connect", () => {
  client.subscribe(opt.sub, { qos: 1 }, (err, granted) => {
    if (err) { say({ event: "error", error: String(err) }); process.exit(2); }
    say({ event: "subscribed", granted: granted.map((g) => g.qos) });
  });
});
client.on("message", (topic, payload) => {
  say({ event: "message", topic, payload: payload.toString() });
  client.publish(opt.pub, "echo:" + payload.toString(), { qos: 1 }, (err) => {
    if (err) { say({ event: "error", error: String(err) }); process.exit(2); }
    say({ event: "published" });
    client.end(false, () => process.exit(0));
  });
});
