// MQTT.js in a real page in headless Chromium (Debian's /usr/bin/chromium),
// driven by playwright-core: `node browser.mjs '<json options>'`, same options
// and output lines as node_client.mjs. Exits 0 once the page says "done".
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const opt = JSON.parse(process.argv[2]);
const here = path.dirname(fileURLToPath(import.meta.url));
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-chromium-"));
const args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
if (opt.spki) args.push(`--ignore-certificate-errors-spki-list=${opt.spki}`);
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args,
  ignoreHTTPSErrors: Boolean(opt.spki),
});
let finished;
const done = new Promise((resolve) => { finished = resolve; });
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (msg) => {
    const text = msg.text();
    if (!text.startsWith("shoal ")) return;
    const ev = JSON.parse(text.slice(6));
    say(ev);
    if (ev.event === "done") finished(0);
    if (ev.event === "error") finished(2);
  });
  page.on("pageerror", (e) => { say({ event: "error", error: String(e) }); finished(2); });
  const url = pathToFileURL(path.join(here, "page.html")).href + "#" + encodeURIComponent(JSON.stringify(opt));
  await page.goto(url);
  const code = await done;
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
  process.exit(code);
} catch (e) {
  say({ event: "error", error: String(e) });
  await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
  process.exit(2);
}
