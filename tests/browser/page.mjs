// Drives the Sync Status page of a running `meter-sync run` in Debian's Chromium.
// Started by tests/browser.rs, which owns the databases: when this script needs the world to
// change it prints `STEP <name>` and waits for `OK` on stdin.
//
// Env: BASE_URL (the service), OUT_DIR (screenshots), EXPECT_QUEUE (readings queued at start),
// EXPECT_METERS (active meters before the remote change), ADDED_METERS (meters the controller adds).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";

const base = process.env.BASE_URL;
const out = process.env.OUT_DIR;
const expectQueue = process.env.EXPECT_QUEUE;
const meters = Number(process.env.EXPECT_METERS);
const added = Number(process.env.ADDED_METERS);
mkdirSync(out, { recursive: true });

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function step(name) {
  console.log(`STEP ${name}`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "OK") throw new Error(`controller did not confirm ${name}: ${value}`);
}

const text = (page, id) => page.locator(`[data-testid="${id}"]`).innerText();
// Waits until the element's text equals `expected` (or satisfies it, given a function).
async function waitText(page, id, expected, timeout = 15000) {
  const matches = typeof expected === "function" ? expected : (t) => t === expected;
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = (await text(page, id)).trim();
    if (matches(last)) return;
    await page.waitForTimeout(200);
  }
  throw new Error(`${id}: expected "${expected}", last saw "${last}"`);
}
async function points(page) {
  return Number(await page.locator('[data-testid="chart"]').getAttribute("data-points"));
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 1100 } });
  const failures = [];
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  // A Content-Security-Policy violation (an inline script or style the policy blocks) is
  // reported on the console only.
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) failures.push(`console error: ${m.text()}`);
  });
  page.on("requestfailed", (r) => {
    if (!r.url().startsWith(base)) failures.push(`request outside the service: ${r.url()}`);
  });
  await page.goto(base + "/");

  // 1. The real queue size.
  await waitText(page, "queue-size", expectQueue);
  await waitText(page, "remote-db", "connected");
  await waitText(page, "meter-count", String(meters));
  await page.screenshot({ path: `${out}/1-queue.png`, fullPage: true });

  // 2. Upload now: the queue empties and the chart gains a point.
  const before = await points(page);
  await page.click('[data-testid="upload-now"]');
  await waitText(page, "queue-size", "0");
  await waitText(page, "upload-now", "Upload now");
  const after = await points(page);
  if (after !== before + 1) throw new Error(`chart points: ${before} before, ${after} after the upload`);
  if ((await text(page, "upload-error")).trim() !== "") throw new Error("upload error shown after a good upload");
  await page.screenshot({ path: `${out}/2-uploaded.png`, fullPage: true });

  // 3. A remote change, then Sync meters now: the new counts.
  await step("remote-change");
  await page.click('[data-testid="sync-meters-now"]');
  await waitText(page, "meter-count", String(meters + added));
  await waitText(page, "meter-counts", `${added} / 0 / 0`);
  await page.screenshot({ path: `${out}/3-meters-synced.png`, fullPage: true });

  // 4. A remote outage: the unreachable state, and a clear error on Sync meters now.
  await step("remote-down");
  await waitText(page, "remote-db", "unreachable");
  if (!(await page.locator('[data-testid="remote-unreachable"]').isVisible())) throw new Error("no unreachable banner");
  await page.click('[data-testid="sync-meters-now"]');
  await waitText(page, "meter-error", (t) => t.includes("remote database"), 20000);
  await page.screenshot({ path: `${out}/4-remote-down.png`, fullPage: true });

  // 5. Readable on a phone: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  if (width > 391) throw new Error(`page is ${width}px wide on a 390px screen`);
  await page.screenshot({ path: `${out}/5-phone.png`, fullPage: true });

  if (failures.length) throw new Error(failures.join("; "));
  console.log("PASS");
} catch (e) {
  console.log(`FAIL ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
// stdin (the controller's channel) would keep the process alive.
process.exit(process.exitCode ?? 0);
