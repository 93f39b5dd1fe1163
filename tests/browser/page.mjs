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

// The chart's points are the API's history: times, the queue after each upload, the rate; the
// meter sync chart's changes per run. Read from the uPlot instances the page keeps.
async function checkChartAgainstApi(page) {
  // The page refreshes every 3 s: a run recorded between the two reads differs once.
  for (let attempt = 1; ; attempt++) {
    try {
      return await compareChartWithApi(page);
    } catch (e) {
      if (attempt >= 10) throw e;
      await page.waitForTimeout(700);
    }
  }
}

async function compareChartWithApi(page) {
  const history = await (await fetch(`${base}/api/local/history?hours=24`)).json();
  const drawn = await page.evaluate(() => ({
    upload: window.meterSyncCharts.upload.data.map((s) => Array.from(s)),
    changes: window.meterSyncCharts.changes.data.map((s) => Array.from(s)),
    x: [window.meterSyncCharts.upload.scales.x.min, window.meterSyncCharts.upload.scales.x.max],
    legend: Array.from(document.querySelectorAll('[data-testid="chart"] .u-legend .u-label')).map((e) => e.textContent),
  }));
  const seconds = (iso) => Date.parse(iso) / 1000;
  const same = (a, b, what) => {
    if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${what}: chart ${JSON.stringify(a)} vs API ${JSON.stringify(b)}`);
  };
  if (!history.uploads.length) throw new Error("the API has no upload in its history");
  same(drawn.upload[0], history.uploads.map((p) => seconds(p.at)), "upload times");
  same(drawn.upload[1], history.uploads.map((p) => p.queue_after), "queue after each upload");
  same(drawn.upload[2], history.uploads.map((p) => p.rate_per_minute), "upload rate");
  same(drawn.changes[0], history.downloads.map((p) => seconds(p.at)), "meter sync times");
  same(drawn.changes[1], history.downloads.map((p) => p.changes), "changes per meter sync");
  // A real time axis over the whole window, and a legend naming each series.
  const span = drawn.x[1] - drawn.x[0];
  if (Math.abs(span - 24 * 3600) > 120) throw new Error(`time axis spans ${span} s, not 24 h`);
  for (const label of ["Queue after upload (readings)", "Upload rate (readings/min)"]) {
    if (!drawn.legend.includes(label)) throw new Error(`legend ${JSON.stringify(drawn.legend)} lacks ${label}`);
  }
}

// Hovering the newest upload shows a tooltip with its queue size.
async function checkTooltip(page) {
  const at = await page.evaluate(() => {
    const u = window.meterSyncCharts.upload;
    const i = u.data[0].length - 1;
    const box = u.over.getBoundingClientRect();
    // The newest run sits on the plot's right edge and an empty queue on its bottom edge: aim
    // just inside, where the cursor still snaps to that run.
    const x = Math.min(u.valToPos(u.data[0][i], "x"), box.width - 3);
    const y = Math.min(u.valToPos(u.data[1][i] ?? 0, "y"), box.height - 3);
    return { x: box.left + x, y: box.top + y, queue: u.data[1][i] };
  });
  await page.mouse.move(at.x - 20, at.y - 10);
  await page.mouse.move(at.x, at.y, { steps: 4 });
  const tip = page.locator('[data-testid="chart"] [data-testid="chart-tip"]');
  await tip.waitFor({ state: "visible", timeout: 5000 });
  const shown = await tip.innerText();
  if (!shown.includes(`queue: ${Number(at.queue).toLocaleString()} readings`)) throw new Error(`tooltip says ${shown}`);
  await page.mouse.move(0, 0);
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
  // The chart refreshes with the status; wait for the point of this upload.
  const deadline = Date.now() + 15000;
  while ((await points(page)) !== before + 1 && Date.now() < deadline) await page.waitForTimeout(200);
  const after = await points(page);
  if (after !== before + 1) throw new Error(`chart points: ${before} before, ${after} after the upload`);
  await checkChartAgainstApi(page);
  await checkTooltip(page);
  if ((await text(page, "upload-error")).trim() !== "") throw new Error("upload error shown after a good upload");
  await page.screenshot({ path: `${out}/2-uploaded.png`, fullPage: true });

  // 3. A remote change, then Sync meters now: the new counts.
  await step("remote-change");
  await page.click('[data-testid="sync-meters-now"]');
  await waitText(page, "meter-count", String(meters + added));
  await waitText(page, "meter-counts", `${added} / 0 / 0`);
  // The meter sync's changes are on its chart.
  const syncDeadline = Date.now() + 15000;
  while (Date.now() < syncDeadline) {
    const bars = await page.evaluate(() => window.meterSyncCharts.changes.data[1]);
    if (bars.length && bars[bars.length - 1] >= added) break;
    await page.waitForTimeout(200);
  }
  await checkChartAgainstApi(page);
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
